"""Audit queries and exports over the ``envelopes`` table.

:func:`query_envelopes` streams matching rows with keyset pagination on
``(received_at, envelope_id)``: each page is one short read-only transaction
of at most ``page_size`` rows, so exporting ten million rows holds one page in
memory and never keeps a long transaction open against the writers. The
writers (:func:`write_jsonl`, :func:`write_csv`, :func:`write_json`,
:func:`write_table`) consume that stream as they go.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy.engine import Engine

from recorder import statements
from recorder.engine import read_only, storage_errors
from recorder.tombstone import is_tombstone

DEFAULT_PAGE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class QuerySpec:
    """Which envelopes an audit query selects. Unset fields do not filter."""

    team_id: str | None = None
    channel_id: str | None = None
    user_id: str | None = None
    envelope_type: str | None = None
    """``events_api``, ``slash_commands``, ``interactive``, ..."""
    event_type: str | None = None
    """Event type, slash command, or interactive payload type."""
    since: dt.datetime | None = None
    """Received at or after this time (inclusive)."""
    until: dt.datetime | None = None
    """Received before this time (exclusive)."""
    limit: int | None = None
    """At most this many rows, oldest first."""

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be zero or more")


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One recorded envelope: the reporting columns and the exact stored text."""

    received_at: dt.datetime
    envelope_id: str
    envelope_type: str | None
    event_type: str | None
    team_id: str | None
    enterprise_id: str | None
    api_app_id: str | None
    channel_id: str | None
    user_id: str | None
    event_id: str | None
    retry_attempt: int | None
    retry_reason: str | None
    status: str
    envelope_sha256: str
    envelope_text: str
    """The envelope's JSON text exactly as received."""


AUDIT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(AuditRow))
assert AUDIT_FIELDS == statements.AUDIT_COLUMNS


def query_envelopes(
    engine: Engine, spec: QuerySpec, *, page_size: int = DEFAULT_PAGE_SIZE
) -> Iterator[AuditRow]:
    """Stream the envelopes ``spec`` selects, oldest first.

    Raises
    ------
    StorageUnavailable
        The database failed (SchemaMissing when it has no recorder schema).
    """
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    remaining = spec.limit
    after: tuple[dt.datetime, str] | None = None
    while remaining is None or remaining > 0:
        size = page_size if remaining is None else min(page_size, remaining)
        stmt = statements.select_envelopes_page(
            page_size=size,
            after=after,
            team_id=spec.team_id,
            channel_id=spec.channel_id,
            user_id=spec.user_id,
            envelope_type=spec.envelope_type,
            event_type=spec.event_type,
            since=spec.since,
            until=spec.until,
        )
        with storage_errors("querying envelopes"), read_only(engine) as conn:
            page = [AuditRow(*row) for row in conn.execute(stmt)]
        yield from page
        if len(page) < size:
            return
        if remaining is not None:
            remaining -= len(page)
        after = (page[-1].received_at, page[-1].envelope_id)


# -- output formats


def write_jsonl(rows: Iterable[AuditRow], out: IO[bytes]) -> int:
    """Each stored envelope text exactly as received, one per line (UTF-8)."""
    count = 0
    for row in rows:
        out.write(row.envelope_text.encode("utf-8"))
        out.write(b"\n")
        count += 1
    return count


def write_archive(rows: Iterable[AuditRow], out: IO[bytes]) -> int:
    """One JSON object per envelope, for ``recorder import`` to restore exactly.

    Each line holds ``received_at`` (ISO 8601, UTC, microseconds),
    ``envelope_id``, ``envelope_sha256`` and ``envelope_text`` (the exact
    stored text, as a JSON string), so an import keeps the time and the
    digest checks the text.
    """
    count = 0
    for row in rows:
        record = {
            "received_at": format_received_at(row.received_at),
            "envelope_id": row.envelope_id,
            "envelope_sha256": row.envelope_sha256,
            "envelope_text": row.envelope_text,
        }
        out.write(json.dumps(record, ensure_ascii=False).encode("utf-8"))
        out.write(b"\n")
        count += 1
    return count


