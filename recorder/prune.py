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

Where a run archives (see :func:`prune`): ``archive.directory`` (``--archive
DIR``, or ``RECORDER_ARCHIVE_DIR``) for every policy; otherwise each policy's
own ``archive_dir``, for that policy only. A policy with an ``archive_dir`` is
never pruned without archiving: :class:`ArchiveRequired` when no archive can
be written, and on PostgreSQL the database-side functions refuse a plain
delete under it (migrations 0008, 0009). A requirement set while a run is
going stops that run's plain deletes of the policy at its next batch (the
run fails; the next one archives).

Over 450 lines: the PostgreSQL path (database-side functions) and the
SQLite path (Python) share one run loop, its logging and the
archive-before-delete steps; policies and holds live in their own modules.
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

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recorder import statements
from recorder.engine import is_sqlite, read_only, storage_errors
from recorder.errors import RecorderError, SchemaMissing, StorageUnavailable
from recorder.policies import (
    UTC,
    RetentionError,
    check_archive_dir,
    default_actor,
    list_policies,
    resolve_now,
)
from recorder.policies import (
    cutoff as policy_cutoff,
)

if TYPE_CHECKING:
    from recorder.archive.archiver import ArchiveOptions, ArchiveProgress, Archiver

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


class ArchiveRequired(RetentionError):
    """A policy requires archiving before delete and this run cannot archive: nothing deleted."""


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


class _Run:
    """One prune run's calls into the database: the same steps on either engine."""

    def __init__(self, engine: Engine, report: PruneReport, actor: str, host: str) -> None:
        self.engine = engine
        self.report = report
        self.actor = actor
        self.host = host
        self.conditions: dict[str, list[sa.ColumnElement[bool]]] = {}
        """Policy name -> the run's rules as SQL conditions (what the archiver lists by)."""
        self.archive_dirs: dict[str, str | None] = {}
        """Policy name -> the archive directory the run's snapshot of it requires, or None."""

    def begin(self, as_of: dt.datetime | None) -> list[str]:
        """Record the run, fix its cutoffs; the policy names in the order to apply them."""
        raise NotImplementedError

    def locked_out(self, error: str) -> int:
        raise NotImplementedError

    def count(self, policy: str, *, held: bool) -> int:
        raise NotImplementedError

    def batch(
        self, policy: str, after: statements.Keyset | None, size: int
    ) -> tuple[int, statements.Keyset | None]:
        """Remove one batch: how many went, and the batch's last key (None: nothing left)."""
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError


class _PostgresRun(_Run):
    """Through the database-side functions (migration 0007): the database applies the rules.

    The role running this needs EXECUTE on them and nothing more: the
    functions, owned by the schema owner, re-check every policy cutoff and
    legal hold, delete, log and count.
    """

    def _call(self, stmt: sa.Executable) -> sa.Result[Any]:
        """Run one function call in its own transaction, translating what the function refuses."""
        try:
            with self.engine.begin() as conn:
                return conn.execute(stmt).freeze()()
        except sa.exc.DBAPIError as exc:
            orig = exc.orig
            first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
            if isinstance(orig, psycopg.errors.InvalidParameterValue):
                raise RetentionError(first) from exc
            if isinstance(orig, psycopg.errors.ObjectNotInPrerequisiteState):
                raise ArchiveRequired(first) from exc
            if isinstance(orig, psycopg.errors.UndefinedFunction):
                raise SchemaMissing(
                    "the database has no prune functions; run `recorder db upgrade` "
                    f"(and `recorder db grant` again) ({first})"
                ) from exc
            raise

    def begin(self, as_of: dt.datetime | None) -> list[str]:
        stmt = statements.prune_begin(
            dry_run=self.report.dry_run, actor=self.actor, host=self.host, as_of=as_of
        )
        row = self._call(stmt).one()
        self.report.run_id = int(row.run_id)
        self.report.started_at = row.started_at
        snapshot = self._call(statements.select_prune_run_policies(self.report.run_id)).scalar()
        outranking: list[statements.Match] = []
        for policy in snapshot or []:
            cutoff = dt.datetime.fromisoformat(policy["cutoff"])
            match = {name: policy.get(name) for name in statements.POLICY_MATCH_COLUMNS}
            self.report.cutoffs[policy["name"]] = cutoff
            self.archive_dirs[policy["name"]] = policy.get("archive_dir")
            self.conditions[policy["name"]] = statements.expired_under(
                match, list(outranking), cutoff
            )
            outranking.append(match)
        return list(self.report.cutoffs)

    def locked_out(self, error: str) -> int:
        stmt = statements.prune_locked_out(
            dry_run=self.report.dry_run, actor=self.actor, host=self.host, error=error
        )
        return int(self._call(stmt).scalar_one())

    def count(self, policy: str, *, held: bool) -> int:
        assert self.report.run_id is not None
        stmt = statements.prune_count(run_id=self.report.run_id, policy_name=policy, held=held)
        return int(self._call(stmt).scalar_one())

    def batch(
        self, policy: str, after: statements.Keyset | None, size: int
    ) -> tuple[int, statements.Keyset | None]:
        assert self.report.run_id is not None
        stmt = statements.prune_batch(
            run_id=self.report.run_id, policy_name=policy, after=after, limit=size
        )
        last = self._call(stmt).first()
        if last is None:
            return 0, None
        return int(last.n), (last.received_at, last.envelope_id)

    def finish(self) -> None:
        report = self.report
        assert report.run_id is not None
        stmt = statements.prune_finish(
            run_id=report.run_id,
            status=report.status,
            held=report.held,
            skipped=report.skipped,
            error=report.error,
            would_delete=report.deleted if report.dry_run else None,
        )
        report.finished_at = self._call(stmt).scalar_one()


