"""Retention policies, legal holds, and pruning.

Policies and holds live in the database, so every instance and every
scheduler shares them. The rules:

* **Which policy decides.** For each record, among the policies whose match
  fields all equal the record's columns (a field left unset matches
  anything), the one with the highest ``priority`` decides. Ties go to the
  policy whose name sorts first (Python string order, i.e. by code point),
  so the outcome never depends on the database's collation or row order.
* **Unmatched records are kept**, however old.
* **Held records are never pruned.** A legal hold in force (not released)
  covers a record when its team, channel and user fields (unset matches
  anything) equal the record's and ``since <= received_at < until`` (either
  bound may be open). Holds are checked inside every delete statement, so a
  hold placed during a run protects its records from the next batch on.
  Released holds keep their row, with the release time and who released it.
* **Pruning** (:func:`prune`) removes expired, unheld records in batches of
  ``batch_size``, each its own short transaction that also writes one
  ``pruned_envelopes`` row per removed record; a run that is interrupted
  leaves every finished batch done, and the next run carries on. Cutoffs
  (``now - keep``) are fixed when a run starts, so a record written during
  the run is never old enough to go. One run at a time: PostgreSQL takes
  ``pg_try_advisory_lock``, SQLite an exclusive ``flock`` on
  ``<database>-prune.lock``; a run that finds the lock taken records a
  ``locked_out`` row and returns without touching anything.

Every change to a policy or a hold writes a ``change_log`` row in the same
transaction; every prune run, dry, failed or locked out, writes a
``prune_runs`` row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import getpass
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from recorder import statements
from recorder.engine import is_sqlite, read_only, storage_errors
from recorder.errors import ConfigurationError, RecorderError, StorageUnavailable
from recorder.schema import change_log, legal_holds, prune_runs, retention_policies
from recorder.timespec import parse_duration

if TYPE_CHECKING:
    from recorder.archive.archiver import ArchiveOptions, ArchiveProgress

log = logging.getLogger(__name__)

UTC = dt.timezone.utc
DEFAULT_BATCH_SIZE = 5000
MAX_BATCH_SIZE = 100_000
MAX_NAME_LENGTH = 200
#: Session-level advisory lock key of ``recorder prune`` on PostgreSQL ("recp").
PRUNE_LOCK_KEY = 0x72656370

POLICY = "retention_policy"
HOLD = "legal_hold"


class RetentionError(RecorderError, ValueError):
    """A policy or hold request cannot be carried out (unknown name, bad value)."""


def parse_keep(text: str) -> dt.timedelta:
    """A retention period: ``90d``, ``12h``, ``30m``; a plain number means days.

    Raises
    ------
    RetentionError
        Not a whole, positive number of days, hours or minutes.
    """
    stripped = text.strip().lower()
    if stripped and stripped[-1] not in "dhm" and not stripped.isdigit():
        raise RetentionError(f"{text!r} is not a retention period; use e.g. 90d, 12h, 30m or 90")
    try:
        return parse_duration(stripped, default_unit="d")
    except ConfigurationError as exc:
        raise RetentionError(
            f"{text!r} is not a retention period; use e.g. 90d, 12h, 30m or 90"
        ) from exc


def default_actor() -> str:
    """The OS user running this process: who a change or a prune run is attributed to."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def _now(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise RetentionError(f"a {kind} name must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise RetentionError(
            f"a {kind} name must be printable and at most {MAX_NAME_LENGTH} characters"
        )
    return name