def format_received_at(at: dt.datetime) -> str:
    """``received_at`` as an archive holds it: ISO 8601, UTC, microseconds (``...Z``)."""
    return at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_csv(rows: Iterable[AuditRow], out: IO[str]) -> int:
    """A header and one record per envelope: the reporting columns, then envelope_text."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(AUDIT_FIELDS)
    count = 0
    for row in rows:
        writer.writerow(_csv_value(getattr(row, name)) for name in AUDIT_FIELDS)
        count += 1
    return count


def _csv_value(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return "" if value is None else value


def write_json(rows: Iterable[AuditRow], out: IO[str]) -> int:
    """A JSON array, written as it streams: one object per envelope.

    Each object has the reporting columns and ``envelope``, the stored text
    embedded verbatim (it is JSON already, so nothing is re-encoded).
    """
    out.write("[")
    count = 0
    for row in rows:
        fields: dict[str, Any] = {
            name: _json_value(getattr(row, name)) for name in AUDIT_FIELDS[:-1]
        }
        head = json.dumps(fields, ensure_ascii=False)
        out.write(",\n" if count else "\n")
        out.write(f'{head[:-1]}, "envelope": {row.envelope_text}}}')
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def _json_value(value: object) -> object:
    return value.isoformat() if isinstance(value, dt.datetime) else value


_TABLE_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("received_at", "RECEIVED (UTC)", 19),
    ("envelope_type", "TYPE", 14),
    ("event_type", "EVENT", 18),
    ("team_id", "TEAM", 11),
    ("channel_id", "CHANNEL", 11),
    ("user_id", "USER", 11),
    ("retry_attempt", "RETRY", 5),
    ("envelope_id", "ENVELOPE", 36),
)


def write_table(rows: Iterable[AuditRow], out: IO[str]) -> int:
    """Fixed-width columns for people, written as rows arrive (long values are cut)."""
    out.write(_table_line(title for _, title, _ in _TABLE_COLUMNS))
    count = 0
    for row in rows:
        out.write(_table_line(_table_cell(row, name) for name, _, _ in _TABLE_COLUMNS))
        count += 1
    out.write(f"({count} {'row' if count == 1 else 'rows'})\n")
    return count


def _table_cell(row: AuditRow, name: str) -> str:
    if name == "user_id" and is_tombstone(row.envelope_text):
        return "(erased)"
    value = getattr(row, name)
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return "-" if value is None else str(value)


def _table_line(cells: Iterable[str]) -> str:
    parts = []
    for (_, _, width), cell in zip(_TABLE_COLUMNS, cells, strict=True):
        cell = cell if len(cell) <= width else cell[: width - 1] + "~"
        parts.append(cell.ljust(width))
    return "  ".join(parts).rstrip() + "\n"


TextWriter = Callable[[Iterable[AuditRow], IO[str]], int]

BinaryWriter = Callable[[Iterable[AuditRow], IO[bytes]], int]

#: Formats written as bytes: the exact stored text, alone or in an archive record.
BINARY_FORMATS: dict[str, BinaryWriter] = {"jsonl": write_jsonl, "archive": write_archive}

#: Text formats by name.
TEXT_FORMATS: dict[str, TextWriter] = {
    "table": write_table,
    "json": write_json,
    "csv": write_csv,
}

FORMATS: tuple[str, ...] = ("table", "json", "jsonl", "csv", "archive")


def export(rows: Iterable[AuditRow], fmt: str, out: IO[bytes]) -> int:
    """Write ``rows`` to the binary stream ``out`` in format ``fmt``; return the row count."""
    if fmt in BINARY_FORMATS:
        return BINARY_FORMATS[fmt](rows, out)
    writer = TEXT_FORMATS.get(fmt)
    if writer is None:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=False)
    try:
        return writer(rows, text)
    finally:
        text.flush()
        text.detach()
