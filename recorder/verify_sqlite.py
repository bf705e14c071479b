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
import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recorder import sealed_logs, statements
from recorder.envelope import MAX_ENVELOPE_ID_LENGTH, extract_columns
from recorder.erasure_check import ErasureLedger
from recorder.schema import REPORTING_COLUMNS, UTCDateTime, envelopes, sealed_envelopes
from recorder.seal import (
    GENESIS_DIGEST,
    Member,
    SealBlock,
    SealedThrough,
    block_header,
    member_line_at,
    timestamp_text,
)
from recorder.sealed_logs import LogEntry
from recorder.verify import (
    Finding,
    VerifyReport,
    block_problems,
    judge_members,
    judge_unsealed,
)

_CHUNK = 1_000
_RAW = sa.Text


def check(
    conn: Connection,
    blocks: list[SealBlock],
    sealed: dict[int, list[LogEntry]],
    through: SealedThrough,
    report: VerifyReport,
    ledger: ErasureLedger,
    latest_plausible: dt.datetime,
) -> None:
    """The chain's, members' and rows' checks of :func:`recorder.verify.verify`."""
    _check_chain(conn, blocks, sealed, report)
    _check_members(conn, report, ledger)
    _check_rows(conn, through, report, ledger, latest_plausible)


#: A time as SQLite holds it (SQLAlchemy's spelling), in years 1000-9999: its
#: digest spelling is the same digits with a ``T`` and a ``Z``.
_STORED_TIME = re.compile(
    r"[1-9]\d{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01]) "
    r"(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{6}\Z"
)


def _digest_time(stored: Any) -> str | None:
    """:func:`recorder.seal.timestamp_text` of a stored time, or None: ask it."""
    if isinstance(stored, str) and _STORED_TIME.match(stored):
        return f"{stored[:10]}T{stored[11:]}Z"
    return None


def _check_chain(
    conn: Connection,
    blocks: list[SealBlock],
    sealed: dict[int, list[LogEntry]],
    report: VerifyReport,
) -> None:
    """:func:`recorder.verify.block_problems` of each block, from the members' stored
    spellings; a block that does not plainly pass is read again and judged by it."""
    s = sealed_envelopes.c
    prev = GENESIS_DIGEST
    for expected_no, block in enumerate(blocks, start=1):
        members = conn.execute(
            sa.select(s.envelope_id, _raw(s.received_at), s.envelope_sha256)
            .where(s.block_no == block.block_no)
            .order_by(s.position)
        ).all()
        logs = sealed.get(block.block_no, [])
        report.sealed += len(members)
        if not _plainly_sound(block, expected_no, prev, members, logs):
            full = [
                Member(r.envelope_id, r.received_at, r.envelope_sha256)
                for r in conn.execute(statements.select_block_members(block.block_no))
            ]
            report.findings.extend(
                Finding("chain", None, problem, block.block_no)
                for problem in block_problems(block, expected_no, prev, full, logs)
            )
        prev = block.digest


def _plainly_sound(
    block: SealBlock, expected_no: int, prev: str, members: Sequence[Any], logs: list[LogEntry]
) -> bool:
    if (
        not members
        or block.block_no != expected_no
        or block.prev_digest != prev
        or len(members) != block.envelope_count
    ):
        return False
    first_at, last_at = _digest_time(members[0][1]), _digest_time(members[-1][1])
    if (
        first_at is None
        or last_at is None
        or (first_at, members[0][0])
        != (timestamp_text(block.first_received_at), block.first_envelope_id)
        or (last_at, members[-1][0])
        != (timestamp_text(block.last_received_at), block.last_envelope_id)
    ):
        return False
    header = block_header(
        block_no=block.block_no,
        kind=block.kind,
        sealed_at=block.sealed_at,
        cutoff=block.cutoff,
        prev_digest=block.prev_digest,
        count=len(members),
        first=[first_at, members[0][0]],
        last=[last_at, members[-1][0]],
        logs=sealed_logs.logs_digest(logs) if logs else None,
    )
    digest = hashlib.sha256(header.encode() + b"\n")
    for envelope_id, stored_at, sha256 in members:
        at = _digest_time(stored_at)
        if at is None:
            return False
        digest.update(member_line_at(envelope_id, at, sha256))
    return digest.hexdigest() == block.digest


def _raw(column: Any) -> Any:
    # Times as stored: no parsing per row; equal spellings are equal times.
    return sa.type_coerce(column, _RAW)


def _check_members(conn: Connection, report: VerifyReport, ledger: ErasureLedger) -> None:
    s, e = sealed_envelopes.c, envelopes.c
    stmt = sa.select(
        s.block_no,
        s.position,
        s.envelope_sha256.label("sealed_sha256"),
        # Times as stored: equal spellings are equal times (no row is missing
        # a time, so NULL IS a time means the row is gone).
        _raw(e.received_at).is_not_distinct_from(_raw(s.received_at)).label("same_at"),
        *_checked(s.envelope_id),
    ).select_from(sealed_envelopes.outerjoin(envelopes, e.envelope_id == s.envelope_id))
    flagged: list[tuple[int, int]] = []
    # Plain tuples: a row's attributes by name cost more than its checks.
    for row in conn.execute(stmt):
        block_no, position, sealed_sha256, same_at, *checked = row
        text = checked[1]
        if text is None or not same_at:
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
        # The copy is the very text written: compared in SQLite (bytes, no str
        # made of it), NULL-safe.
        sa.cast(e.envelope, sa.Text).is_not_distinct_from(e.envelope_text).label("same_copy"),
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
    sealed = statements.is_sealed()
    # A sealed row behind the sealed point was checked with its member; the
    # scan brings back only the others (no text leaves SQLite for the rest).
    stmt = sa.select(
        behind.label("behind"),
        sealed.label("sealed"),
        (e.received_at > sa.literal(latest_plausible, UTCDateTime)).label("future"),
        *_checked(e.envelope_id),
    ).where(sa.not_(sa.and_(behind, sealed)))
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
    envelope_id, text, stored_sha, same_copy, *columns = checked
    # \\u escapes may need the copy rewritten (NUL, lone surrogates): leave those to it.
    if stored_sha != sha or not same_copy or "\\u" in text:
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
