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

4. **Split.** From 100,000 sealed envelopes the scan and the chain are split
   over several connections that import the verifier's exported snapshot
   (``pg_export_snapshot``), each taking a share of the blocks and a range
   of the table's pages, so every part sees the same rows.

Over 450 lines: the chain pass, the row scan, the bisection of an uncastable
text and the split over connections all work on one snapshot and one set of
counts; apart, each would need those passed between modules.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from recorder import sealed_logs, statements
from recorder.erasure_check import ErasureLedger
from recorder.schema import envelopes, sealed_envelopes
from recorder.seal import GENESIS_DIGEST, Member, SealBlock, SealedThrough, header_parts
from recorder.sealed_logs import LogEntry
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
#: Blocks recomputed per statement (each block's lines are one string in the server).
_CHAIN_CHUNK = 50
_T = TypeVar("_T")
_R = TypeVar("_R")


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
    workers: int | None = None,
) -> None:
    """Fill ``report`` as :func:`recorder.verify.verify` does, with the server doing the work.

    ``workers`` connections (default: the server's ``max_parallel_workers_per_gather``
    plus one, as many processes as it lets one query use) each check a part of
    the rows and of the chain inside the verifier's snapshot.
    """
    _session_settings(conn)
    count = _workers(conn, blocks, workers)
    if count > 1:  # each connection is one process; more would only contend
        conn.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
    tally = _Tally()
    with _Helpers(conn, count - 1) as helpers:
        _check_chain(conn, blocks, report, ledger, helpers)
        parts = _page_parts(conn, count)
        _scan_parts(conn, through, latest_plausible, parts, tally, report, ledger, helpers)
    logged, tally.matched_logged = conn.execute(statements.COUNT_LOGGED_MEMBERS_POSTGRESQL).one()
    _check_flagged_members(conn, blocks, tally, report, ledger)
    unaccounted = report.sealed - tally.matched - (logged - tally.matched_logged)
    report.pruned += logged - tally.matched_logged
    if unaccounted:
        _check_unaccounted_members(conn, report, ledger)
    _check_flagged_rows(conn, through, tally, report, ledger)
    report.unsealed += tally.unsealed


def _session_settings(conn: Connection) -> None:
    # A hash join over every sealed member wants more than the default work_mem.
    conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
    # The row scan's expression is large and runs once per row; compiling it
    # with JIT (on by default above a plan cost every full scan passes) cost
    # more CPU than it saved: 17.7 against 11.2 us a row on 1,000,000 rows.
    conn.exec_driver_sql("SET LOCAL jit = off")


# -- helper connections: parts of the work inside the verifier's snapshot

#: Archives with fewer sealed envelopes than this are checked on one connection by default.
_PARALLEL_FROM = 100_000
_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f-]+")


class _Helpers:
    """Extra connections that import the verifier's snapshot, so every part sees the same rows.

    What ``pg_dump --jobs`` does: the verifier's transaction exports its
    snapshot and each helper starts a REPEATABLE READ transaction on it.
    :meth:`map` runs the first part on the verifier's own connection (in
    this thread) and each other part on a helper, in a thread of its own
    (the driver releases the GIL while the server works).
    """

    def __init__(self, conn: Connection, extra: int) -> None:
        self.conn = conn
        self.extra = extra
        self.conns: list[Connection] = []
        self._stack = ExitStack()

    def __enter__(self) -> _Helpers:
        if self.extra <= 0:
            return self
        with self._stack:
            snapshot = self.conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
            if not _SNAPSHOT_ID.fullmatch(snapshot):
                raise RuntimeError(f"unexpected snapshot id {snapshot!r}")
            for _ in range(self.extra):
                helper = self._stack.enter_context(self.conn.engine.connect())
                helper = helper.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
                self._stack.enter_context(helper.begin())
                helper.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                _session_settings(helper)
                helper.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
                self.conns.append(helper)
            self._stack = self._stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def map(self, fn: Callable[[Connection, _T], _R], parts: Sequence[_T]) -> list[_R]:
        """``fn(connection, part)`` for every part, the first here, the others on the helpers."""
        if len(parts) > 1 + len(self.conns):
            raise ValueError("more parts than connections")
        if len(parts) <= 1:
            return [fn(self.conn, part) for part in parts]
        with ThreadPoolExecutor(len(parts) - 1) as pool:
            futures = [
                pool.submit(fn, helper, part)
                for helper, part in zip(self.conns, parts[1:], strict=False)
            ]
            first = fn(self.conn, parts[0])
            return [first, *(f.result() for f in futures)]


