"""Bulk import of JSON Lines, as ``recorder import`` does it.

A line is either a plain envelope, whose exact text (the line without its
line ending) becomes ``envelope_text``, or an archive record as ``recorder
query --format archive`` writes it (``received_at``, ``envelope_id``,
``envelope_sha256``, ``envelope_text``): the exact text is stored with its own
``received_at``, after its digest is checked. Both kinds may be mixed in one
file, and both go through the buffer's own parser (strict JSON, size limit,
redaction), as ``record`` does.

Imported envelopes are an archive, not work: they are stored as already
handled, so no bot's recovery ever dispatches them, unless the caller asks for
``pending`` (a backfill that bots should handle).

Valid lines are recorded in batches through :meth:`SQLEventBuffer.record_many`
(the same ``ON CONFLICT DO NOTHING`` dedupe as ``record``: a line seen before,
or a retry carrying a known ``event_id``, counts as a duplicate). A malformed
line is rejected with its line number and never costs the valid lines around it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from recorder.adapters.sql import SQLEventBuffer
from recorder.envelope import (
    DEFAULT_MAX_ENVELOPE_BYTES,
    ParsedEnvelope,
    Redaction,
    loads_strict,
    parse_envelope,
    parse_envelope_text,
)
from recorder.errors import InvalidEnvelope, SchemaMissing, StorageUnavailable

DEFAULT_BATCH_SIZE = 500
#: Rejections beyond this many are counted but their messages are not kept.
MAX_KEPT_ERRORS = 10_000

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

ProgressCallback = Callable[[int], None]
"""Called with the number of input bytes consumed since the previous call."""

ErrorCallback = Callable[[int, str], None]
"""Called with the line number (from 1) and the reason, as each line is rejected."""


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


@dataclass(slots=True)
class ImportReport:
    """What an import did."""

    new: int = 0
    """Envelopes stored for the first time."""
    duplicate: int = 0
    """Valid envelopes already stored (same envelope_id, or same event_id)."""
    rejected: int = 0
    """Lines that are not a valid envelope; nothing was stored for them."""
    errors: list[tuple[int, str]] = field(default_factory=list)
    """``(line number, reason)`` of rejected lines (the first MAX_KEPT_ERRORS)."""
    pending: bool = False
    """The new envelopes were stored pending (bots dispatch them), not as handled."""

    @property
    def lines(self) -> int:
        """Non-blank lines read."""
        return self.new + self.duplicate + self.rejected

    def counts(self) -> str:
        return f"imported: {self.new} new, {self.duplicate} duplicate, {self.rejected} rejected"

    def summary(self) -> str:
        """The counts, then how the new envelopes were stored."""
        if self.pending:
            how = "stored pending: a bot's recovery on this database will dispatch them"
        else:
            how = (
                "stored as handled (an archive): no bot dispatches them; --pending to backfill work"
            )
        return f"{self.counts()}\n{how}" if self.new else self.counts()


def import_envelopes(
    buffer: SQLEventBuffer,
    lines: Iterable[bytes],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: ProgressCallback | None = None,
    on_error: ErrorCallback | None = None,
    pending: bool = False,
    received_at: ReceivedAt = "now",
) -> ImportReport:
    """Record every envelope in ``lines`` (JSON Lines), in batches.

    Parameters
    ----------
    buffer
        Where to record; its size limit and redaction apply to every line (a
        line that redaction changes is stored re-encoded, as ``record`` does).
    lines
        The input, line by line, with or without line endings (a binary file
        object will do). Blank lines are skipped. Plain envelopes and archive
        records (see :func:`parse_line`) may be mixed.
    batch_size
        Envelopes per transaction.
    on_progress, on_error
        Optional callbacks for progress (bytes consumed) and each rejected line.
    pending
        Store new envelopes pending, for bots to dispatch (a backfill of work).
        By default they are stored as already handled: recovery never runs
        handlers on an archive.
    received_at
        ``"now"`` (the import's time) or ``"event-time"`` (``payload.event_time``
        where present, else now) for plain envelopes. Archive records always
        keep their own ``received_at``.

    Returns
    -------
    ImportReport
        Counts of new, duplicate and rejected envelopes.

    Raises
    ------
    StorageUnavailable
        The database failed; batches before the failing one are committed,
        and running the import again is safe (they count as duplicates).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if received_at not in RECEIVED_AT_CHOICES:
        raise ValueError(f"received_at must be one of {', '.join(RECEIVED_AT_CHOICES)}")
    report = ImportReport(pending=pending)
    lock = threading.Lock()

    def reject(line_no: int, reason: str) -> None:
        with lock:
            report.rejected += 1
            if len(report.errors) < MAX_KEPT_ERRORS:
                report.errors.append((line_no, reason))
            if on_error is not None:
                on_error(line_no, reason)

    def write(batch: list[tuple[int, ImportItem]]) -> None:
        new, duplicate = _record_batch(buffer, batch, reject, handled=not pending)
        with lock:
            report.new += new
            report.duplicate += duplicate

    batch: list[tuple[int, ImportItem]] = []
    pending_bytes = 0
    with _BatchWriter(write) as writer:
        for line_no, raw in enumerate(lines, start=1):
            pending_bytes += len(raw)
            text = _strip_line_ending(raw)
            if not text or text.isspace():
                continue
            try:
                item = parse_line(
                    text,
                    max_bytes=buffer.max_envelope_bytes,
                    redaction=buffer.redaction,
                    received_at=received_at,
                )
            except InvalidEnvelope as exc:
                reject(line_no, str(exc))
                continue
            batch.append((line_no, item))
            if len(batch) >= batch_size:
                writer.submit(batch)
                batch = []
                if on_progress is not None:
                    on_progress(pending_bytes)
                    pending_bytes = 0
        if batch:
            writer.submit(batch)
    if on_progress is not None and pending_bytes:
        on_progress(pending_bytes)
    return report


