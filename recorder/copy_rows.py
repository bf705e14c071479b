"""Envelope rows as PostgreSQL ``COPY ... FROM STDIN`` text, and as SQLite bind values.

The bulk write path (``recorder import``, :meth:`SQLEventBuffer.record_many`)
builds its rows here. Nothing in this module touches a database or imports
SQLAlchemy, so the import's worker processes can build finished rows (the
bytes COPY sends, escaped) and the process that talks to the database only
joins them: the per-envelope work happens where there are cores for it.

Text format rather than binary: measured on 1 KB envelopes, a text row is
one ``str.join`` and a few ``str.replace`` calls in Python, while a binary
row needs a length prefix per field; the server reads either at about the
same rate next to the ``INSERT ... SELECT`` that follows (BENCHMARKS.md,
"Record and import").
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from recorder.envelope import REPORTING_COLUMNS, ParsedEnvelope

#: Columns of the import's staging table, in COPY order. ``received_at`` is
#: NULL for "the time of the write" (the transaction fills it in), and
#: ``envelope`` is NULL when the queryable copy equals the exact text (nearly
#: always), so each envelope crosses the wire once.
STAGED_COLUMNS: tuple[str, ...] = (
    "envelope_id",
    REPORTING_COLUMNS[0],  # envelope_type, before received_at as in the table
    "received_at",
    *REPORTING_COLUMNS[1:],
    "envelope",
    "envelope_text",
    "envelope_sha256",
)

_NULL = "\\N"


def _escape(text: str) -> str:
    """A value in COPY's text format: backslash, tab, newline and CR escaped."""
    # Most values have none of these; the ``in`` tests skip the copies.
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\t" in text:
        text = text.replace("\t", "\\t")
    if "\n" in text:
        text = text.replace("\n", "\\n")
    if "\r" in text:
        text = text.replace("\r", "\\r")
    return text


def _field(value: str | int | None) -> str:
    if value is None:
        return _NULL
    if isinstance(value, int):
        return str(value)
    return _escape(value)


def copy_row(parsed: ParsedEnvelope, received_at: dt.datetime | None) -> bytes:
    """One line of ``COPY <staging> (STAGED_COLUMNS) FROM STDIN`` (text format, UTF-8).

    ``received_at`` must be timezone-aware, or ``None`` for the time of the write.
    """
    c = parsed.columns
    fields = (
        _escape(parsed.envelope_id),
        _field(c["envelope_type"]),
        _NULL if received_at is None else received_at.isoformat(),
        _field(c["team_id"]),
        _field(c["enterprise_id"]),
        _field(c["api_app_id"]),
        _field(c["event_id"]),
        _field(c["event_type"]),
        _field(c["channel_id"]),
        _field(c["user_id"]),
        _field(c["retry_attempt"]),
        _field(c["retry_reason"]),
        _NULL if parsed.queryable_text is parsed.text else _escape(parsed.queryable_text),
        _escape(parsed.text),
        parsed.sha256,
    )
    return ("\t".join(fields) + "\n").encode("utf-8")


def bind_row(parsed: ParsedEnvelope, received_at: dt.datetime | None) -> dict[str, Any]:
    """The bind values of one row for SQLite's executemany; ``received_at`` None is now."""
    row = parsed.row()
    row["received_at"] = received_at
    return row
