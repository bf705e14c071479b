"""Archive before delete: what ``recorder prune --archive DIR`` does for each policy.

For each file: name it in the manifest (``writing``); stream the next
expired, unheld rows of one policy and one time partition into it, a batch
at a time; fsync it, rename it into place, fsync its directory; record its
size, digests, row count and time range (``written``); only then delete its
envelopes, in batches, each batch re-checked (still expired, not held) and
logged in ``pruned_envelopes`` in the deleting transaction, the last one
marking the file ``complete``.

A crash anywhere leaves a state the next run finishes (:meth:`Archiver.recover`,
first thing in every archiving run): a ``written`` file has its remaining
envelopes deleted (ids read back from the file, whose digest must still
match); a ``writing`` file found complete at its final name is adopted the
same way; one that is not there is ``abandoned`` (its temporary file
removed), and its envelopes, never deleted, go into a later file. So no
envelope is deleted before it is in a complete, fsynced file, and none is
written to two files by a rerun.
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recorder import failpoints, statements
from recorder.archive import deps, manifest
from recorder.archive.errors import ArchiveError
from recorder.archive.files import ParquetFile, chunked, file_sha256, read_ids, read_stats
from recorder.archive.layout import (
    MARKER,
    PARTITIONS,
    ArchiveDir,
    new_file_name,
    open_archive,
    partition_of,
    remove_quietly,
)
from recorder.engine import is_sqlite, read_only

DEFAULT_FILE_ROWS = 100_000
MAX_FILE_ROWS = 10_000_000
UTC = dt.timezone.utc

Conditions = list[sa.ColumnElement[bool]]


def _now() -> dt.datetime:
    return dt.datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ArchiveOptions:
    """Where and how ``prune`` archives before it deletes."""

    directory: str | Path | None
    """The archive directory (created, with its marker, on first use). None, for
    :func:`recorder.retention.prune`: each policy's own ``archive_dir``, with these
    options' file size and partitioning."""
    file_rows: int = DEFAULT_FILE_ROWS
    """At most this many envelopes per Parquet file."""
    partition: str = "month"
    """``month`` or ``day``: files never span two UTC months (days) of received_at."""

    def __post_init__(self) -> None:
        if isinstance(self.file_rows, bool) or not 1 <= self.file_rows <= MAX_FILE_ROWS:
            raise ArchiveError(f"archive file rows must be between 1 and {MAX_FILE_ROWS}")
        if self.partition not in PARTITIONS:
            raise ArchiveError(
                f"unknown archive partition {self.partition!r}; choose one of {', '.join(PARTITIONS)}"
            )
        # Before any run starts: a missing extra is an error, not a failed run.
        if self.directory is not None:
            deps.pyarrow()

    @property
    def path(self) -> Path:
        """The directory as an absolute path (what tells two archives apart in a run)."""
        if self.directory is None:
            raise ArchiveError("no archive directory was given")
        return Path(self.directory).expanduser().absolute()


@dataclass(slots=True)
class ArchiveProgress:
    files: list[str] = field(default_factory=list)
    """Files completed by this run (written and their envelopes deleted)."""
    archived: int = 0
    """Envelopes written to those files."""
    recovered: list[str] = field(default_factory=list)
    """Files an earlier, interrupted run left, that this run finished."""
    abandoned: list[str] = field(default_factory=list)
    """Files an earlier run named but never completed (nothing of them was deleted)."""


