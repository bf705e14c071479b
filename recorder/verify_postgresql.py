"""Verification pushed into PostgreSQL: one pass in the server, Python only for what it flags.

:func:`recorder.verify.verify` checks every row; done row by row in Python
that meant moving each text out of the database. Here the server does the
per-row work where it is exact, inside the verifier's one REPEATABLE READ
snapshot:

1. **The chain.** Each block's digest is recomputed in the server from its
   ``sealed_envelopes`` rows and the header this module renders
   (:func:`recorder.seal.header_parts`); only digests, counts and end keys
   come back. A block whose digest, count or keys disagree, or whose ids JSON
   would escape, is checked member by member in Python, as before.
2. **The rows.** One scan of ``envelopes``, joined with ``sealed_envelopes``
   on ``(envelope_id, received_at)``, hashes every text, compares it with the
   sealed digest and the digest column, casts it to jsonb and compares that
   with the queryable copy, and derives the reporting columns from it
   (:func:`recorder.statements.verify_rows_postgresql`). It returns counts,
   and the ids of the rows it cannot certify, which the per-row checks of
   :mod:`recorder.verify` then judge: the findings are the ones those checks
   name, never a second wording.
3. **Deletions.** Sealed members without their row are counted in the chain
   pass (with those the prune log accounts for); only when the numbers do
   not add up is the full anti-join run to name them.

A text the server cannot cast (not JSON at all, a number jsonb cannot hold)
stops the scan with an error: that range of ``received_at`` is scanned again
in halves, and the smallest range holding the culprit is checked in Python.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from recorder import sealed_logs, statements
from recorder.erasure_check import ErasureLedger
from recorder.schema import envelopes, pruned_envelopes, sealed_envelopes
from recorder.seal import GENESIS_DIGEST, Member, SealBlock, SealedThrough, header_parts
from recorder.verify import (
    Finding,
    VerifyReport,
    block_problems,
    judge_members,
    judge_unsealed,
)

#: A range that fails to cast and holds no more rows than this is checked in Python.
_PYTHON_RANGE_ROWS = 500
_CHUNK = 1_000


@dataclass(slots=True)
class _Tally:
    """What the row scans found, before Python looks at the flagged rows."""

    matched: int = 0
    """Member rows whose envelope row (same id and received_at) is there."""
    matched_logged: int = 0
    """... of which the prune log also lists (a prune, then the same row written again)."""
    unsealed: int = 0
    members: set[tuple[int, int]] = field(default_factory=set)
    """(block_no, position) of members to check in Python."""
    rows: dict[str, set[str]] = field(default_factory=dict)
    """kind (inserted, future, check) -> envelope ids."""


def check(
    conn: Connection,
    blocks: list[SealBlock],
    through: SealedThrough,
    report: VerifyReport,
    ledger: ErasureLedger,
    latest_plausible: dt.datetime,
) -> None:
    """Fill ``report`` as :func:`recorder.verify.verify` does, with the server doing the work."""
    # A hash join over every sealed member wants more than the default work_mem.
    conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
    logged = _check_chain(conn, blocks, report, ledger)
    tally = _Tally()
    _scan(conn, through, latest_plausible, None, tally, report, ledger)
    _check_flagged_members(conn, blocks, tally, report, ledger)
    unaccounted = report.sealed - tally.matched - (logged - tally.matched_logged)
    report.pruned += logged - tally.matched_logged
    if unaccounted:
        _check_unaccounted_members(conn, report, ledger)
    _check_flagged_rows(conn, through, tally, report, ledger)
    report.unsealed += tally.unsealed


# -- the chain


def _check_chain(
    conn: Connection, blocks: list[SealBlock], report: VerifyReport, ledger: ErasureLedger
) -> int:
    """Check every block; return how many members the prune log accounts for."""
    prev = GENESIS_DIGEST
    logged = 0
    sealed = sealed_logs.entries_by_block(conn)
    for expected_no, block in enumerate(blocks, start=1):
        logs = sealed.get(block.block_no, [])
        head, mid, mid_last, tail = header_parts(
            block_no=block.block_no,
            kind=block.kind,
            sealed_at=block.sealed_at,
            cutoff=block.cutoff,
            prev_digest=block.prev_digest,
            logs=sealed_logs.logs_digest(logs) if logs else None,
        )
        row = conn.execute(
            statements.chain_block_postgresql(),
            {
                "block_no": block.block_no,
                "head": head,
                "mid": mid,
                "mid_last": mid_last,
                "tail": tail,
            },
        ).one()
        report.sealed += row.n
        logged += row.logged
        if (
            row.plain
            and row.digest == block.digest
            and row.n == block.envelope_count
            and (row.first_at, row.first_id) == (block.first_received_at, block.first_envelope_id)
            and (row.last_at, row.last_id) == (block.last_received_at, block.last_envelope_id)
        ):
            problems = _link_problems(block, expected_no, prev)
        else:
            members = [
                Member(r.envelope_id, r.received_at, r.envelope_sha256)
                for r in conn.execute(statements.select_block_members(block.block_no))
            ]
            problems = block_problems(block, expected_no, prev, members, logs)
        report.findings.extend(
            Finding("chain", None, problem, block.block_no) for problem in problems
        )
        prev = block.digest
    return logged


def _link_problems(block: SealBlock, expected_no: int, prev: str) -> list[str]:
    """block_problems' checks that do not need the members (they matched)."""
    problems = []
    if block.block_no != expected_no:
        problems.append(f"expected block {expected_no} here: a block is missing")
    if block.prev_digest != prev:
        problems.append("its prev_digest is not the previous block's digest")
    return problems