class _BatchWriter:
    """Records batches on one background thread, in order, while the caller parses the next.

    Parsing is CPU work in this process and recording mostly waits on the
    database, so overlapping them is where a bulk import gains over a plain
    loop. At most two batches wait in the queue (bounded memory). The first
    error the writer meets stops it, and is raised in the caller at the next
    :meth:`submit` or on leaving the ``with`` block.
    """

    _DONE: Final = None

    def __init__(self, write: Callable[[list[tuple[int, ImportItem]]], None]) -> None:
        self._write = write
        self._queue: queue.Queue[list[tuple[int, ImportItem]] | None] = queue.Queue(2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="recorder-import", daemon=True)

    def __enter__(self) -> _BatchWriter:
        self._thread.start()
        return self

    def submit(self, batch: list[tuple[int, ImportItem]]) -> None:
        self._raise_error()
        self._queue.put(batch)

    def _run(self) -> None:
        while (batch := self._queue.get()) is not self._DONE:
            if self._error is not None:
                continue  # drain without writing after a failure
            try:
                self._write(batch)
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is not None:
            self._error = self._error or RuntimeError("import interrupted")
        self._queue.put(self._DONE)
        self._thread.join()
        if exc is None:
            self._raise_error()


def _strip_line_ending(raw: bytes) -> bytes:
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    if raw.endswith((b"\n", b"\r")):
        return raw[:-1]
    return raw


def _record_batch(
    buffer: SQLEventBuffer,
    batch: list[tuple[int, ImportItem]],
    reject: ErrorCallback,
    *,
    handled: bool,
) -> tuple[int, int]:
    """Record one batch; return (new, duplicate)."""
    first_line = batch[0][0]
    try:
        new = buffer.record_many(
            [item.parsed for _, item in batch],
            received_at=[item.received_at for _, item in batch],
            handled=handled,
        )
    except InvalidEnvelope:
        # The database refused a value somewhere in the batch: find the line
        # one envelope at a time so the others are still recorded.
        new = duplicate = 0
        for line_no, item in batch:
            try:
                new_one = buffer.record_many(
                    [item.parsed], received_at=[item.received_at], handled=handled
                )
            except InvalidEnvelope as exc:
                reject(line_no, str(exc))
                continue
            new += new_one
            duplicate += 1 - new_one
        return new, duplicate
    except SchemaMissing:
        raise
    except StorageUnavailable as exc:
        raise StorageUnavailable(
            f"import stopped at line {first_line}: {exc}; the lines before it are recorded "
            "(its own batch may be too), and importing the file again is safe"
        ) from exc
    return new, len(batch) - new