class _SQLiteRun(_Run):
    """The rules as SQL built in Python (statements.expired_under, held): SQLite has no roles."""

    def begin(self, as_of: dt.datetime | None) -> list[str]:
        report = self.report
        report.started_at = resolve_now(as_of)
        outranking: list[statements.Match] = []
        snapshot: list[dict[str, Any]] = []
        for policy in list_policies(self.engine):
            cutoff = policy_cutoff(report.started_at, policy.keep)
            report.cutoffs[policy.name] = cutoff
            self.archive_dirs[policy.name] = policy.archive_dir
            self.conditions[policy.name] = statements.expired_under(
                policy.match(), list(outranking), cutoff
            )
            outranking.append(policy.match())
            snapshot.append({**policy.describe(), "cutoff": cutoff.isoformat()})
        row = {
            "started_at": report.started_at,
            "status": "running",
            "dry_run": report.dry_run,
            "actor": self.actor,
            "host": self.host,
            "cutoffs": {k: v.isoformat() for k, v in report.cutoffs.items()},
            "policies": snapshot,
        }
        if not report.dry_run:
            row["deleted_per_policy"] = {name: 0 for name in report.cutoffs}
        with self.engine.begin() as conn:
            report.run_id = int(conn.execute(statements.insert_prune_run(row)).scalar_one())
        return list(report.cutoffs)

    def locked_out(self, error: str) -> int:
        at = dt.datetime.now(UTC)
        row = {
            "started_at": at,
            "finished_at": at,
            "status": "locked_out",
            "dry_run": self.report.dry_run,
            "actor": self.actor,
            "host": self.host,
            "error": error,
        }
        with self.engine.begin() as conn:
            return int(conn.execute(statements.insert_prune_run(row)).scalar_one())

    def count(self, policy: str, *, held: bool) -> int:
        stmt = statements.count_expired(self.conditions[policy], is_held=held)
        with read_only(self.engine) as conn:
            return int(conn.execute(stmt).scalar_one())

    def batch(
        self, policy: str, after: statements.Keyset | None, size: int
    ) -> tuple[int, statements.Keyset | None]:
        report = self.report
        assert report.run_id is not None
        # BEGIN IMMEDIATE (the engine's begin hook): the select, the log, the
        # delete and the run's counts see one state and commit together.
        with self.engine.begin() as conn:
            # What the PostgreSQL functions refuse (migrations 0008, 0009),
            # refused here too: the run's snapshot or the policy as it stands
            # now (set since the run began) requires archiving.
            live = conn.execute(statements.select_policy_for_update(policy)).first()
            if self.archive_dirs.get(policy) is not None or (
                live is not None and live.archive_dir is not None
            ):
                raise ArchiveRequired(
                    f"retention policy {policy} requires archiving before delete; "
                    "none of its envelopes is deleted without an archive"
                )
            rows = conn.execute(
                statements.select_prune_batch(self.conditions[policy], batch_size=size, after=after)
            ).all()
            if not rows:
                return 0, None
            ids = {"ids": json.dumps([r.envelope_id for r in rows])}
            conn.execute(
                statements.log_pruned_sqlite(
                    prune_run_id=report.run_id,
                    policy_name=policy,
                    pruned_at=dt.datetime.now(UTC),
                ),
                ids,
            )
            conn.execute(statements.delete_pruned_sqlite(), ids)
            deleted = {**report.deleted, policy: report.deleted.get(policy, 0) + len(rows)}
            conn.execute(
                statements.finish_prune_run(
                    report.run_id,
                    {"deleted_per_policy": deleted, "deleted_total": sum(deleted.values())},
                )
            )
            return len(rows), max((r.received_at, r.envelope_id) for r in rows)

    def finish(self) -> None:
        report = self.report
        assert report.run_id is not None
        report.finished_at = dt.datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(
                statements.finish_prune_run(
                    report.run_id,
                    {
                        "finished_at": report.finished_at,
                        "status": report.status,
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

    On PostgreSQL every step is a call of the database-side prune functions,
    which apply the policies and holds themselves; on SQLite the same steps
    run as statements built here.

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
        The time cutoffs are measured from (default: the current time). On
        PostgreSQL it cannot be later than the database's clock.
    archive
        Where and how to archive. With a ``directory``, every envelope the
        run removes is first written to a Parquet file there, fsynced and
        recorded in the manifest (see :mod:`recorder.archive.archiver`),
        whatever the policies say. Without one (or with ``archive=None``),
        the envelopes of each policy that has an ``archive_dir`` are
        archived there (with these options' file size and partitioning),
        and those of other policies are deleted without archiving. Either
        way the run first finishes any file an interrupted archiving run
        left in an archive it uses.

    Returns
    -------
    PruneReport
        With ``status == "locked_out"`` (and nothing done) when another run
        holds the lock.

    Raises
    ------
    ArchiveRequired
        A policy requires archiving and its archive cannot be written (the
        ``archive`` extra is missing, its stored directory is not usable):
        the run fails before it deletes anything, and says so in its row.
    StorageUnavailable
        The database failed; the run's row says so, and every batch
        committed before the failure stays done.
    """
    if isinstance(batch_size, bool) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise RetentionError(f"batch size must be between 1 and {MAX_BATCH_SIZE}")
    if max_seconds is not None and max_seconds <= 0:
        raise RetentionError("max seconds must be more than zero")
    as_of = None if now is None else resolve_now(now)
    report = PruneReport(
        run_id=None, dry_run=dry_run, status="running", started_at=as_of or dt.datetime.now(UTC)
    )
    kind = _SQLiteRun if is_sqlite(engine) else _PostgresRun
    run = kind(engine, report, actor or default_actor(), socket.gethostname())
    with storage_errors("pruning"):
        try:
            with _prune_lock(engine):
                policies = run.begin(as_of)
                try:
                    _prune_locked(run, policies, batch_size, max_seconds, on_progress, archive)
                except BaseException as exc:
                    report.status = "failed"
                    report.error = _error_text(exc)
                    _record_failure(run)
                    raise
                run.finish()
        except _LockedOut:
            report.status = "locked_out"
            report.error = "another prune run holds the lock"
            report.run_id = run.locked_out(report.error)
            report.finished_at = dt.datetime.now(UTC)
    return report


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _record_failure(run: _Run) -> None:
    try:
        run.finish()
    except Exception:
        # The database that failed the run may refuse this too; the row then
        # stays "running" with no finish time, which says as much.
        run.report.finished_at = dt.datetime.now(UTC)
        log.warning(
            "could not record the failure of prune run %s", run.report.run_id, exc_info=True
        )


def _prune_locked(
    run: _Run,
    policies: list[str],
    batch_size: int,
    max_seconds: float | None,
    on_progress: Callable[[PruneProgress], None] | None,
    archive: ArchiveOptions | None = None,
) -> None:
    report = run.report
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    expected = {name: run.count(name, held=False) for name in policies}
    if report.dry_run:
        report.deleted = expected
        report.held = sum(run.count(name, held=True) for name in policies)
        report.status = "completed"
        return
    total_expected = sum(expected.values())
    deleted_so_far = 0
    stopped = False
    report.deleted = dict.fromkeys(policies, 0)
    # Before anything is deleted: a policy that requires an archive this run
    # cannot write stops the run here.
    targets = _archive_targets(run, policies, archive)

    def on_deleted(policy_name: str, removed: int) -> None:
        nonlocal deleted_so_far
        report.deleted[policy_name] = report.deleted.get(policy_name, 0) + removed
        deleted_so_far += removed
        if on_progress is not None:
            on_progress(PruneProgress(policy_name, deleted_so_far, total_expected))

    archivers: dict[str, Archiver] = {}
    if any(targets.values()):
        # The integration point of the cold tier: between listing what has
        # expired and deleting it, the archiver writes and records the files
        # (on PostgreSQL it deletes through recorder_prune_delete_archived,
        # which re-checks every row and that its file is written).
        from recorder.archive.archiver import ArchiveProgress, Archiver, recover

        assert report.run_id is not None
        report.archive = ArchiveProgress()
        made: dict[str, Archiver] = {}
        for name, options in targets.items():
            if options is not None:
                # One archiver per archive, however its directory is spelled
                # (a symlink, "x/../a"): recovery finds a file by its archive.
                key = str(options.path.resolve())
                if key not in made:
                    made[key] = Archiver(
                        run.engine, options, run_id=report.run_id, progress=report.archive
                    )
                archivers[name] = made[key]
        recover(run.engine, list(made.values()), archivers, run.conditions, batch_size, on_deleted)
    for name in policies:
        if stopped or expected[name] == 0:
            continue
        archiver = archivers.get(name)
        if archiver is not None:
            stopped = archiver.prune_policy(
                name,
                run.conditions[name],
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
            removed, last = run.batch(name, after, batch_size)
            if last is None:
                break
            after = last
            on_deleted(name, removed)
    report.held = sum(run.count(name, held=True) for name in policies)
    report.skipped = sum(run.count(name, held=False) for name in policies)
    report.status = "stopped" if stopped else "completed"


def _archive_targets(
    run: _Run, policies: list[str], archive: ArchiveOptions | None
) -> dict[str, ArchiveOptions | None]:
    """Policy name -> where the run archives what it expires (None: deleted unarchived).

    ``archive.directory`` (the command line's ``--archive``, or
    ``RECORDER_ARCHIVE_DIR``) for every policy; otherwise the policy's own
    directory. Raises :class:`ArchiveRequired` for a policy that requires an
    archive that cannot be written.
    """
    targets: dict[str, ArchiveOptions | None] = {}
    for name in policies:
        required = run.archive_dirs.get(name)
        if archive is not None and archive.directory is not None:
            targets[name] = archive
            continue
        if required is None:
            targets[name] = None
            continue
        try:
            check_archive_dir(required)
            from recorder.archive.archiver import ArchiveOptions

            defaults = archive if archive is not None else ArchiveOptions(None)
            targets[name] = ArchiveOptions(
                required, file_rows=defaults.file_rows, partition=defaults.partition
            )
        except RecorderError as exc:
            raise ArchiveRequired(
                f"retention policy {name} requires archiving before delete (to {required}), "
                f"and this run cannot archive: {exc}; nothing was deleted"
            ) from exc
    return targets


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
    policies: list[dict[str, Any]] | None = None
    """The policies the run applied, in precedence order, each with its cutoff."""


def read_prune_log(engine: Engine, *, limit: int | None = None) -> list[PruneRun]:
    """Prune runs, oldest first (the newest ``limit`` when given)."""
    with storage_errors("reading the prune log"), read_only(engine) as conn:
        rows = conn.execute(statements.select_prune_runs(limit)).all()
    return [PruneRun(**r._mapping) for r in reversed(rows)]