def _workers(conn: Connection, blocks: list[SealBlock], workers: int | None) -> int:
    if workers is None:
        if sum(b.envelope_count for b in blocks) < _PARALLEL_FROM:
            return 1
        # As many processes as the server lets one query use.
        setting = conn.exec_driver_sql(
            "SELECT current_setting('max_parallel_workers_per_gather')::int"
        ).scalar_one()
        workers = min(8, int(setting) + 1)
    return max(1, min(workers, len(blocks)))


Bounds = tuple[dt.datetime | None, dt.datetime | None]
Pages = tuple[int | None, int | None]


def _page_parts(conn: Connection, count: int) -> list[Pages]:
    """``count`` ranges of heap pages covering the whole table (the last one open-ended).

    Physical ranges rather than times: each connection reads only its pages
    (a tid range scan), and every row, whatever its date, is in one of them.
    """
    if count <= 1:
        return [(None, None)]
    pages = conn.exec_driver_sql(
        "SELECT pg_relation_size('envelopes') / current_setting('block_size')::int"
    ).scalar_one()
    edges = sorted({int(pages) * k // count for k in range(1, count)} - {0})
    return list(pairwise([None, *edges, None]))


def _block_parts(blocks: list[SealBlock], count: int) -> list[list[SealBlock]]:
    size = -(-len(blocks) // count) if blocks else 1
    return [blocks[i : i + size] for i in range(0, len(blocks), size)] or [[]]


# -- the chain


def _check_chain(
    conn: Connection,
    blocks: list[SealBlock],
    report: VerifyReport,
    ledger: ErasureLedger,
    helpers: _Helpers,
) -> None:
    """Check every block: digests recomputed in the server, a part of the blocks per connection."""
    sealed = sealed_logs.entries_by_block(conn)
    parts = _block_parts(blocks, 1 + len(helpers.conns))
    recomputed: dict[int, Any] = {}
    for rows in helpers.map(lambda c, part: _chain_rows(c, part, sealed), parts):
        recomputed.update((row.block_no, row) for row in rows)
    prev = GENESIS_DIGEST
    for expected_no, block in enumerate(blocks, start=1):
        row = recomputed[block.block_no]
        report.sealed += row.n
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
            logs = sealed.get(block.block_no, [])
            problems = block_problems(block, expected_no, prev, members, logs)
        report.findings.extend(
            Finding("chain", None, problem, block.block_no) for problem in problems
        )
        prev = block.digest


def _chain_rows(
    conn: Connection, blocks: list[SealBlock], sealed: dict[int, list[LogEntry]]
) -> list[Any]:
    """The server's recomputation of ``blocks`` (consecutive in number), in chunks."""
    rows: list[Any] = []
    for start in range(0, len(blocks), _CHAIN_CHUNK):
        chunk = blocks[start : start + _CHAIN_CHUNK]
        parts = [
            header_parts(
                block_no=block.block_no,
                kind=block.kind,
                sealed_at=block.sealed_at,
                cutoff=block.cutoff,
                prev_digest=block.prev_digest,
                logs=sealed_logs.logs_digest(logs)
                if (logs := sealed.get(block.block_no))
                else None,
            )
            for block in chunk
        ]
        rows.extend(
            conn.execute(
                statements.chain_blocks_postgresql(),
                {
                    "first_block": chunk[0].block_no,
                    "last_block": chunk[-1].block_no,
                    "block_nos": [block.block_no for block in chunk],
                    "heads": [p[0] for p in parts],
                    "mids": [p[1] for p in parts],
                    "mid_lasts": [p[2] for p in parts],
                    "tails": [p[3] for p in parts],
                },
            )
        )
    return rows


def _link_problems(block: SealBlock, expected_no: int, prev: str) -> list[str]:
    """block_problems' checks that do not need the members (they matched)."""
    problems = []
    if block.block_no != expected_no:
        problems.append(f"expected block {expected_no} here: a block is missing")
    if block.prev_digest != prev:
        problems.append("its prev_digest is not the previous block's digest")
    return problems


# -- the rows


def _scan_parts(
    conn: Connection,
    through: SealedThrough,
    latest_plausible: dt.datetime,
    parts: list[Pages],
    tally: _Tally,
    report: VerifyReport,
    ledger: ErasureLedger,
    helpers: _Helpers,
) -> None:
    """Classify every row, a range of heap pages per connection."""
    results = helpers.map(
        lambda c, pages: _fetch(c, through, latest_plausible, (None, None), pages), parts
    )
    if any(result is None for result in results):
        # A text the server could not cast: narrow it down by time, on this connection.
        _scan(conn, through, latest_plausible, (None, None), tally, report, ledger)
        return
    for result in results:
        _tally(result, tally)


def _fetch(
    conn: Connection,
    through: SealedThrough,
    latest_plausible: dt.datetime,
    bounds: Bounds,
    pages: Pages = (None, None),
) -> Any | None:
    """The scan's row for the rows in ``bounds`` and ``pages``; None when a text cannot be cast."""
    variant, params = through.sql_params()
    params["latest_plausible"] = latest_plausible
    by_page = pages != (None, None)
    ends: tuple[Any, Any] = (_tid(pages[0]), _tid(pages[1])) if by_page else bounds
    names = ("first_tid", "end_tid") if by_page else ("lo", "hi")
    params.update((name, end) for name, end in zip(names, ends, strict=True) if end is not None)
    stmt = statements.verify_rows_postgresql(
        variant, ends[0] is not None, ends[1] is not None, by_page
    )
    try:
        with conn.begin_nested():
            return conn.execute(stmt, params).one()
    except sa_exc.DBAPIError as exc:
        if not _is_data_error(exc):
            raise
        return None


def _tid(page: int | None) -> str | None:
    return None if page is None else f"({page},0)"


def _tally(row: Any, tally: _Tally) -> None:
    tally.matched += row.matched
    tally.unsealed += row.unsealed
    tally.members.update(zip(row.check_blocks or [], row.check_positions or [], strict=True))
    for envelope_id, kind in zip(row.row_ids or [], row.row_kinds or [], strict=True):
        tally.rows.setdefault(kind, set()).add(envelope_id)


def _scan(
    conn: Connection,
    through: SealedThrough,
    latest_plausible: dt.datetime,
    bounds: Bounds,
    tally: _Tally,
    report: VerifyReport,
    ledger: ErasureLedger,
) -> None:
    """Classify the rows received in ``bounds``, halving on cast errors."""
    row = _fetch(conn, through, latest_plausible, bounds)
    if row is None:
        _split(conn, through, latest_plausible, bounds, tally, report, ledger)
    else:
        _tally(row, tally)


def _is_data_error(exc: sa_exc.DBAPIError) -> bool:
    # Class 22 (data exception): a text jsonb cannot read, a number it cannot hold.
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return sqlstate.startswith("22")


def _split(
    conn: Connection,
    through: SealedThrough,
    latest_plausible: dt.datetime,
    bounds: Bounds,
    tally: _Tally,
    report: VerifyReport,
    ledger: ErasureLedger,
) -> None:
    lo, hi = bounds
    e = envelopes.c
    if lo is None or hi is None:  # an open end: as far as the rows go
        inside = [
            *([e.received_at >= lo] if lo is not None else []),
            *([e.received_at < hi] if hi is not None else []),
        ]
        first, last = conn.execute(
            sa.select(sa.func.min(e.received_at), sa.func.max(e.received_at)).where(*inside)
        ).one()
        if first is None:
            return
        lo = first if lo is None else lo
        hi = last + dt.timedelta(microseconds=1) if hi is None else hi
    count = conn.execute(
        sa.select(sa.func.count())
        .select_from(envelopes)
        .where(e.received_at >= lo, e.received_at < hi)
    ).scalar_one()
    if count <= _PYTHON_RANGE_ROWS or hi - lo <= dt.timedelta(microseconds=1):
        _python_range(conn, through, latest_plausible, (lo, hi), tally, report, ledger)
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
