"""The recorder's own logs, sealed with the envelopes: which logs, and each entry's digest.

A seal block covers, beside its envelopes, every log entry that became final
since the previous block: each finished prune run with the ``pruned_envelopes``
rows it wrote, each erased envelope that is no longer deferred (with the
request that erased it), and each complete archive manifest row. The entry's digest goes into
``sealed_log_entries`` and the digest of the block's entries into the block's
header (:func:`logs_digest`), so an owner who rewrites the deletion log after
it was sealed breaks the entry's digest, and one who also rewrites the seal
tables breaks the chain or an anchored digest.

Another log (erasures, archive manifests) plugs in by implementing
:class:`CoveredLog` and joining :data:`COVERED_LOGS`; :mod:`recorder.seal`
needs no change for it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recorder import statements
from recorder.engine import is_sqlite
from recorder.schema import (
    archive_files,
    erased_envelopes,
    erasures,
    prune_runs,
    pruned_envelopes,
    sealed_log_entries,
)
from recorder.timespec import timestamp_text

_DIGEST_VERSION = 1
_FETCH_CHUNK = 5_000


@dataclass(frozen=True, slots=True, order=True)
class LogEntry:
    """One sealed (or to be sealed) log entry."""

    log_name: str
    entry_key: str
    digest: str


class CoveredLog(Protocol):
    """A log whose final entries are sealed with the next block."""

    name: str

    def unsealed(self, conn: Connection) -> list[LogEntry]:
        """Entries that are final (will not change any more) and not sealed yet."""
        ...

    def current(self, conn: Connection, keys: Sequence[str]) -> dict[str, str]:
        """The digest each entry has now, by key; an entry that is gone is left out."""
        ...


#: What json.dumps copies as is: printable ASCII but the quote and the backslash.
JSON_PLAIN = re.compile(r"[ !#-\[\]-~]*\Z")


def _line(values: Iterable[Any]) -> bytes:
    """One entry's line of a log digest: its values as a JSON array (sorted keys, ASCII)."""
    normal = [timestamp_text(v) if isinstance(v, dt.datetime) else v for v in values]
    # Deletion log rows (a line each, millions of them) are plain strings and
    # NULLs: spelled here as json.dumps would, in half the time.
    parts = []
    for value in normal:
        if value is None:
            parts.append("null")
        elif type(value) is str and JSON_PLAIN.match(value):
            parts.append(f'"{value}"')
        else:
            return json.dumps(normal, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    return ("[" + ",".join(parts) + "]\n").encode()


class PruneRunsLog:
    """Each finished prune run (any status but ``running``) with every row it logged."""

    name = "prune_runs"
    _RUN_COLUMNS = (
        "id",
        "started_at",
        "finished_at",
        "status",
        "dry_run",
        "cutoffs",
        "policies",
        "deleted_per_policy",
        "deleted_total",
        "held_count",
        "skipped_count",
        "error",
        "actor",
        "host",
    )
    _ROW_COLUMNS = (
        "envelope_id",
        "envelope_sha256",
        "received_at",
        "policy_name",
        "team_id",
        "channel_id",
        "user_id",
        "pruned_at",
    )
    _ROW_TIMESTAMPS = ("received_at", "pruned_at")

    def __init__(self, *, server_side: bool = True, chunk_size: int = _FETCH_CHUNK) -> None:
        # server_side False: every row's line spelled in Python (the reference
        # the server-rendered lines are tested against).
        self.server_side = server_side
        self.chunk_size = chunk_size

    def unsealed(self, conn: Connection) -> list[LogEntry]:
        sealed = sa.exists().where(
            sealed_log_entries.c.log_name == self.name,
            sealed_log_entries.c.entry_key == sa.cast(prune_runs.c.id, sa.Text),
        )
        stmt = (
            sa.select(*(prune_runs.c[name] for name in self._RUN_COLUMNS))
            .where(prune_runs.c.status != "running", ~sealed)
            .order_by(prune_runs.c.id)
        )
        return [
            LogEntry(self.name, str(run.id), self._digest(conn, run))
            for run in conn.execute(stmt).all()
        ]

    def current(self, conn: Connection, keys: Sequence[str]) -> dict[str, str]:
        ids = [int(key) for key in keys if key.isdigit()]
        found: dict[str, str] = {}
        for start in range(0, len(ids), _FETCH_CHUNK):
            stmt = sa.select(*(prune_runs.c[name] for name in self._RUN_COLUMNS)).where(
                prune_runs.c.id.in_(ids[start : start + _FETCH_CHUNK])
            )
            for run in conn.execute(stmt).all():
                found[str(run.id)] = self._digest(conn, run)
        return found

    def _digest(self, conn: Connection, run: Any) -> str:
        digest = hashlib.sha256()
        digest.update(_line([_DIGEST_VERSION, self.name]))
        digest.update(_line(getattr(run, name) for name in self._RUN_COLUMNS))
        if self.server_side and not is_sqlite(conn):
            return self._digest_server_side(conn, run.id, digest)
        after: str | None = None
        while True:
            stmt = sa.select(*(pruned_envelopes.c[name] for name in self._ROW_COLUMNS)).where(
                pruned_envelopes.c.prune_run_id == run.id
            )
            if after is not None:
                stmt = stmt.where(pruned_envelopes.c.envelope_id > after)
            rows = conn.execute(
                stmt.order_by(pruned_envelopes.c.envelope_id).limit(_FETCH_CHUNK)
            ).all()
            for row in rows:
                digest.update(_line(row))
            if len(rows) < _FETCH_CHUNK:
                return digest.hexdigest()
            after = rows[-1].envelope_id

    def _digest_server_side(self, conn: Connection, run_id: int, digest: Any) -> str:
        """The rest of the digest from lines PostgreSQL renders, Python only hashing them.

        A run can log millions of rows, streamed once (no page re-reads the
        rest) and joined by the server in chunks; when a chunk holds a value
        json.dumps would escape, the run is streamed again row by row and
        those rows are spelled here.
        """
        start = digest.copy()
        params = {"run_id": run_id, "chunk_size": self.chunk_size}
        # Streamed: yield_per on each statement (set on the connection, it would stay).
        chunks = statements.pruned_rows_lines(self._ROW_COLUMNS, self._ROW_TIMESTAMPS, chunked=True)
        for chunk in conn.execute(chunks.execution_options(yield_per=4), params):
            if not chunk.plain:
                break
            digest.update(chunk.lines.encode())
        else:
            return str(digest.hexdigest())
        digest = start
        rows = statements.pruned_rows_lines(self._ROW_COLUMNS, self._ROW_TIMESTAMPS, chunked=False)
        for row in conn.execute(rows.execution_options(yield_per=_FETCH_CHUNK), params):
            digest.update(row.line.encode() if row.line is not None else _line(row[1:]))
        return str(digest.hexdigest())


class _RowLog:
    """A log whose entries are single rows (joined to what they depend on), keyed by columns."""

    name: str
    _key_columns: tuple[sa.ColumnElement[Any], ...]
    _columns: tuple[sa.ColumnElement[Any], ...]

    def _select(self) -> sa.Select[Any]:
        raise NotImplementedError

    def _final(self) -> sa.ColumnElement[bool]:
        raise NotImplementedError

    def _key_text(self) -> sa.ColumnElement[str]:
        key: sa.ColumnElement[str] = sa.cast(self._key_columns[0], sa.Text)
        for column in self._key_columns[1:]:
            key = key.concat("/").concat(sa.cast(column, sa.Text))
        return key

    def _key(self, row: Any) -> str:
        return "/".join(str(row[i]) for i in range(len(self._key_columns)))

    def _digest(self, row: Any) -> str:
        digest = hashlib.sha256()
        digest.update(_line([_DIGEST_VERSION, self.name]))
        digest.update(_line(list(row)))
        return digest.hexdigest()

    def _rows(self, stmt: sa.Select[Any], conn: Connection) -> list[Any]:
        return list(conn.execute(stmt).all())

    def unsealed(self, conn: Connection) -> list[LogEntry]:
        sealed = sa.exists().where(
            sealed_log_entries.c.log_name == self.name,
            sealed_log_entries.c.entry_key == self._key_text(),
        )
        stmt = self._select().where(self._final(), ~sealed)
        return [
            LogEntry(self.name, self._key(row), self._digest(row)) for row in self._rows(stmt, conn)
        ]

    def current(self, conn: Connection, keys: Sequence[str]) -> dict[str, str]:
        wanted = set(keys)
        if not wanted:
            return {}
        found: dict[str, str] = {}
        for row in self._rows(self._select(), conn):
            key = self._key(row)
            if key in wanted:
                found[key] = self._digest(row)
        return found


class ErasuresLog(_RowLog):
    """Each erased, scrubbed or gone envelope (not deferred), with the request that erased it.

    A deferred row still changes (to done when its holds are released), so it
    is sealed once it is final; the request's fields that never change (who,
    why, whose data, what to do) are in every entry's digest.
    """

    name = "erasures"
    _key_columns = (erased_envelopes.c.erasure_id, erased_envelopes.c.envelope_id)
    _columns = (
        erased_envelopes.c.received_at,
        erased_envelopes.c.kind,
        erased_envelopes.c.action,
        erased_envelopes.c.state,
        erased_envelopes.c.held_by,
        erased_envelopes.c.original_sha256,
        erased_envelopes.c.replacement_sha256,
        erased_envelopes.c.erased_at,
        erasures.c.requested_at,
        erasures.c.user_id,
        erasures.c.team_id,
        erasures.c.reason,
        erasures.c.actor,
        erasures.c.db_user,
        erasures.c.subject_action,
        erasures.c.mention_action,
    )

    def _select(self) -> sa.Select[Any]:
        return sa.select(*self._key_columns, *self._columns).select_from(
            erased_envelopes.join(erasures, erasures.c.id == erased_envelopes.c.erasure_id)
        )

    def _final(self) -> sa.ColumnElement[bool]:
        return erased_envelopes.c.state != "deferred"


class ArchiveFilesLog(_RowLog):
    """Each complete archive manifest row: which envelopes a file holds, from which prune.

    The file's own bytes and digest are left out: a logged erasure rewrites
    them (``erase --archive``). What the file holds is fixed by
    ``members_sha256`` (each row's id, time and sealed digest), and
    ``verify --archive`` checks every row's text against its digest.
    """

    name = "archive_files"
    _key_columns = (archive_files.c.archive_id, archive_files.c.file_name)
    _columns = (
        archive_files.c.state,
        archive_files.c.policy_name,
        archive_files.c.prune_run_id,
        archive_files.c.deleted_by_run_id,
        archive_files.c.created_at,
        archive_files.c.written_at,
        archive_files.c.completed_at,
        archive_files.c.row_count,
        archive_files.c.deleted_count,
        archive_files.c.first_received_at,
        archive_files.c.last_received_at,
        archive_files.c.members_sha256,
    )

    def _select(self) -> sa.Select[Any]:
        return sa.select(*self._key_columns, *self._columns)

    def _final(self) -> sa.ColumnElement[bool]:
        return archive_files.c.state == "complete"


#: The logs every seal block covers.
COVERED_LOGS: tuple[CoveredLog, ...] = (PruneRunsLog(), ErasuresLog(), ArchiveFilesLog())


def unsealed_entries(conn: Connection) -> list[LogEntry]:
    """Every covered log's final, unsealed entries, in digest order."""
    return sorted(entry for log in COVERED_LOGS for entry in log.unsealed(conn))


def logs_digest(entries: Sequence[LogEntry]) -> str:
    """What a block header carries for its log entries (sorted by log and key)."""
    digest = hashlib.sha256()
    for entry in sorted(entries):
        digest.update(_line([entry.log_name, entry.entry_key, entry.digest]))
    return digest.hexdigest()


def insert_entries(conn: Connection, block_no: int, entries: Sequence[LogEntry]) -> None:
    if entries:
        conn.execute(
            sa.insert(sealed_log_entries),
            [
                {
                    "block_no": block_no,
                    "log_name": e.log_name,
                    "entry_key": e.entry_key,
                    "digest": e.digest,
                }
                for e in entries
            ],
        )


def entries_by_block(conn: Connection) -> dict[int, list[LogEntry]]:
    """Every sealed log entry, by the block that sealed it."""
    found: dict[int, list[LogEntry]] = {}
    for row in conn.execute(sa.select(sealed_log_entries)):
        found.setdefault(row.block_no, []).append(LogEntry(row.log_name, row.entry_key, row.digest))
    return {block: sorted(entries) for block, entries in found.items()}


@dataclass(frozen=True, slots=True)
class LogProblem:
    """A sealed log entry that changed or went: what verify reports."""

    log_name: str
    entry_key: str
    block_no: int
    detail: str


def check_sealed(conn: Connection, sealed: dict[int, list[LogEntry]]) -> list[LogProblem]:
    """Recompute every sealed entry's digest from its log as it is now."""
    problems: list[LogProblem] = []
    where = {(e.log_name, e.entry_key): block for block, es in sealed.items() for e in es}
    for log in COVERED_LOGS:
        entries = [e for es in sealed.values() for e in es if e.log_name == log.name]
        now = log.current(conn, [e.entry_key for e in entries])
        for entry in entries:
            block = where[(entry.log_name, entry.entry_key)]
            actual = now.get(entry.entry_key)
            if actual is None:
                detail = f"{log.name} entry {entry.entry_key}, sealed in block {block}, is gone"
            elif actual != entry.digest:
                detail = (
                    f"{log.name} entry {entry.entry_key} changed since it was sealed in block "
                    f"{block} (its rows or counts were rewritten)"
                )
            else:
                continue
            problems.append(LogProblem(log.name, entry.entry_key, block, detail))
    unknown = {e.log_name for es in sealed.values() for e in es} - {g.name for g in COVERED_LOGS}
    for name in sorted(unknown):
        problems.append(LogProblem(name, "", 0, f"sealed entries of an unknown log {name!r}"))
    return problems
