"""Verification on SQLite: each table streamed once, the per-row checks only where needed.

SQLite has no SHA-256 and its JSON functions re-parse a text per call, so the
work stays in Python; what makes it fast is doing it once. Sealed members are
read in one pass joined with their rows, unsealed rows in another; each row's
text is hashed once, decoded once and compared with its columns and its copy
(which SQLite keeps as the very text written). A row that passes needs
nothing more; any other is fetched again and judged by the per-row checks of
:mod:`recorder.verify`, so the findings are theirs. Times are compared as
stored (a row whose time is spelled otherwise is simply rechecked).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recorder import statements
from recorder.envelope import MAX_ENVELOPE_ID_LENGTH, extract_columns
from recorder.erasure_check import ErasureLedger
from recorder.schema import REPORTING_COLUMNS, UTCDateTime, envelopes, sealed_envelopes
from recorder.seal import SealedThrough
from recorder.verify import (
    VerifyReport,
    judge_members,
    judge_unsealed,
)

_CHUNK = 1_000
_RAW = sa.Text


def check(
    conn: Connection,
    through: SealedThrough,
    report: VerifyReport,
    ledger: ErasureLedger,
    latest_plausible: dt.datetime,
) -> None:
    """The members' and rows' checks of :func:`recorder.verify.verify` (the chain is done)."""
    _check_members(conn, report, ledger)
    _check_rows(conn, through, report, ledger, latest_plausible)


def _raw(column: Any) -> Any:
    # Times as stored: no parsing per row; equal spellings are equal times.
    return sa.type_coerce(column, _RAW)


def _check_members(conn: Connection, report: VerifyReport, ledger: ErasureLedger) -> None:
    s, e = sealed_envelopes.c, envelopes.c
    stmt = sa.select(
        s.block_no,
        s.position,
        _raw(s.received_at).label("sealed_at"),
        s.envelope_sha256.label("sealed_sha256"),
        _raw(e.received_at).label("received_at"),
        *_checked(s.envelope_id),
    ).select_from(sealed_envelopes.outerjoin(envelopes, e.envelope_id == s.envelope_id))
    flagged: list[tuple[int, int]] = []
    # Plain tuples: a row's attributes by name cost more than its checks.
    for row in conn.execute(stmt):
        block_no, position, sealed_at, sealed_sha256, received_at, *checked = row
        text = checked[1]
        if text is None or received_at != sealed_at:
            flagged.append((block_no, position))
            continue
        sha = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        if sha != sealed_sha256 or not _consistent(checked, sha):
            flagged.append((block_no, position))
    for start in range(0, len(flagged), _CHUNK):
        chunk = flagged[start : start + _CHUNK]
        members = conn.execute(
            sa.select(sealed_envelopes).where(sa.tuple_(s.block_no, s.position).in_(chunk))
        ).all()
        judge_members(conn, members, report, ledger)


def _checked(envelope_id: Any) -> list[Any]:
    """What :func:`_consistent` reads, in its order."""
    e = envelopes.c
    return [
        envelope_id,
        e.envelope_text,
        e.envelope_sha256,
        sa.cast(e.envelope, sa.Text).label("copy"),
        *(e[name] for name in REPORTING_COLUMNS),
    ]


def _check_rows(
    conn: Connection,
    through: SealedThrough,
    report: VerifyReport,
    ledger: ErasureLedger,
    latest_plausible: dt.datetime,
) -> None:
    e = envelopes.c
    behind = (
        statements.sealed_through(conn.dialect, through.cutoff, through.last)
        if through.started
        else sa.false()
    )
    stmt = sa.select(
        behind.label("behind"),
        statements.is_sealed().label("sealed"),
        (e.received_at > sa.literal(latest_plausible, UTCDateTime)).label("future"),
        *_checked(e.envelope_id),
    )
    kinds: dict[str, str] = {}
    for row in conn.execute(stmt):
        is_behind, sealed, future, *checked = row
        envelope_id = checked[0]
        if is_behind:
            if not sealed:
                kinds[envelope_id] = "inserted"
            continue
        if future:
            kinds[envelope_id] = "future"
            continue
        sha = hashlib.sha256(checked[1].encode("utf-8", "surrogatepass")).hexdigest()
        if _consistent(checked, sha):
            report.unsealed += 1
        else:
            kinds[envelope_id] = "check"
    judge_unsealed(conn, kinds, through, report, ledger)


def _no_constants(name: str) -> Any:
    raise ValueError(name)


#: json.loads(text, parse_constant=...) without building a decoder per row.
_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def _consistent(checked: list[Any], sha: str) -> bool:
    """A quick pass of recorder.verify.check_consistent; False means: ask it.

    ``checked`` is the row as :func:`_checked` lists it.
    """
    envelope_id, text, stored_sha, copy, *columns = checked
    # \\u escapes may need the copy rewritten (NUL, lone surrogates): leave those to it.
    if stored_sha != sha or copy != text or "\\u" in text:
        return False
    if not 0 < len(envelope_id) <= MAX_ENVELOPE_ID_LENGTH or "\x00" in envelope_id:
        return False
    try:
        data = _DECODER.decode(text)
    except (ValueError, RecursionError):
        return False
    if not isinstance(data, dict) or data.get("envelope_id", envelope_id) != envelope_id:
        return False
    expected = extract_columns(data)
    return columns == [expected[name] for name in REPORTING_COLUMNS]
