"""Erasure in the cold archive: Parquet files ``recorder prune --archive`` wrote.

Archived envelopes were pruned from the database, but the recorder wrote
them, so an erasure covers them too: each complete file of the archive
(its manifest rows) is read, the user's rows get the same tombstone (and
``user_id`` cleared) and the rows that mention them the same scrub as in the
database, and the file is rewritten: written under a temporary name and
fsynced, then the manifest gets its new size and SHA-256 and each changed
envelope an ``archived`` row in ``erased_envelopes`` (one transaction), then
the file is renamed into place. A crash before the rename leaves the old
file, whose digest no longer matches the manifest: running the erasure
again rewrites it and puts the two back in step. Each row keeps its
``envelope_sha256`` (the original's), so the manifest's members digest does
not change.

Rows a legal hold in force covers are left as they are and counted; run the
erasure again once the hold is released (archived envelopes are not in the
database, so ``--resume`` cannot see them).

Finding an archived user's rows reads the files: they hold no index.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recorder.archive import deps, manifest
from recorder.archive.files import file_sha256
from recorder.archive.layout import fsync_directory, open_archive, remove_quietly
from recorder.engine import is_sqlite, storage_errors
from recorder.erasure import ErasureReport, _covering, _holds_in_force
from recorder.holds import LegalHold
from recorder.schema import archive_files, erased_envelopes
from recorder.tombstone import PERSONAL_COLUMNS, mentions, scrub, text_sha256, tombstone_text


def _author(text: str) -> str | None:
    """The message author the ``message_author`` index would hold for this text."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    payload = data.get("payload") if isinstance(data, Mapping) else None
    if not isinstance(payload, Mapping):
        return None
    message = payload.get("message")
    if isinstance(message, Mapping) and isinstance(message.get("user"), str):
        return str(message["user"])
    event = payload.get("event")
    attachments = event.get("attachments") if isinstance(event, Mapping) else None
    if isinstance(attachments, list) and attachments and isinstance(attachments[0], Mapping):
        author = attachments[0].get("author_id")
        return author if isinstance(author, str) else None
    return None


def _kind(
    row: Mapping[str, Any], user_id: str, team_id: str | None, subjects: str, mentions_: str
) -> tuple[str, str] | None:
    """``(kind, action)`` for an archived row the erasure touches, else None."""
    if team_id is not None and row.get("team_id") != team_id:
        return None
    text = row["envelope_text"]
    if user_id not in text:
        return None
    if row.get("user_id") == user_id or _author(text) == user_id:
        return ("subject", "erase") if subjects == "erase" else None
    if mentions_ != "skip" and mentions(text, user_id):
        return ("mention", mentions_)
    return None


def _rewrite_row(
    row: dict[str, Any], kind_action: tuple[str, str], erasure_id: int, user_id: str
) -> dict[str, Any]:
    kind, action = kind_action
    text = row["envelope_text"]
    original = text_sha256(text)
    if action == "erase":
        row["envelope_text"] = tombstone_text(
            envelope_id=row["envelope_id"],
            envelope_type=row.get("envelope_type"),
            columns=row,
            erasure_id=erasure_id,
            original_sha256=original,
        )
        for name in PERSONAL_COLUMNS:
            row[name] = None
    else:
        row["envelope_text"] = scrub(text, user_id)
    return {
        "envelope_id": row["envelope_id"],
        "received_at": row["received_at"].isoformat(),
        "kind": kind,
        "action": action,
        "original_sha256": original,
        "replacement_sha256": text_sha256(row["envelope_text"]),
    }


def erase_archive(
    engine: Engine,
    directory: str | os.PathLike[str],
    *,
    erasure_id: int,
    user_id: str,
    team_id: str | None,
    subjects: str,
    mentions: str,
    report: ErasureReport,
) -> None:
    """Erase in every complete file of the archive at ``directory`` (see the module doc)."""
    archive = open_archive(directory)
    _, pq = deps.pyarrow()
    with storage_errors("reading legal holds"), engine.connect() as conn:
        holds = _holds_in_force(conn)
    for entry in manifest.entries(
        engine, archive_id=archive.archive_id, states=(manifest.COMPLETE,)
    ):
        path = archive.file_path(entry.file_name)
        if not path.exists():
            continue
        table = pq.read_table(str(path))
        rows: list[dict[str, Any]] = table.to_pylist()
        logged = _erase_rows(rows, holds, erasure_id, user_id, team_id, subjects, mentions, report)
        if not logged:
            continue
        temp = archive.temp_path(entry.file_name)
        pa, _ = deps.pyarrow()
        try:
            pq.write_table(
                pa.Table.from_pylist(rows, schema=table.schema),
                str(temp),
                compression="zstd",
                write_statistics=True,
            )
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
            size, digest = file_sha256(temp)
            _log(engine, erasure_id, archive.archive_id, entry.file_name, size, digest, logged)
            os.replace(temp, path)
            fsync_directory(path.parent)
        finally:
            remove_quietly(temp)
        report.archived += len(logged)


def _erase_rows(
    rows: list[dict[str, Any]],
    holds: list[LegalHold],
    erasure_id: int,
    user_id: str,
    team_id: str | None,
    subjects: str,
    mentions: str,
    report: ErasureReport,
) -> list[dict[str, Any]]:
    logged = []
    for row in rows:
        found = _kind(row, user_id, team_id, subjects, mentions)
        if found is None:
            continue
        if _covering(holds, _Row(row)):
            report.archived_held += 1
            continue
        logged.append(_rewrite_row(row, found, erasure_id, user_id))
    return logged


class _Row:
    """An archived row with the attributes the hold rule reads."""

    def __init__(self, row: Mapping[str, Any]) -> None:
        self._mapping = row
        self.received_at: dt.datetime = row["received_at"]


def _log(
    engine: Engine,
    erasure_id: int,
    archive_id: str,
    file_name: str,
    size: int,
    digest: str,
    logged: list[dict[str, Any]],
) -> None:
    with storage_errors(f"logging the erasure in archive file {file_name}"), engine.begin() as conn:
        if not is_sqlite(conn):
            conn.execute(
                sa.text(
                    "SELECT recorder_erasure_log_archived(:id, :archive_id, :file_name, :size, "
                    ":digest, CAST(:entries AS jsonb))"
                ),
                {
                    "id": erasure_id,
                    "archive_id": archive_id,
                    "file_name": file_name,
                    "size": size,
                    "digest": digest,
                    "entries": json.dumps(logged),
                },
            )
            return
        conn.execute(
            sa.update(archive_files)
            .where(archive_files.c.archive_id == archive_id, archive_files.c.file_name == file_name)
            .values(file_bytes=size, file_sha256=digest)
        )
        conn.execute(
            sa.insert(erased_envelopes).prefix_with("OR IGNORE"),
            [
                {
                    "erasure_id": erasure_id,
                    "envelope_id": e["envelope_id"],
                    "received_at": dt.datetime.fromisoformat(e["received_at"]),
                    "kind": e["kind"],
                    "action": e["action"],
                    "state": "archived",
                    "original_sha256": e["original_sha256"],
                    "replacement_sha256": e["replacement_sha256"],
                    "erased_at": dt.datetime.now(dt.timezone.utc),
                }
                for e in logged
            ],
        )
