"""How PostgreSQL stores an envelope's row (migration 0011).

Rows of up to 8 KB stay whole in the heap, uncompressed: a 1 KB envelope,
stored twice (text and ``jsonb`` copy), no longer pays a compression attempt
and a TOAST insert on every record and import, nor a TOAST lookup on every
read of its copy. Larger rows are still compressed, as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from recorder import RecordResult
from recorder.adapters.sql import SQLEventBuffer
from recorder.importer import import_envelopes

# Compressible on purpose: at the default toast_tuple_target PostgreSQL
# compresses such a row in place, which is what the inline storage forgoes.
WORDS = "the quarterly numbers are in the shared channel, please review them "


def envelope(envelope_id: str, text: str) -> dict[str, Any]:
    return {
        "envelope_id": envelope_id,
        "type": "events_api",
        "payload": {
            "event_id": f"Ev-{envelope_id}",
            "team_id": "T1",
            "event": {"type": "message", "channel": "C1", "user": "U1", "text": text},
        },
    }


@pytest.fixture
def buffer(pg_url: str) -> Iterator[SQLEventBuffer]:
    buffer = SQLEventBuffer(pg_url)
    yield buffer
    buffer.close()


def stored(buffer: SQLEventBuffer, envelope_id: str) -> tuple[int, int, int, int]:
    """(stored size of the text, its length, stored size of the copy, its length)."""
    with buffer.engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT pg_column_size(envelope_text), octet_length(envelope_text), "
                "pg_column_size(envelope), octet_length(envelope::text) "
                "FROM envelopes WHERE envelope_id = :id"
            ),
            {"id": envelope_id},
        ).one()
    return row[0], row[1], row[2], row[3]


def toast_bytes(buffer: SQLEventBuffer) -> int:
    with buffer.engine.connect() as conn:
        size: int = conn.execute(
            sa.text(
                "SELECT pg_relation_size(reltoastrelid) FROM pg_class "
                "WHERE oid = 'envelopes'::regclass"
            )
        ).scalar_one()
    return size


def test_a_one_kilobyte_envelope_is_stored_whole_in_its_row(buffer: SQLEventBuffer) -> None:
    assert buffer.record("small", envelope("small", WORDS * 15)) is RecordResult.NEW
    text_size, text_length, copy_size, copy_length = stored(buffer, "small")
    assert text_length > 1000
    # Uncompressed: the stored value is at least as long as the text.
    assert text_size >= text_length
    assert copy_size >= copy_length * 0.9  # jsonb's binary form, not compressed
    assert toast_bytes(buffer) == 0


def test_an_import_of_such_envelopes_leaves_the_toast_table_empty(
    buffer: SQLEventBuffer,
) -> None:
    lines = [
        (
            f'{{"envelope_id":"i{n}","type":"events_api","payload":'
            f'{{"event_id":"Ev-i{n}","event":{{"type":"message","text":"{WORDS * 14} {n}"}}}}}}'
        ).encode()
        for n in range(600)
    ]
    assert import_envelopes(buffer, lines).new == 600
    text_size, text_length, copy_size, copy_length = stored(buffer, "i599")
    assert text_size >= text_length > 1000
    assert copy_size >= copy_length * 0.9
    assert toast_bytes(buffer) == 0


def test_a_row_over_eight_kilobytes_is_still_compressed(buffer: SQLEventBuffer) -> None:
    assert buffer.record("large", envelope("large", WORDS * 200)) is RecordResult.NEW
    text_size, text_length, copy_size, copy_length = stored(buffer, "large")
    assert text_length > 13_000
    assert text_size < text_length / 2
    assert copy_size < copy_length / 2