# -- the rows


def _scan(
    conn: Connection,
    through: SealedThrough,
    latest_plausible: dt.datetime,
    bounds: tuple[dt.datetime, dt.datetime] | None,
    tally: _Tally,
    report: VerifyReport,
    ledger: ErasureLedger,
) -> None:
    """Classify the rows received in ``bounds`` (all rows when None), halving on cast errors."""
    variant: str | None = None
    params: dict[str, Any] = {"latest_plausible": latest_plausible}
    if through.cutoff is not None:
        variant, params["through_cutoff"] = "cutoff", through.cutoff
    elif through.last is not None:
        variant = "key"
        params["through_at"], params["through_id"] = through.last
    if bounds is not None:
        params["lo"], params["hi"] = bounds
    stmt = statements.verify_rows_postgresql(variant, bounds is not None)
    try:
        with conn.begin_nested():
            groups = conn.execute(stmt, params).all()
    except sa_exc.DBAPIError as exc:
        if not _is_data_error(exc):
            raise
        _split(conn, through, latest_plausible, bounds, tally, report, ledger)
        return
    for g in groups:
        flagged = list(zip(g.ids or [], g.blocks or [], g.positions or [], strict=True))
        if g.member_kind is not None:
            tally.matched += g.n
            if g.logged:
                tally.matched_logged += g.n
        if g.member_kind == "check":
            tally.members.update((b, p) for _, b, p in flagged)
        if g.row_kind is not None:
            if g.row_kind == "unsealed":
                tally.unsealed += g.n
            else:
                tally.rows.setdefault(g.row_kind, set()).update(i for i, _, _ in flagged)


def _is_data_error(exc: sa_exc.DBAPIError) -> bool:
    # Class 22 (data exception): a text jsonb cannot read, a number it cannot hold.
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return sqlstate.startswith("22")


