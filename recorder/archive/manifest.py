"""The archive manifest: one ``archive_files`` row per Parquet file, through its life.

``writing`` (committed before the file is opened, so any file found at its
final name has a row) -> ``written`` (complete and fsynced, with its size,
digests, row count and time range) -> ``complete`` (its envelopes deleted
and logged, set in the last deleting transaction). A file that never got
to ``written`` and is not on disk becomes ``abandoned``: its envelopes were
never deleted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from recorder.archive.files import FileStats
from recorder.engine import read_only, storage_errors
from recorder.schema import archive_files

WRITING = "writing"
WRITTEN = "written"
COMPLETE = "complete"
ABANDONED = "abandoned"
UNFINISHED = (WRITING, WRITTEN)


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One row of ``archive_files``."""

    archive_id: str
    file_name: str
    state: str
    policy_name: str
    prune_run_id: int
    deleted_by_run_id: int | None
    created_at: dt.datetime
    written_at: dt.datetime | None
    completed_at: dt.datetime | None
    row_count: int | None
    deleted_count: int | None
    first_received_at: dt.datetime | None
    last_received_at: dt.datetime | None
    file_bytes: int | None
    file_sha256: str | None
    members_sha256: str | None


def _key(archive_id: str, file_name: str) -> list[sa.ColumnElement[bool]]:
    return [archive_files.c.archive_id == archive_id, archive_files.c.file_name == file_name]


def begin(
    engine: Engine,
    *,
    archive_id: str,
    file_name: str,
    policy_name: str,
    prune_run_id: int,
    at: dt.datetime,
) -> None:
    """Name a file before it is opened (state ``writing``)."""
    with storage_errors("recording an archive file"), engine.begin() as conn:
        conn.execute(
            sa.insert(archive_files).values(
                archive_id=archive_id,
                file_name=file_name,
                state=WRITING,
                policy_name=policy_name,
                prune_run_id=prune_run_id,
                created_at=at,
            )
        )


def mark_written(
    engine: Engine, *, archive_id: str, file_name: str, stats: FileStats, at: dt.datetime
) -> None:
    with storage_errors("recording an archive file"), engine.begin() as conn:
        conn.execute(
            sa.update(archive_files)
            .where(*_key(archive_id, file_name))
            .values(
                state=WRITTEN,
                written_at=at,
                row_count=stats.row_count,
                first_received_at=stats.first_received_at,
                last_received_at=stats.last_received_at,
                file_bytes=stats.file_bytes,
                file_sha256=stats.file_sha256,
                members_sha256=stats.members_sha256,
            )
        )


def mark_complete(
    conn: Connection,
    *,
    archive_id: str,
    file_name: str,
    deleted_count: int,
    run_id: int,
    at: dt.datetime,
) -> None:
    """Inside the transaction that deletes the file's last envelopes."""
    conn.execute(
        sa.update(archive_files)
        .where(*_key(archive_id, file_name))
        .values(
            state=COMPLETE, completed_at=at, deleted_count=deleted_count, deleted_by_run_id=run_id
        )
    )


def mark_abandoned(engine: Engine, *, archive_id: str, file_name: str, at: dt.datetime) -> None:
    with storage_errors("recording an archive file"), engine.begin() as conn:
        conn.execute(
            sa.update(archive_files)
            .where(*_key(archive_id, file_name), archive_files.c.state == WRITING)
            .values(state=ABANDONED, completed_at=at)
        )


def entries(
    engine: Engine, *, archive_id: str | None = None, states: tuple[str, ...] | None = None
) -> list[ManifestEntry]:
    """Manifest rows (of one archive, in some states), oldest first."""
    stmt = sa.select(archive_files).order_by(archive_files.c.created_at, archive_files.c.file_name)
    if archive_id is not None:
        stmt = stmt.where(archive_files.c.archive_id == archive_id)
    if states is not None:
        stmt = stmt.where(archive_files.c.state.in_(states))
    with storage_errors("reading the archive manifest"), read_only(engine) as conn:
        return [ManifestEntry(**row._mapping) for row in conn.execute(stmt)]
