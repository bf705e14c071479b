"""Verification on SQLite: each table streamed once, the per-row checks only where needed.

SQLite has no SHA-256 and its JSON functions re-parse a text per call, so the
work stays in Python; what makes it fast is doing it once. The chain is
digested from the members' stored times (a block that does not plainly pass
is read again and judged by :func:`recorder.verify.block_problems`). Sealed
members are read in one pass joined with their rows, unsealed rows in
another (sealed rows behind the sealed point stay in SQLite); each row's text
is hashed once, decoded once and compared with its columns, and SQLite
compares its copy (the very text written) and its time
(:mod:`recorder.verify_sqlite_rows`). A row that passes needs nothing more;
any other is fetched again and judged by the per-row checks of
:mod:`recorder.verify`, so the findings are theirs. Times are compared as
stored (a row whose time is spelled otherwise is simply rechecked).

The two passes can be split by ranges (blocks; rowids) over worker
processes that read the verifier's own snapshot (:class:`Helpers`).

Over 450 lines: the chain, the statements of the passes and the handshake
that lets worker processes share them are one walk, kept together.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection as MessagePipe
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from recorder import sealed_logs, statements
from recorder.engine import SQLITE_BUSY_TIMEOUT_SECONDS, detached_connection, read_only
from recorder.erasure_check import ErasureLedger
from recorder.errors import StorageUnavailable
from recorder.schema import REPORTING_COLUMNS, UTCDateTime, envelopes, sealed_envelopes
from recorder.seal import (
    GENESIS_DIGEST,
    Member,
    SealBlock,
    SealedThrough,
    block_header,
    member_line_at,
)
from recorder.sealed_logs import LogEntry
from recorder.timespec import timestamp_text
from recorder.verify import (
    Finding,
    VerifyReport,
    block_problems,
    judge_members,
    judge_unsealed,
)
from recorder.verify_sqlite_rows import READY, SNAPSHOT, STARTED, Flagged, Part, check_part

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
    helpers: Helpers | None = None,
) -> None:
    """The chain's, members' and rows' checks of :func:`recorder.verify.verify`.

    With ``helpers`` (worker processes in this snapshot, see :func:`helpers`),
    the members and rows are split into one part per process.
    """
    n = 1 if helpers is None else helpers.count + 1
    block_cuts = _block_cuts(blocks, n)
    row_cuts = _row_cuts(conn, n)
    parts = [
        Part(
            members=_sql(conn, _members_stmt(_within(sealed_envelopes.c.block_no, block_cuts, i))),
            rows=_sql(
                conn, _rows_stmt(conn, through, latest_plausible, _within(_ROWID, row_cuts, i))
            ),
        )
        for i in range(n)
    ]
    if helpers is not None:
        helpers.start(parts[1:])
    _check_chain(conn, blocks, sealed, report)
    driver = conn.connection.driver_connection
    assert driver is not None
    flagged = check_part(driver.cursor(), parts[0])
    if helpers is not None:
        for other in helpers.results():
            flagged.merge(other)
    s = sealed_envelopes.c
    for start in range(0, len(flagged.members), _CHUNK):
        chunk = flagged.members[start : start + _CHUNK]
        members = conn.execute(
            sa.select(sealed_envelopes).where(sa.tuple_(s.block_no, s.position).in_(chunk))
        ).all()
        judge_members(conn, members, report, ledger)
    report.unsealed += flagged.unsealed_ok
    judge_unsealed(conn, flagged.rows, through, report, ledger)


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


_ROWID: sa.ColumnClause[Any] = sa.literal_column("envelopes.rowid")


def _within(column: Any, cuts: list[int], i: int) -> sa.ColumnElement[bool]:
    """Part ``i`` of the values of ``column`` split at ``cuts`` (ends open: nothing is missed)."""
    conditions = []
    if i > 0:
        conditions.append(column > cuts[i - 1])
    if i < len(cuts):
        conditions.append(column <= cuts[i])
    return sa.and_(sa.true(), *conditions)


#: The chain's cost (the verifier's alone) against the members' and rows' scan
#: it shares out, measured on 200,000 envelopes: 0.38 s against about 2.3 s.
_CHAIN_SHARE = 0.17


def _bounds(n: int) -> list[float]:
    """Where each of the ``n - 1`` cuts falls, as a fraction of the scan: the verifier's
    part (the first) is smaller by what the chain costs it, so all end together."""
    first = max((1 + _CHAIN_SHARE) / n - _CHAIN_SHARE, 0.0)
    return [first + (1 - first) * k / (n - 1) for k in range(n - 1)]


def _block_cuts(blocks: list[SealBlock], n: int) -> list[int]:
    """``n - 1`` block numbers splitting the members at :func:`_bounds`."""
    total = sum(max(b.envelope_count, 0) for b in blocks)
    bounds = _bounds(n)
    cuts: list[int] = []
    seen = 0
    for block in blocks:
        while len(cuts) < n - 1 and seen >= total * bounds[len(cuts)]:
            cuts.append(block.block_no - 1)
        seen += max(block.envelope_count, 0)
    while len(cuts) < n - 1:
        cuts.append(blocks[-1].block_no if blocks else 0)
    return cuts


def _row_cuts(conn: Connection, n: int) -> list[int]:
    """``n - 1`` rowids splitting the envelopes' rowid range at :func:`_bounds`."""
    if n == 1:
        return []
    low, high = conn.execute(
        sa.select(sa.func.min(_ROWID), sa.func.max(_ROWID)).select_from(envelopes)
    ).one()
    low, high = low or 0, high or 0
    return [low - 1 + int((high - low + 1) * bound) for bound in _bounds(n)]