class Archiver:
    """Archive-then-delete for one prune run (made by :func:`recorder.retention.prune`)."""

    def __init__(
        self,
        engine: Engine,
        options: ArchiveOptions,
        *,
        run_id: int,
        progress: ArchiveProgress | None = None,
    ) -> None:
        self.engine = engine
        self.options = options
        self.run_id = run_id
        self.directory = options.path
        # Made on first use: a run with nothing to archive leaves no trace.
        self._archive = open_archive(self.directory) if (self.directory / MARKER).exists() else None
        self.progress = progress if progress is not None else ArchiveProgress()
        """Shared by every archiver of a run (one per archive directory)."""
        self._sequence = 0

    @property
    def archive(self) -> ArchiveDir:
        if self._archive is None:
            self._archive = open_archive(self.directory, create=True)
        return self._archive

    @property
    def archive_id(self) -> str | None:
        """The archive's id, or None while its directory has no archive yet."""
        return None if self._archive is None else self._archive.archive_id

    # -- finishing what an interrupted run left

    def recover_entry(
        self,
        entry: manifest.ManifestEntry,
        plans: Mapping[str, Conditions],
        batch_size: int,
        on_deleted: Callable[[str, int], None],
    ) -> None:
        """Finish one file of this archive that an interrupted run left (see :func:`recover`)."""
        path = self.archive.file_path(entry.file_name)
        if entry.state == manifest.WRITING:
            if not path.exists():
                remove_quietly(self.archive.temp_path(entry.file_name))
                manifest.mark_abandoned(
                    self.engine,
                    archive_id=entry.archive_id,
                    file_name=entry.file_name,
                    at=_now(),
                )
                self.progress.abandoned.append(entry.file_name)
                return
            # Renamed into place, so complete and fsynced: adopt it.
            manifest.mark_written(
                self.engine,
                archive_id=entry.archive_id,
                file_name=entry.file_name,
                stats=read_stats(path),
                at=_now(),
            )
        elif not path.exists():
            raise ArchiveError(
                f"{path} is in the manifest as written but is not there; "
                "its envelopes are still in the database: restore the file and run again"
            )
        else:
            _, digest = file_sha256(path)
            if digest != entry.file_sha256:
                raise ArchiveError(
                    f"{path} changed since it was written (SHA-256 {digest}, "
                    f"manifest {entry.file_sha256}); its envelopes were not deleted"
                )
        conditions = plans.get(entry.policy_name)
        deleted = self._delete_file(
            entry.file_name, entry.policy_name, conditions, read_ids(path), batch_size
        )
        if deleted:
            on_deleted(entry.policy_name, deleted)
        self.progress.recovered.append(entry.file_name)

    # -- archiving a policy's expired envelopes

    def prune_policy(
        self,
        policy_name: str,
        conditions: Conditions,
        *,
        batch_size: int,
        deadline: float | None,
        on_deleted: Callable[[str, int], None],
    ) -> bool:
        """Archive and delete what ``conditions`` select; True when the time budget ran out."""
        after: tuple[dt.datetime, str] | None = None
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return True
            rows = self._list(conditions, min(batch_size, self.options.file_rows), after, None)
            if not rows:
                return False
            partition_dir, end = partition_of(rows[0].received_at, self.options.partition)
            rows = [r for r in rows if r.received_at < end]
            after = self._archive_file(
                policy_name, conditions, rows, partition_dir, end, batch_size, deadline, on_deleted
            )

    def _list(
        self,
        conditions: Conditions,
        limit: int,
        after: tuple[dt.datetime, str] | None,
        before: dt.datetime | None,
    ) -> list[Any]:
        stmt = statements.select_archive_batch(
            conditions, batch_size=limit, after=after, before=before
        )
        with read_only(self.engine) as conn:
            return list(conn.execute(stmt).all())

    def _archive_file(
        self,
        policy_name: str,
        conditions: Conditions,
        rows: list[Any],
        partition_dir: str,
        end: dt.datetime,
        batch_size: int,
        deadline: float | None,
        on_deleted: Callable[[str, int], None],
    ) -> tuple[dt.datetime, str]:
        self._sequence += 1
        name = new_file_name(partition_dir, self.run_id, self._sequence)
        manifest.begin(
            self.engine,
            archive_id=self.archive.archive_id,
            file_name=name,
            policy_name=policy_name,
            prune_run_id=self.run_id,
            at=_now(),
        )
        failpoints.reach("archive.file-begun")
        ids: list[str] = []
        file = ParquetFile(
            self.archive,
            name,
            {
                "archive_id": self.archive.archive_id,
                "policy_name": policy_name,
                "prune_run_id": str(self.run_id),
            },
        )
        ahead = _ReadAhead(
            lambda limit, key: self._list(conditions, limit, key, end),
            after=(rows[-1].received_at, rows[-1].envelope_id),
            room=self.options.file_rows - len(rows),
            batch_size=batch_size,
        )
        try:
            while True:
                file.write(rows)
                ids.extend(r.envelope_id for r in rows)
                after: tuple[dt.datetime, str] = (rows[-1].received_at, rows[-1].envelope_id)
                failpoints.reach("archive.rows-written")
                room = self.options.file_rows - len(ids)
                if room <= 0 or (deadline is not None and time.monotonic() >= deadline):
                    break
                rows = ahead.next()
                if not rows:
                    break
            stats = file.commit()
        except BaseException:
            file.abort()
            raise
        finally:
            ahead.close()
        failpoints.reach("archive.file-renamed")
        manifest.mark_written(
            self.engine,
            archive_id=self.archive.archive_id,
            file_name=name,
            stats=stats,
            at=_now(),
        )
        failpoints.reach("archive.file-written")
        self.progress.archived += stats.row_count
        self._delete_file(name, policy_name, conditions, ids, batch_size, on_deleted)
        self.progress.files.append(name)
        failpoints.reach("archive.file-complete")
        return after

    # -- deleting what a complete file holds

    def _delete_file(
        self,
        file_name: str,
        policy_name: str,
        conditions: Conditions | None,
        ids: list[str],
        batch_size: int,
        on_deleted: Callable[[str, int], None] | None = None,
    ) -> int:
        """Delete (re-checked) and log the file's envelopes in batches; the last marks it complete.

        With no ``conditions`` (its policy was removed since), nothing is
        deleted and the file is marked complete with a deleted count of 0.
        """
        total = 0
        batches = list(chunked(ids, batch_size)) if conditions is not None else []
        for index, batch in enumerate(batches):
            last = index == len(batches) - 1
            deleted = self._delete_batch(
                file_name, policy_name, conditions or [], list(batch), total if last else None
            )
            total += deleted
            if on_deleted is not None:
                on_deleted(policy_name, deleted)
            failpoints.reach("archive.batch-deleted")
        if not batches:
            with self.engine.begin() as conn:
                manifest.mark_complete(
                    conn,
                    archive_id=self.archive.archive_id,
                    file_name=file_name,
                    deleted_count=0,
                    run_id=self.run_id,
                    at=_now(),
                )
        return total

    def _delete_batch(
        self,
        file_name: str,
        policy_name: str,
        conditions: Conditions,
        ids: list[str],
        complete_after: int | None,
    ) -> int:
        with self.engine.begin() as conn:
            if is_sqlite(conn):
                params: dict[str, Any] = {"ids": json.dumps(ids)}
                conn.execute(
                    statements.log_archived_sqlite(
                        conditions,
                        prune_run_id=self.run_id,
                        policy_name=policy_name,
                        pruned_at=_now(),
                    ),
                    params,
                )
                deleted = conn.execute(
                    statements.delete_archived_sqlite(conditions), params
                ).rowcount
            else:
                # The database-side function re-checks each id against the
                # run's policy and the holds, and that the file is written,
                # then deletes, logs and counts it.
                deleted = len(
                    conn.execute(
                        statements.prune_delete_archived(
                            run_id=self.run_id,
                            policy_name=policy_name,
                            archive_id=self.archive.archive_id,
                            file_name=file_name,
                            envelope_ids=ids,
                        )
                    ).all()
                )
            if complete_after is not None:
                manifest.mark_complete(
                    conn,
                    archive_id=self.archive.archive_id,
                    file_name=file_name,
                    deleted_count=complete_after + int(deleted),
                    run_id=self.run_id,
                    at=_now(),
                )
        return int(deleted)