def _split(
    conn: Connection,
    through: SealedThrough,
    latest_plausible: dt.datetime,
    bounds: tuple[dt.datetime, dt.datetime] | None,
    tally: _Tally,
    report: VerifyReport,
    ledger: ErasureLedger,
) -> None:
    if bounds is None:
        lo, hi = conn.execute(
            sa.select(sa.func.min(envelopes.c.received_at), sa.func.max(envelopes.c.received_at))
        ).one()
        bounds = (lo, hi + dt.timedelta(microseconds=1))
    lo, hi = bounds
    count = conn.execute(
        sa.select(sa.func.count())
        .select_from(envelopes)
        .where(envelopes.c.received_at >= lo, envelopes.c.received_at < hi)
    ).scalar_one()
    if count <= _PYTHON_RANGE_ROWS or hi - lo <= dt.timedelta(microseconds=1):
        _python_range(conn, through, latest_plausible, bounds, tally, report, ledger)
        return
    mid = lo + (hi - lo) / 2
    for half in ((lo, mid), (mid, hi)):
        _scan(conn, through, latest_plausible, half, tally, report, ledger)


def _python_range(
    conn: Connection,
    through: SealedThrough,
    latest_plausible: dt.datetime,
    bounds: tuple[dt.datetime, dt.datetime],
    tally: _Tally,
    report: VerifyReport,
    ledger: ErasureLedger,
) -> None:
    """The rows of a range the server could not cast, classified here instead."""
    lo, hi = bounds
    behind = (
        statements.sealed_through(conn.dialect, through.cutoff, through.last)
        if through.started
        else sa.false()
    )
    stmt = (
        sa.select(
            envelopes.c.envelope_id,
            envelopes.c.received_at,
            behind.label("behind"),
            sealed_envelopes.c.block_no,
            sealed_envelopes.c.position,
            sa.exists()
            .where(
                pruned_envelopes.c.envelope_id == sealed_envelopes.c.envelope_id,
                pruned_envelopes.c.received_at == sealed_envelopes.c.received_at,
                pruned_envelopes.c.envelope_sha256 == sealed_envelopes.c.envelope_sha256,
            )
            .label("logged"),
        )
        .select_from(
            envelopes.outerjoin(
                sealed_envelopes,
                sa.and_(
                    sealed_envelopes.c.envelope_id == envelopes.c.envelope_id,
                    sealed_envelopes.c.received_at == envelopes.c.received_at,
                ),
            )
        )
        .where(envelopes.c.received_at >= lo, envelopes.c.received_at < hi)
    )
    for row in conn.execute(stmt):
        if row.block_no is not None:
            tally.matched += 1
            tally.matched_logged += bool(row.logged)
            tally.members.add((row.block_no, row.position))
            if row.behind:
                continue
        elif row.behind:
            tally.rows.setdefault("inserted", set()).add(row.envelope_id)
            continue
        kind = "future" if row.received_at > latest_plausible else "check"
        tally.rows.setdefault(kind, set()).add(row.envelope_id)


# -- what the server flagged, judged by the per-row checks


def _check_flagged_members(
    conn: Connection,
    blocks: list[SealBlock],
    tally: _Tally,
    report: VerifyReport,
    ledger: ErasureLedger,
) -> None:
    flagged = sorted(tally.members)
    for start in range(0, len(flagged), _CHUNK):
        chunk = flagged[start : start + _CHUNK]
        members = conn.execute(
            sa.select(sealed_envelopes).where(
                sa.tuple_(sealed_envelopes.c.block_no, sealed_envelopes.c.position).in_(chunk)
            )
        ).all()
        judge_members(conn, members, report, ledger)


def _check_unaccounted_members(
    conn: Connection, report: VerifyReport, ledger: ErasureLedger
) -> None:
    rows = conn.execute(statements.SELECT_UNACCOUNTED_MEMBERS_POSTGRESQL).all()
    for start in range(0, len(rows), _CHUNK):
        judge_members(conn, rows[start : start + _CHUNK], report, ledger)


def _check_flagged_rows(
    conn: Connection,
    through: SealedThrough,
    tally: _Tally,
    report: VerifyReport,
    ledger: ErasureLedger,
) -> None:
    kinds = {i: kind for kind, ids in tally.rows.items() for i in ids}
    judge_unsealed(conn, kinds, through, report, ledger)