def _sql(conn: Connection, stmt: sa.Select[Any]) -> str:
    # Values as literals: the text runs on bare driver connections too.
    return str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))


def _members_stmt(where: sa.ColumnElement[bool]) -> sa.Select[Any]:
    s, e = sealed_envelopes.c, envelopes.c
    return (
        sa.select(
            s.block_no,
            s.position,
            s.envelope_sha256.label("sealed_sha256"),
            # Times as stored: equal spellings are equal times (no row is
            # missing a time, so NULL IS a time means the row is gone).
            _raw(e.received_at).is_not_distinct_from(_raw(s.received_at)).label("same_at"),
            *_checked(s.envelope_id),
        )
        .select_from(sealed_envelopes.outerjoin(envelopes, e.envelope_id == s.envelope_id))
        .where(where)
    )


def _checked(envelope_id: Any) -> list[Any]:
    """What :func:`recorder.verify_sqlite_rows.consistent` reads, in its order."""
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


def _rows_stmt(
    conn: Connection,
    through: SealedThrough,
    latest_plausible: dt.datetime,
    where: sa.ColumnElement[bool],
) -> sa.Select[Any]:
    e = envelopes.c
    behind = (
        statements.sealed_through(conn.dialect, through.cutoff, through.last)
        if through.started
        else sa.false()
    )
    sealed = statements.is_sealed()
    # A sealed row behind the sealed point was checked with its member; the
    # scan brings back only the others (no text leaves SQLite for the rest).
    return sa.select(
        behind.label("behind"),
        sealed.label("sealed"),
        (e.received_at > sa.literal(latest_plausible, UTCDateTime)).label("future"),
        *_checked(e.envelope_id),
    ).where(sa.not_(sa.and_(behind, sealed)), where)


# -- worker processes

#: From this many envelopes on (by rowid), verify splits the scan over the
#: available cores by default. At 20,000 a second process saved 0.05 s on a
#: quiet machine and lost as much at load 3.4 (it costs about 0.08 s of CPU
#: to start); at 200,000 it saves a third to a half of the time.
PARALLEL_FROM = 50_000
#: At most this many processes by default (the verifier included).
_MAX_DEFAULT_PROCESSES = 4