def recover(
    engine: Engine,
    archivers: list[Archiver],
    targets: Mapping[str, Archiver],
    plans: Mapping[str, Conditions],
    batch_size: int,
    on_deleted: Callable[[str, int], None],
) -> None:
    """Finish every file an interrupted run left, each by the archiver of its archive.

    A file's policy must archive to that same archive in this run (so what a
    run removes under a policy is in one archive, which ``recorder verify
    --archive`` relies on); a file of a policy the run no longer has is
    finished without deleting anything.

    Raises
    ------
    ArchiveError
        An archive this run does not use (or does not use for that file's
        policy) has unfinished files: run prune with that directory first;
        or a written file's bytes changed since.
    """
    by_id = {a.archive_id: a for a in archivers if a.archive_id is not None}
    for entry in manifest.entries(engine, states=manifest.UNFINISHED):
        archiver = by_id.get(entry.archive_id)
        target = targets.get(entry.policy_name)
        if entry.policy_name in plans and target is not None:
            archiver = archiver if target is archiver else None
        elif entry.policy_name in plans:
            archiver = None
        if archiver is None:
            where = by_id[entry.archive_id].directory if entry.archive_id in by_id else None
            raise ArchiveError(
                f"archive {entry.archive_id}{f' ({where})' if where else ''} has an unfinished "
                f"file ({entry.file_name}) of policy {entry.policy_name}, which this run does not "
                "archive there; run `recorder prune --archive` with that archive's directory first"
            )
        archiver.recover_entry(entry, plans, batch_size, on_deleted)


class _ReadAhead:
    """Lists a file's next batch on a thread of its own while the caller writes this one.

    The database query (mostly waiting on the server and the network) and
    the Arrow conversion and compression (CPU in this process) overlap. At
    most one batch waits; the keyset walks on from the last row listed, so
    what the caller takes is exactly what a sequential loop would list.
    """

    _END: Final = None

    def __init__(
        self,
        list_batch: Callable[[int, tuple[dt.datetime, str]], list[Any]],
        *,
        after: tuple[dt.datetime, str],
        room: int,
        batch_size: int,
    ) -> None:
        self._list = list_batch
        self._after = after
        self._room = room
        self._batch_size = batch_size
        self._queue: queue.Queue[list[Any] | BaseException | None] = queue.Queue(1)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder-archive-read", daemon=True)
        if room > 0:
            self._thread.start()
        else:
            self._queue.put(self._END)

    def _run(self) -> None:
        try:
            while self._room > 0 and not self._closed.is_set():
                rows = self._list(min(self._batch_size, self._room), self._after)
                if not rows:
                    break
                self._room -= len(rows)
                self._after = (rows[-1].received_at, rows[-1].envelope_id)
                self._put(rows)
        except BaseException as exc:  # handed to the caller's thread
            self._put(exc)
            return
        self._put(self._END)

    def _put(self, item: list[Any] | BaseException | None) -> None:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next(self) -> list[Any]:
        """The next batch, or an empty list when there is none."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            self._queue.put(None)  # stays at the end
            return []
        return item

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join()
