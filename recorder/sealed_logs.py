"""The recorder's own logs, sealed with the envelopes: which logs, and each entry's digest.

A seal block covers, beside its envelopes, every log entry that became final
since the previous block: today each finished prune run with the
``pruned_envelopes`` rows it wrote. The entry's digest goes into
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recorder.schema import prune_runs, pruned_envelopes, sealed_log_entries

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


def _timestamp(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _line(values: Iterable[Any]) -> bytes:
    normal = [_timestamp(v) if isinstance(v, dt.datetime) else v for v in values]
    return json.dumps(normal, sort_keys=True, separators=(",", ":")).encode() + b"\n"


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


#: The logs every seal block covers.
COVERED_LOGS: tuple[CoveredLog, ...] = (PruneRunsLog(),)


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
