"""One line of a ``recorder import`` file, parsed; and a chunk of lines, made into rows.

The pure half of the import (no database, no SQLAlchemy): the worker
processes of a parallel import load only this module and the envelope
parser, and return finished rows (:mod:`recorder.copy_rows`) with the line
number of each, and the line number and reason of each rejected line.

A line is either a plain envelope, whose exact text (the line without its
line ending) becomes ``envelope_text``, or an archive record as ``recorder
query --format archive`` writes it (``received_at``, ``envelope_id``,
``envelope_sha256``, ``envelope_text``): the exact text is stored with its own
``received_at``, after its digest is checked. Both kinds may be mixed in one
file, and both go through the buffer's own parser (strict JSON, size limit,
redaction), as ``record`` does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any, Literal, get_args

from recorder.copy_rows import bind_row, copy_row
from recorder.envelope import (
    DEFAULT_MAX_ENVELOPE_BYTES,
    ParsedEnvelope,
    Redaction,
    loads_strict,
    parse_envelope,
    parse_envelope_text,
)
from recorder.errors import InvalidEnvelope

UTC = dt.timezone.utc

ReceivedAt = Literal["now", "event-time"]
"""Where a plain envelope's ``received_at`` comes from: the import's own time,
or ``payload.event_time`` when the envelope has one (a backfill)."""
RECEIVED_AT_CHOICES: tuple[str, ...] = get_args(ReceivedAt)

#: The fields of an archive record, in the order ``recorder query --format archive`` writes them.
ARCHIVE_FIELDS: tuple[str, ...] = ("received_at", "envelope_id", "envelope_sha256", "envelope_text")
_ARCHIVE_MARKER = b'"envelope_text"'
# JSON escaping can make an archive record up to six times its envelope, plus the other fields.
_ARCHIVE_OVERHEAD = 4096


@dataclass(frozen=True, slots=True)
class ImportItem:
    """One parsed line: the envelope, and when it was received if the line says so."""

    parsed: ParsedEnvelope
    received_at: dt.datetime | None
    """From an archive record or ``payload.event_time``; ``None`` means the import's time."""


def parse_line(
    raw: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
    redaction: Redaction | None = None,
    received_at: ReceivedAt = "now",
) -> ImportItem:
    """Parse one JSON Lines record (no line ending): a plain envelope or an archive record.

    No I/O: the import's parse step, shared by every way of writing the batch.

    Raises
    ------
    InvalidEnvelope
        The line cannot be stored; the message says why (for an archive
        record whose digest is wrong: ``envelope_sha256 does not match
        envelope_text``).
    """
    if _ARCHIVE_MARKER in raw:
        archived = _archive_record(raw, max_bytes)
        if archived is not None:
            return _parse_archived(archived, max_bytes=max_bytes, redaction=redaction)
    parsed = parse_envelope_text(raw, max_bytes=max_bytes, redaction=redaction)
    at = event_time(parsed.data) if received_at == "event-time" else None
    return ImportItem(parsed, at)


def _archive_record(raw: bytes, max_bytes: int) -> dict[str, Any] | None:
    """The decoded line when it is an archive record (it has ``envelope_text``), else None."""
    if len(raw) > 6 * max_bytes + _ARCHIVE_OVERHEAD:
        return None  # too large either way: the envelope parser says so, with sizes
    try:
        data = loads_strict(raw.decode("utf-8"))
    except (InvalidEnvelope, UnicodeDecodeError):
        return None  # not JSON: the envelope parser gives the precise reason
    if not isinstance(data, dict) or "envelope_text" not in data:
        return None
    return data


def _parse_archived(
    record: dict[str, Any], *, max_bytes: int, redaction: Redaction | None
) -> ImportItem:
    unknown = sorted(set(record) - set(ARCHIVE_FIELDS))
    if unknown:
        raise InvalidEnvelope(f"archive record has unknown fields: {', '.join(unknown)}")
    for name in ("received_at", "envelope_sha256", "envelope_text"):
        if not isinstance(record.get(name), str):
            raise InvalidEnvelope(f"archive record needs {name} as a string")
    text: str = record["envelope_text"]
    try:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    except UnicodeEncodeError as exc:
        raise InvalidEnvelope("envelope_text has a lone surrogate; it is not UTF-8 text") from exc
    if digest != record["envelope_sha256"]:
        raise InvalidEnvelope("envelope_sha256 does not match envelope_text")
    at = parse_received_at(record["received_at"])
    if "envelope_id" in record:
        parsed = parse_envelope(
            record["envelope_id"], text, max_bytes=max_bytes, redaction=redaction
        )
    else:
        parsed = parse_envelope_text(text, max_bytes=max_bytes, redaction=redaction)
    return ImportItem(parsed, at)