def _check_value(field_name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise RetentionError(f"{field_name} must be a non-empty string or unset")
    return value


# -- policies


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long records that match are kept. Unset match fields match anything."""

    name: str
    keep: dt.timedelta
    team_id: str | None = None
    channel_id: str | None = None
    user_id: str | None = None
    envelope_type: str | None = None
    event_type: str | None = None
    priority: int = 0
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    def match(self) -> statements.Match:
        """The match fields, by column name."""
        return {name: getattr(self, name) for name in statements.POLICY_MATCH_COLUMNS}

    def matches(self, columns: Mapping[str, Any]) -> bool:
        """Whether a record with these reporting columns matches this policy."""
        return all(v is None or columns.get(k) == v for k, v in self.match().items())

    def precedence(self) -> tuple[int, str]:
        """Sort key: the policy that decides comes first."""
        return (-self.priority, self.name)

    def describe(self) -> dict[str, Any]:
        """JSON-ready fields, as the change log and ``recorder retention list`` show them."""
        return {
            "name": self.name,
            "keep_seconds": int(self.keep.total_seconds()),
            **{k: v for k, v in self.match().items() if v is not None},
            "priority": self.priority,
        }


def deciding_policy(
    policies: Sequence[RetentionPolicy], columns: Mapping[str, Any]
) -> RetentionPolicy | None:
    """The policy that decides a record's retention, or None when none matches (kept)."""
    for policy in sorted(policies, key=RetentionPolicy.precedence):
        if policy.matches(columns):
            return policy
    return None


def _policy_from_row(row: Any) -> RetentionPolicy:
    return RetentionPolicy(
        name=row.name,
        keep=dt.timedelta(seconds=row.keep_seconds),
        team_id=row.team_id,
        channel_id=row.channel_id,
        user_id=row.user_id,
        envelope_type=row.envelope_type,
        event_type=row.event_type,
        priority=row.priority,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _log_change(
    conn: Connection,
    *,
    at: dt.datetime,
    actor: str,
    action: str,
    kind: str,
    name: str,
    details: dict[str, Any],
) -> None:
    conn.execute(
        sa.insert(change_log).values(
            at=at, actor=actor, action=action, object_kind=kind, object_name=name, details=details
        )
    )


def set_policy(
    engine: Engine,
    name: str,
    *,
    keep: dt.timedelta | str,
    team_id: str | None = None,
    channel_id: str | None = None,
    user_id: str | None = None,
    envelope_type: str | None = None,
    event_type: str | None = None,
    priority: int = 0,
    actor: str | None = None,
    now: dt.datetime | None = None,
) -> RetentionPolicy:
    """Create the policy ``name``, or replace every field of the existing one.

    Raises
    ------
    RetentionError
        A bad name, period or match value.
    StorageUnavailable
        The database failed; nothing changed.
    """
    _check_name("policy", name)
    period = parse_keep(keep) if isinstance(keep, str) else keep
    if period.total_seconds() < 1:
        raise RetentionError("a retention period must be at least one second")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise RetentionError("priority must be a whole number")
    if not -(2**31) < priority < 2**31:
        raise RetentionError("priority must fit in 32 bits")
    match = {
        "team_id": _check_value("team_id", team_id),
        "channel_id": _check_value("channel_id", channel_id),
        "user_id": _check_value("user_id", user_id),
        "envelope_type": _check_value("envelope_type", envelope_type),
        "event_type": _check_value("event_type", event_type),
    }
    at = _now(now)
    actor = actor or default_actor()
    values = {"keep_seconds": int(period.total_seconds()), **match, "priority": priority}
    with storage_errors(f"setting retention policy {name}"), engine.begin() as conn:
        existing = conn.execute(
            sa.select(retention_policies).where(retention_policies.c.name == name).with_for_update()
        ).first()
        if existing is None:
            conn.execute(
                sa.insert(retention_policies).values(
                    name=name, created_at=at, updated_at=at, **values
                )
            )
            before = None
            created_at = at
        else:
            conn.execute(
                sa.update(retention_policies)
                .where(retention_policies.c.name == name)
                .values(updated_at=at, **values)
            )
            before = _policy_from_row(existing).describe()
            created_at = existing.created_at
        policy = RetentionPolicy(
            name=name,
            keep=period,
            priority=priority,
            created_at=created_at,
            updated_at=at,
            **match,
        )
        _log_change(
            conn,
            at=at,
            actor=actor,
            action="create" if before is None else "update",
            kind=POLICY,
            name=name,
            details={"before": before, "after": policy.describe()},
        )
    return policy


def list_policies(engine: Engine) -> list[RetentionPolicy]:
    """Every policy, the one that decides first (highest priority, then name)."""
    with storage_errors("listing retention policies"), read_only(engine) as conn:
        rows = conn.execute(sa.select(retention_policies)).all()
    return sorted((_policy_from_row(r) for r in rows), key=RetentionPolicy.precedence)


def remove_policy(
    engine: Engine, name: str, *, actor: str | None = None, now: dt.datetime | None = None
) -> RetentionPolicy:
    """Delete the policy ``name``; records it decided fall to the next matching policy.

    Raises
    ------
    RetentionError
        No policy has that name.
    """
    at = _now(now)
    with storage_errors(f"removing retention policy {name}"), engine.begin() as conn:
        row = conn.execute(
            sa.delete(retention_policies)
            .where(retention_policies.c.name == name)
            .returning(*retention_policies.c)
        ).first()
        if row is None:
            raise RetentionError(f"no retention policy is named {name!r}")
        policy = _policy_from_row(row)
        _log_change(
            conn,
            at=at,
            actor=actor or default_actor(),
            action="remove",
            kind=POLICY,
            name=name,
            details={"before": policy.describe()},
        )
    return policy


# -- legal holds


@dataclass(frozen=True, slots=True)
class LegalHold:
    """Records a hold covers are never pruned while it is in force."""

    name: str
    reason: str
    team_id: str | None = None
    channel_id: str | None = None
    user_id: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    created_at: dt.datetime | None = None
    created_by: str | None = None
    released_at: dt.datetime | None = None
    released_by: str | None = None

    @property
    def in_force(self) -> bool:
        return self.released_at is None

    def covers(self, columns: Mapping[str, Any], received_at: dt.datetime) -> bool:
        """Whether this hold, if in force, covers a record."""
        return (
            self.in_force
            and all(
                getattr(self, k) is None or columns.get(k) == getattr(self, k)
                for k in statements.HOLD_MATCH_COLUMNS
            )
            and (self.since is None or received_at >= self.since)
            and (self.until is None or received_at < self.until)
        )

    def describe(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        return {
            k: (v.isoformat() if isinstance(v, dt.datetime) else v)
            for k, v in fields.items()
            if v is not None
        }


def _hold_from_row(row: Any) -> LegalHold:
    return LegalHold(**{c.name: getattr(row, c.name) for c in legal_holds.c})


def add_hold(
    engine: Engine,
    name: str,
    *,
    reason: str,
    team_id: str | None = None,
    channel_id: str | None = None,
    user_id: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    actor: str | None = None,
    now: dt.datetime | None = None,
) -> LegalHold:
    """Place a legal hold. With no match fields and no bounds it holds every record.

    Raises
    ------
    RetentionError
        The name is taken (released holds keep theirs), the reason is empty,
        or ``since`` is not before ``until``.
    """
    _check_name("hold", name)
    if not isinstance(reason, str) or not reason.strip():
        raise RetentionError("a legal hold needs a reason")
    for label, bound in (("since", since), ("until", until)):
        if bound is not None and bound.tzinfo is None:
            raise RetentionError(f"{label} must be timezone-aware")
    if since is not None and until is not None and since >= until:
        raise RetentionError("since must be before until")
    at = _now(now)
    hold = LegalHold(
        name=name,
        reason=reason,
        team_id=_check_value("team_id", team_id),
        channel_id=_check_value("channel_id", channel_id),
        user_id=_check_value("user_id", user_id),
        since=since.astimezone(UTC) if since else None,
        until=until.astimezone(UTC) if until else None,
        created_at=at,
        created_by=actor or default_actor(),
    )
    with storage_errors(f"adding legal hold {name}"), engine.begin() as conn:
        existing = conn.execute(
            sa.select(legal_holds.c.released_at).where(legal_holds.c.name == name)
        ).first()
        if existing is not None:
            state = "in force" if existing.released_at is None else "released"
            raise RetentionError(f"a legal hold named {name!r} already exists ({state})")
        conn.execute(sa.insert(legal_holds).values(**dataclasses.asdict(hold)))
        _log_change(
            conn,
            at=at,
            actor=hold.created_by or "",
            action="add",
            kind=HOLD,
            name=name,
            details=hold.describe(),
        )
    return hold


def list_holds(engine: Engine, *, include_released: bool = True) -> list[LegalHold]:
    """Holds in order of creation; released ones too unless ``include_released`` is false."""
    stmt = sa.select(legal_holds).order_by(legal_holds.c.created_at, legal_holds.c.name)
    if not include_released:
        stmt = stmt.where(legal_holds.c.released_at.is_(None))
    with storage_errors("listing legal holds"), read_only(engine) as conn:
        return [_hold_from_row(r) for r in conn.execute(stmt).all()]


def release_hold(
    engine: Engine, name: str, *, actor: str | None = None, now: dt.datetime | None = None
) -> LegalHold:
    """Release a hold: its records are subject to retention again. The row stays.

    Raises
    ------
    RetentionError
        No hold has that name, or it is already released.
    """
    at = _now(now)
    actor = actor or default_actor()
    with storage_errors(f"releasing legal hold {name}"), engine.begin() as conn:
        row = conn.execute(
            sa.select(legal_holds).where(legal_holds.c.name == name).with_for_update()
        ).first()
        if row is None:
            raise RetentionError(f"no legal hold is named {name!r}")
        if row.released_at is not None:
            raise RetentionError(
                f"legal hold {name!r} was already released at {row.released_at.isoformat()}"
            )
        conn.execute(
            sa.update(legal_holds)
            .where(legal_holds.c.name == name)
            .values(released_at=at, released_by=actor)
        )
        _log_change(
            conn,
            at=at,
            actor=actor,
            action="release",
            kind=HOLD,
            name=name,
            details={"released_at": at.isoformat()},
        )
    return dataclasses.replace(_hold_from_row(row), released_at=at, released_by=actor)


# -- logs


@dataclass(frozen=True, slots=True)
class ChangeLogEntry:
    id: int
    at: dt.datetime
    actor: str
    action: str
    object_kind: str
    object_name: str
    details: dict[str, Any] | None


def read_change_log(engine: Engine, *, limit: int | None = None) -> list[ChangeLogEntry]:
    """Changes to policies and holds, oldest first (the newest ``limit`` when given)."""
    stmt = sa.select(change_log).order_by(change_log.c.id.desc())
    if limit is not None:
        stmt = stmt.limit(limit)
    with storage_errors("reading the change log"), read_only(engine) as conn:
        rows = conn.execute(stmt).all()
    return [ChangeLogEntry(**r._mapping) for r in reversed(rows)]


# -- pruning


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
        run_id = conn.execute(
            sa.insert(prune_runs).values(**row).returning(prune_runs.c.id)
        ).scalar_one()
    return int(run_id)


def _finish_run(engine: Engine, run_id: int, report: PruneReport) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(prune_runs)
            .where(prune_runs.c.id == run_id)
            .values(
                finished_at=report.finished_at,
                status=report.status,
                cutoffs={k: v.isoformat() for k, v in report.cutoffs.items()},
                deleted_per_policy=report.deleted,
                deleted_total=report.deleted_total,
                held_count=report.held,
                skipped_count=report.skipped,
                error=report.error,
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
    started = _now(now)
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
        cutoff = report.started_at - policy.keep
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
        after: tuple[dt.datetime, str] | None = None
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
    after: tuple[dt.datetime, str] | None,
) -> tuple[int, tuple[dt.datetime, str] | None]:
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
    stmt = sa.select(prune_runs).order_by(prune_runs.c.id.desc())
    if limit is not None:
        stmt = stmt.limit(limit)
    with storage_errors("reading the prune log"), read_only(engine) as conn:
        rows = conn.execute(stmt).all()
    return [PruneRun(**r._mapping) for r in reversed(rows)]
