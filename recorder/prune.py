"""Pruning: remove expired, unheld records in batches, logging each one.

:func:`prune` removes the records retention policies (:mod:`recorder.policies`)
have expired and no legal hold (:mod:`recorder.holds`) covers, in batches of
``batch_size``, each its own short transaction that also writes one
``pruned_envelopes`` row per removed record; a run that is interrupted leaves
every finished batch done, and the next run carries on. Cutoffs (``now -
keep``) are fixed when a run starts, so a record written during the run is
never old enough to go. One run at a time: PostgreSQL takes
``pg_try_advisory_lock``, SQLite an exclusive ``flock`` on
``<database>-prune.lock``; a run that finds the lock taken records a
``locked_out`` row and returns without touching anything. Every prune run,
dry, failed or locked out, writes a ``prune_runs`` row.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recorder import statements
from recorder.engine import is_sqlite, read_only, storage_errors
from recorder.errors import StorageUnavailable
from recorder.policies import (
    UTC,
    RetentionError,
    RetentionPolicy,
    default_actor,
    list_policies,
    resolve_now,
)
from recorder.policies import (
    cutoff as policy_cutoff,
)

if TYPE_CHECKING:
    from recorder.archive.archiver import ArchiveOptions, ArchiveProgress

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 5000
MAX_BATCH_SIZE = 100_000
#: Session-level advisory lock key of ``recorder prune`` on PostgreSQL ("recp").
PRUNE_LOCK_KEY = 0x72656370


@dataclass(frozen=True, slots=True)
class PruneProgress:
    """Passed to ``on_progress`` after every batch."""

    policy: str
    deleted: int
    """Rows deleted so far in this run, all policies."""
    expected: int
    """Rows expired and unheld when the run started, all policies."""


@dataclass(slots=True)
class PruneReport:
    """What a prune run did (or, for a dry run, would do)."""

    run_id: int | None
    dry_run: bool
    status: str
    """``completed``, ``stopped`` (time budget), ``failed`` or ``locked_out``."""
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    cutoffs: dict[str, dt.datetime] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    """Policy name -> rows deleted (would be deleted, for a dry run)."""
    held: int = 0
    """Expired rows kept because a legal hold covers them."""
    skipped: int = 0
    """Expired, unheld rows left for a later run (time budget, rows locked by writers)."""
    error: str | None = None
    archive: ArchiveProgress | None = None
    """What an archiving run (``prune(archive=...)``) wrote and finished."""

    @property
    def deleted_total(self) -> int:
        return sum(self.deleted.values())

    @property
    def locked_out(self) -> bool:
        return self.status == "locked_out"

    def summary(self) -> str:
        if self.locked_out:
            return "another prune run is in progress; nothing done"
        verb = "would delete" if self.dry_run else "deleted"
        text = f"{verb} {self.deleted_total} envelopes; held {self.held}; skipped {self.skipped}"
        if self.archive is not None:
            text += (
                f"; archived {self.archive.archived} envelopes in {len(self.archive.files)} files"
            )
            if self.archive.recovered:
                text += f" (finished {len(self.archive.recovered)} left by an interrupted run)"
        if self.status == "stopped":
            text += " (time budget reached: run again to continue)"
        return text


class _LockedOut(Exception):
    pass


@contextmanager
def _prune_lock(engine: Engine) -> Iterator[None]:
    """One prune run per database at a time; raises _LockedOut when another has it."""
    if is_sqlite(engine):
        with _sqlite_prune_lock(engine.url.database):
            yield
        return
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        got = conn.execute(sa.select(sa.func.pg_try_advisory_lock(PRUNE_LOCK_KEY))).scalar()
        if not got:
            raise _LockedOut
        try:
            yield
        finally:
            try:
                conn.execute(sa.select(sa.func.pg_advisory_unlock(PRUNE_LOCK_KEY)))
            except sa.exc.SQLAlchemyError:
                # A session lock must never go back to the pool still held.
                conn.invalidate()


_memory_locks: dict[str, threading.Lock] = {}


@contextmanager
def _sqlite_prune_lock(database: str | None) -> Iterator[None]:
    if not database or database == ":memory:" or database.startswith("file:"):
        lock = _memory_locks.setdefault(database or ":memory:", threading.Lock())
        if not lock.acquire(blocking=False):
            raise _LockedOut
        try:
            yield
        finally:
            lock.release()
        return
    # flock belongs to the open file: it is released when this process
    # exits, however it exits, so a crashed run never blocks the next one.
    path = f"{database}-prune.lock"
    try:
        handle: IO[str] = open(path, "a")  # noqa: SIM115
    except OSError as exc:
        raise StorageUnavailable(f"cannot open the prune lock file {path}: {exc}") from exc
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _LockedOut from None
        yield
    finally:
        handle.close()


def _start_run(engine: Engine, row: dict[str, Any]) -> int:
    with engine.begin() as conn:
        run_id = conn.execute(statements.insert_prune_run(row)).scalar_one()
    return int(run_id)


def _finish_run(engine: Engine, run_id: int, report: PruneReport) -> None:
    with engine.begin() as conn:
        conn.execute(
            statements.finish_prune_run(
                run_id,
                {
                    "finished_at": report.finished_at,
                    "status": report.status,
                    "cutoffs": {k: v.isoformat() for k, v in report.cutoffs.items()},
                    "deleted_per_policy": report.deleted,
                    "deleted_total": report.deleted_total,
                    "held_count": report.held,
                    "skipped_count": report.skipped,
                    "error": report.error,
                },
            )
        )


def prune(
    engine: Engine,
    *,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_seconds: float | None = None,
    actor: str | None = None,
    on_progress: Callable[[PruneProgress], None] | None = None,
    now: dt.datetime | None = None,
    archive: ArchiveOptions | None = None,
) -> PruneReport:
    """Delete expired, unheld records in batches; record the run in ``prune_runs``.

    Parameters
    ----------
    engine
        The recorder's database.
    dry_run
        Count what would be deleted, per policy, and delete nothing.
    batch_size
        Rows per batch; each batch is one short transaction.
    max_seconds
        Start no new batch after this long; the rest waits for the next run
        (reported as ``skipped``, status ``stopped``).
    actor
        Who runs it (default: the OS user); stored with the run.
    on_progress
        Called after every batch.
    now
        The time cutoffs are measured from (default: the current time).
    archive
        Write every envelope to a Parquet file in this archive, fsynced and
        recorded in the manifest, before deleting it (see
        :mod:`recorder.archive.archiver`); first finish any file an
        interrupted archiving run left.

    Returns
    -------
    PruneReport
        With ``status == "locked_out"`` (and nothing done) when another run
        holds the lock.

    Raises
    ------
    StorageUnavailable
        The database failed; the run's row says so, and every batch
        committed before the failure stays done.
    """
    if isinstance(batch_size, bool) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise RetentionError(f"batch size must be between 1 and {MAX_BATCH_SIZE}")
    if max_seconds is not None and max_seconds <= 0:
        raise RetentionError("max seconds must be more than zero")
    started = resolve_now(now)
    actor = actor or default_actor()
    report = PruneReport(run_id=None, dry_run=dry_run, status="running", started_at=started)
    base_row = {
        "started_at": started,
        "dry_run": dry_run,
        "actor": actor,
        "host": socket.gethostname(),
    }
    with storage_errors("pruning"):
        try:
            with _prune_lock(engine):
                report.run_id = _start_run(engine, {**base_row, "status": "running"})
                try:
                    _prune_locked(engine, report, batch_size, max_seconds, on_progress, archive)
                except BaseException as exc:
                    report.status = "failed"
                    report.error = _error_text(exc)
                    report.finished_at = dt.datetime.now(UTC)
                    _record_failure(engine, report)
                    raise
                report.finished_at = dt.datetime.now(UTC)
                _finish_run(engine, report.run_id, report)
        except _LockedOut:
            report.status = "locked_out"
            report.error = "another prune run holds the lock"
            report.finished_at = dt.datetime.now(UTC)
            report.run_id = _start_run(
                engine,
                {
                    **base_row,
                    "status": "locked_out",
                    "finished_at": report.finished_at,
                    "error": report.error,
                },
            )
    return report


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _record_failure(engine: Engine, report: PruneReport) -> None:
    assert report.run_id is not None
    try:
        _finish_run(engine, report.run_id, report)
    except Exception:
        # The database that failed the run may refuse this too; the row then
        # stays "running" with no finish time, which says as much.
        log.warning("could not record the failure of prune run %s", report.run_id, exc_info=True)


def _prune_locked(
    engine: Engine,
    report: PruneReport,
    batch_size: int,
    max_seconds: float | None,
    on_progress: Callable[[PruneProgress], None] | None,
    archive: ArchiveOptions | None = None,
) -> None:
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    policies = list_policies(engine)
    outranking: list[statements.Match] = []
    plans: list[tuple[RetentionPolicy, list[sa.ColumnElement[bool]]]] = []
    for policy in policies:
        cutoff = policy_cutoff(report.started_at, policy.keep)
        report.cutoffs[policy.name] = cutoff
        plans.append((policy, statements.expired_under(policy.match(), list(outranking), cutoff)))
        outranking.append(policy.match())
    expected = {p.name: _count(engine, c, is_held=False) for p, c in plans}
    if report.dry_run:
        report.deleted = expected
        report.held = sum(_count(engine, c, is_held=True) for _, c in plans)
        report.status = "completed"
        return
    total_expected = sum(expected.values())
    deleted_so_far = 0
    stopped = False
    report.deleted = {policy.name: 0 for policy, _ in plans}

    def on_deleted(policy_name: str, removed: int) -> None:
        nonlocal deleted_so_far
        report.deleted[policy_name] = report.deleted.get(policy_name, 0) + removed
        deleted_so_far += removed
        if on_progress is not None:
            on_progress(PruneProgress(policy_name, deleted_so_far, total_expected))

    archiver = None
    if archive is not None:
        # The integration point of the cold tier: between listing what has
        # expired and deleting it, the archiver writes and records the files.
        from recorder.archive.archiver import Archiver

        assert report.run_id is not None
        archiver = Archiver(engine, archive, run_id=report.run_id)
        report.archive = archiver.progress
        archiver.recover({p.name: c for p, c in plans}, batch_size, on_deleted)
    for policy, conditions in plans:
        if stopped or expected[policy.name] == 0:
            continue
        if archiver is not None:
            stopped = archiver.prune_policy(
                policy.name,
                conditions,
                batch_size=batch_size,
                deadline=deadline,
                on_deleted=on_deleted,
            )
            continue
        after: statements.Keyset | None = None
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                stopped = True
                break
            removed, last = _prune_batch(engine, report, policy.name, conditions, batch_size, after)
            if last is None:
                break
            after = last
            on_deleted(policy.name, removed)
    report.held = sum(_count(engine, c, is_held=True) for _, c in plans)
    report.skipped = sum(_count(engine, c, is_held=False) for _, c in plans)
    report.status = "stopped" if stopped else "completed"


def _count(engine: Engine, conditions: list[sa.ColumnElement[bool]], *, is_held: bool) -> int:
    with read_only(engine) as conn:
        return int(conn.execute(statements.count_expired(conditions, is_held=is_held)).scalar_one())


def _prune_batch(
    engine: Engine,
    report: PruneReport,
    policy_name: str,
    conditions: list[sa.ColumnElement[bool]],
    batch_size: int,
    after: statements.Keyset | None,
) -> tuple[int, statements.Keyset | None]:
    """Delete one batch in its own transaction: how many rows went, and the last one's keyset."""
    assert report.run_id is not None
    if is_sqlite(engine):
        # BEGIN IMMEDIATE (the engine's begin hook): the select, the log and
        # the delete see one state and commit together.
        with engine.begin() as conn:
            rows = conn.execute(
                statements.select_prune_batch(conditions, batch_size=batch_size, after=after)
            ).all()
            if not rows:
                return 0, None
            ids = {"ids": json.dumps([r.envelope_id for r in rows])}
            conn.execute(
                statements.log_pruned_sqlite(prune_run_id=report.run_id, policy_name=policy_name),
                ids,
            )
            conn.execute(statements.delete_pruned_sqlite(), ids)
            return len(rows), max((r.received_at, r.envelope_id) for r in rows)
    with engine.begin() as conn:
        last = conn.execute(
            statements.prune_batch_postgresql(
                conditions,
                prune_run_id=report.run_id,
                policy_name=policy_name,
                batch_size=batch_size,
                after=after,
            )
        ).first()
    if last is None:
        return 0, None
    return int(last.n), (last.received_at, last.envelope_id)


@dataclass(frozen=True, slots=True)
class PruneRun:
    """One row of the prune log."""

    id: int
    started_at: dt.datetime
    finished_at: dt.datetime | None
    status: str
    dry_run: bool
    cutoffs: dict[str, str] | None
    deleted_per_policy: dict[str, int] | None
    deleted_total: int
    held_count: int | None
    skipped_count: int | None
    error: str | None
    actor: str | None
    host: str | None


def read_prune_log(engine: Engine, *, limit: int | None = None) -> list[PruneRun]:
    """Prune runs, oldest first (the newest ``limit`` when given)."""
    with storage_errors("reading the prune log"), read_only(engine) as conn:
        rows = conn.execute(statements.select_prune_runs(limit)).all()
    return [PruneRun(**r._mapping) for r in reversed(rows)]