def parse_received_at(value: str) -> dt.datetime:
    """An archive's ``received_at``: ISO 8601 with a UTC offset, returned in UTC."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        at = dt.datetime.fromisoformat(text)
        utc = at.astimezone(UTC) if at.tzinfo is not None else None
    except (ValueError, OverflowError) as exc:
        raise InvalidEnvelope(
            f"received_at {value!r} is not an ISO 8601 time within years 1-9999"
        ) from exc
    if utc is None:
        raise InvalidEnvelope(f"received_at {value!r} has no UTC offset")
    return utc


# Slack's event_time is whole seconds since the epoch; beyond these a value is not a time.
_EVENT_TIME_RANGE = (0, 253402300799)  # 1970-01-01 .. 9999-12-31T23:59:59Z


def event_time(data: dict[str, Any]) -> dt.datetime | None:
    """``payload.event_time`` as a UTC time, or None when absent or not a plausible time."""
    payload = data.get("payload")
    value = payload.get("event_time") if isinstance(payload, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not _EVENT_TIME_RANGE[0] <= value <= _EVENT_TIME_RANGE[1]:
        return None
    return dt.datetime.fromtimestamp(value, UTC)


RowFormat = Literal["copy", "bind"]
"""``copy``: PostgreSQL COPY text lines (bytes); ``bind``: SQLite bind values (dicts)."""


@dataclass(frozen=True, slots=True)
class ChunkOptions:
    """How every line of one import is parsed (the buffer's limits and redaction)."""

    max_bytes: int
    redaction: Redaction | None
    received_at: ReceivedAt
    row_format: RowFormat


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive raw lines of the input, with line endings, and the number of the first."""

    first_line: int
    lines: list[bytes]


@dataclass(frozen=True, slots=True)
class PreparedChunk:
    """A chunk made ready to store: rows in input order, and the lines refused."""

    first_line: int
    size: int
    """Input bytes the chunk covers (for progress)."""
    rows: list[Any]
    """``bytes`` (``copy``) or ``dict`` (``bind``) rows, in input order."""
    row_lines: list[int]
    """The line number of each row."""
    keys: frozenset[str]
    """The unique keys the rows claim (``id:`` envelope_id, ``event:`` event_id):
    two chunks whose keys are disjoint can be written at the same time in
    either order without changing which line wins."""
    errors: list[tuple[int, str]]
    """``(line number, reason)`` of each line the parser refused."""


def strip_line_ending(raw: bytes) -> bytes:
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    if raw.endswith((b"\n", b"\r")):
        return raw[:-1]
    return raw


def prepare_chunk(chunk: Chunk, options: ChunkOptions) -> PreparedChunk:
    """Parse, redact and hash every line of ``chunk``; blank lines are skipped.

    Runs in a worker process of a parallel import (both arguments and the
    result are pickled), or in the importing process itself.
    """
    make_row = copy_row if options.row_format == "copy" else bind_row
    rows: list[Any] = []
    row_lines: list[int] = []
    keys: set[str] = set()
    errors: list[tuple[int, str]] = []
    size = 0
    for line_no, raw in enumerate(chunk.lines, start=chunk.first_line):
        size += len(raw)
        text = strip_line_ending(raw)
        if not text or text.isspace():
            continue
        try:
            item = parse_line(
                text,
                max_bytes=options.max_bytes,
                redaction=options.redaction,
                received_at=options.received_at,
            )
        except InvalidEnvelope as exc:
            errors.append((line_no, str(exc)))
            continue
        rows.append(make_row(item.parsed, item.received_at))
        row_lines.append(line_no)
        keys.add("id:" + item.parsed.envelope_id)
        event_id = item.parsed.columns["event_id"]
        if event_id is not None:
            keys.add("event:" + event_id)
    return PreparedChunk(chunk.first_line, size, rows, row_lines, frozenset(keys), errors)


def worker_ready() -> bool:
    """A worker's first task: it returns once the worker has started and loaded this module."""
    return True