class Helpers:
    """Worker processes of a parallel verify, each to read in the verifier's snapshot.

    SQLite has no way to hand a read snapshot to another connection, but a
    WAL reader's snapshot is the last commit when it first reads: so the
    verifier takes the write lock (``BEGIN IMMEDIATE`` on a connection of
    its own), its own connection and every worker's begin and read, and the
    lock is released; no commit can land in between, so all of them read
    the same database. Writers wait for that handshake (about a millisecond;
    their busy timeout is 30 s), not for the scan. Workers are fresh
    interpreters that load no SQLAlchemy (:mod:`recorder.verify_sqlite_rows`),
    talking to the verifier over a socket pair.
    """

    def __init__(self, path: str, count: int) -> None:
        self.count = count
        self.lock_held: float | None = None
        """Seconds the write lock was held to line the snapshots up (writers waited that long
        at most)."""
        self._pipes: list[MessagePipe] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(count):
                ours, theirs = socket.socketpair()
                with theirs:
                    process = subprocess.Popen(
                        [
                            sys.executable,
                            "-c",
                            _WORKER,
                            json.dumps(sys.path),
                            str(theirs.fileno()),
                            path,
                            str(SQLITE_BUSY_TIMEOUT_SECONDS),
                        ],
                        pass_fds=(theirs.fileno(),),
                        stdin=subprocess.DEVNULL,
                    )
                self._processes.append(process)
                self._pipes.append(MessagePipe(ours.detach()))
            for pipe in self._pipes:
                _expect(pipe, STARTED)
        except BaseException:
            self.close()
            raise

    def share_snapshot(self, conn: Connection, engine: Engine) -> None:
        """Fix ``conn``'s read snapshot (its transaction begun, nothing read yet) and the
        workers' at the same commit."""
        lock = detached_connection(engine)
        try:
            lock.execute("BEGIN IMMEDIATE")
            locked = time.perf_counter()
            try:
                conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").one()
                for pipe in self._pipes:
                    pipe.send(SNAPSHOT)
                for pipe in self._pipes:
                    _expect(pipe, READY)
            finally:
                lock.execute("ROLLBACK")
                self.lock_held = time.perf_counter() - locked
        finally:
            lock.close()

    def start(self, parts: Sequence[Part]) -> None:
        for pipe, part in zip(self._pipes, parts, strict=True):
            pipe.send(part)

    def results(self) -> Iterator[Flagged]:
        for pipe in self._pipes:
            answer = _answer(pipe)
            if not isinstance(answer, Flagged):
                raise StorageUnavailable(f"verifying in a worker process: {answer}")
            yield answer

    def close(self) -> None:
        for pipe in self._pipes:
            pipe.close()
        for process in self._processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


#: A worker's program: the verifier's import path, then the worker's loop
#: (:func:`recorder.verify_sqlite_rows.main`). A plain interpreter, not a
#: multiprocessing child: that would import the caller's main module first
#: (SQLAlchemy and all), and fail in a script without a ``__main__`` guard.
_WORKER = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from recorder.verify_sqlite_rows import main; main(sys.argv[2:])"
)


def _answer(pipe: MessagePipe) -> Any:
    try:
        return pipe.recv()
    except EOFError:
        raise StorageUnavailable(
            "verifying: a worker process ended abruptly (killed, or out of memory); "
            "run verify again"
        ) from None


def _expect(pipe: MessagePipe, expected: str) -> None:
    answer = _answer(pipe)
    if answer != expected:
        raise StorageUnavailable(f"verifying in a worker process: {answer}")


@contextmanager
def helpers(engine: Engine, workers: int | None) -> Iterator[Helpers | None]:
    """Worker processes for :func:`recorder.verify.verify` on ``engine``: ``workers - 1``
    of them (the verifier is one; None: :func:`default_processes`), or None for one
    process: ``workers`` 1, or a database that is no WAL file (in memory, or with a
    rollback journal, where one reader holds writers off anyway)."""
    if workers is None:
        workers = default_processes(engine)
    # Workers inherit their socket by descriptor (pass_fds): POSIX only.
    parallel = workers > 1 and bool(sys.executable) and os.name == "posix"
    path = _wal_file(engine) if parallel else None
    if path is None:
        yield None
        return
    try:
        started = Helpers(path, workers - 1)
    except (OSError, StorageUnavailable):
        # No worker could start (an embedded interpreter, a process limit):
        # the one-process walk checks the same.
        yield None
        return
    try:
        yield started
    finally:
        started.close()


def default_processes(engine: Engine) -> int:
    """How many processes verify uses on ``engine`` by default: the cores this process may
    run on (at most four) once the table holds :data:`PARALLEL_FROM` envelopes, else one."""
    try:
        with read_only(engine) as conn:
            rows = conn.execute(sa.select(sa.func.max(_ROWID)).select_from(envelopes)).scalar()
    except sa.exc.SQLAlchemyError:
        return 1  # verify itself reports what is wrong with the database
    if (rows or 0) < PARALLEL_FROM:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cores = os.cpu_count() or 1
    return min(cores, _MAX_DEFAULT_PROCESSES)


def _wal_file(engine: Engine) -> str | None:
    """The database's file when it is in WAL mode, else None."""
    with read_only(engine) as conn:
        path = next(
            (row[2] for row in conn.exec_driver_sql("PRAGMA database_list") if row[1] == "main"),
            "",
        )
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    return path if path and str(mode).lower() == "wal" else None
