"""Imports are archives: stored as handled, exact across databases, digests checked.

Covers ``import_envelopes`` (pending or handled, archive records, event times)
and ``audit.export(..., "archive")`` on SQLite and PostgreSQL, including a
PostgreSQL -> SQLite -> PostgreSQL round trip that must keep every envelope's
text, digest and ``received_at`` exactly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from typing import Any

import pytest
import sqlalchemy as sa

from recorder import audit
from recorder.adapters.sql import SQLEventBuffer
from recorder.audit import QuerySpec, query_envelopes
from recorder.engine import create_engine
from recorder.errors import InvalidEnvelope
from recorder.importer import import_envelopes, parse_line
from recorder.schema import envelopes

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 6, 1, 8, 30, 15, 123456, tzinfo=UTC)
EVENT_TIME = 1_700_000_000  # 2023-11-14T22:13:20Z


def envelope(n: int, **payload: Any) -> dict[str, Any]:
    return {
        "envelope_id": f"arc-{n:04d}",
        "type": "events_api",
        "accepts_response_payload": False,
        "payload": {
            "team_id": "T1",
            "event_id": f"Ev{n:04d}",
            "event": {"type": "message", "channel": "C1", "user": "U1", "text": f"m{n}"},
            **payload,
        },
    }


def line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode() + b"\n"


def archive_line(text: str, received_at: str, **override: Any) -> bytes:
    record = {
        "received_at": received_at,
        "envelope_id": json.loads(text)["envelope_id"],
        "envelope_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "envelope_text": text,
        **override,
    }
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"


# Texts the way different producers write them: spacing, key order, escapes
# jsonb cannot hold, numbers a float cannot hold, raw UTF-8 and astral characters.
HOSTILE_TEXTS = [
    json.dumps(envelope(1)),
    '{ "envelope_id" : "arc-0002", "type":"events_api", "payload": {"event_id": "Ev0002", '
    '"event": {"type": "message", "text": "nul \\u0000 and lone \\ud800 here"}}}',
    '{"payload":{"event_id":"Ev0003","n":1e400,"big":123456789012345678901234567890},'
    '"envelope_id":"arc-0003","type":"events_api"}',
    json.dumps(envelope(4, note="héllo 🎉 \u2028 ✓"), ensure_ascii=False),
    json.dumps({"envelope_id": "arc-0005", "type": "slash_commands", "payload": {"command": "/x"}}),
]


def stored_rows(url: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [
                tuple(row)
                for row in conn.execute(
                    sa.select(
                        envelopes.c.envelope_id,
                        envelopes.c.received_at,
                        envelopes.c.envelope_text,
                        envelopes.c.envelope_sha256,
                        envelopes.c.status,
                    ).order_by(envelopes.c.envelope_id)
                )
            ]
    finally:
        engine.dispose()


def export_archive(url: str) -> bytes:
    out = io.BytesIO()
    with SQLEventBuffer(url) as buffer:
        audit.export(query_envelopes(buffer.engine, QuerySpec()), "archive", out)
    return out.getvalue()


def test_imported_envelopes_are_handled_and_never_claimed_by_recovery(database_url: str) -> None:
    with SQLEventBuffer(database_url) as buffer:
        report = import_envelopes(buffer, [line(envelope(n)) for n in range(3)])
        assert (report.new, report.pending) == (3, False)
        assert "stored as handled" in report.summary()
        assert buffer.count_pending() == 0
        assert buffer.pending() == []
        # Even a zero lease (everything is stale) claims nothing of an archive.
        assert buffer.claim_stale(0) == []
        # A live envelope beside them is still work.
        buffer.record("live-1", {"type": "events_api", "payload": {"n": 1}})
        assert [c.envelope_id for c in buffer.claim_stale(0)] == ["live-1"]


def test_pending_import_is_a_backfill_recovery_dispatches(database_url: str) -> None:
    with SQLEventBuffer(database_url) as buffer:
        report = import_envelopes(buffer, [line(envelope(n)) for n in range(3)], pending=True)
        assert report.pending
        assert "stored pending" in report.summary()
        assert buffer.count_pending() == 3
        claimed = buffer.claim_stale(0)
    assert sorted(c.envelope_id for c in claimed) == ["arc-0000", "arc-0001", "arc-0002"]


def test_archive_round_trip_postgresql_sqlite_postgresql_is_exact(
    pg_url: str, sqlite_url: str, pg_empty_url: str
) -> None:
    times = iter(T0 + dt.timedelta(days=i, microseconds=7 * i) for i in range(100))
    with SQLEventBuffer(pg_url, clock=lambda: next(times)) as buffer:
        for text in HOSTILE_TEXTS:
            buffer.record(json.loads(text)["envelope_id"], text)
    original = stored_rows(pg_url)
    assert [row[2] for row in original] == HOSTILE_TEXTS
    first = export_archive(pg_url)

    with SQLEventBuffer(sqlite_url) as buffer:
        report = import_envelopes(buffer, io.BytesIO(first))
    assert (report.new, report.rejected) == (5, 0), report.errors
    assert [row[:4] for row in stored_rows(sqlite_url)] == [row[:4] for row in original]
    assert {row[4] for row in stored_rows(sqlite_url)} == {"done"}
    second = export_archive(sqlite_url)
    assert second == first

    with SQLEventBuffer(pg_empty_url, upgrade=True) as buffer:
        report = import_envelopes(buffer, io.BytesIO(second))
    assert (report.new, report.rejected) == (5, 0), report.errors
    assert [row[:4] for row in stored_rows(pg_empty_url)] == [row[:4] for row in original]
    assert export_archive(pg_empty_url) == first


def test_archive_lines_keep_microseconds_and_convert_offsets(database_url: str) -> None:
    text = json.dumps(envelope(7))
    lines = [
        archive_line(text, "2024-02-29T23:59:59.000001+02:00"),
        archive_line(json.dumps(envelope(8)), "2024-03-01T00:00:00Z"),
    ]
    with SQLEventBuffer(database_url) as buffer:
        assert import_envelopes(buffer, lines).new == 2
    rows = stored_rows(database_url)
    assert rows[0][1] == dt.datetime(2024, 2, 29, 21, 59, 59, 1, tzinfo=UTC)
    assert rows[1][1] == dt.datetime(2024, 3, 1, tzinfo=UTC)
    assert rows[0][2] == text


def test_plain_and_archive_lines_mix_and_bad_records_are_rejected_by_line(
    database_url: str,
) -> None:
    good = json.dumps(envelope(10))
    lines = [
        line(envelope(11)),
        archive_line(good, "2025-01-01T00:00:00Z"),
        archive_line(json.dumps(envelope(12)), "2025-01-01T00:00:00Z", envelope_sha256="0" * 64),
        archive_line(json.dumps(envelope(13)), "2025-01-01T00:00:00"),
        archive_line(json.dumps(envelope(14)), "9999-12-31T23:00-05:00"),
        archive_line(json.dumps(envelope(15)), "yesterday"),
        archive_line(json.dumps(envelope(16)), "2025-01-01T00:00:00Z", extra=1),
        archive_line('{"envelope_id":"arc-0017","a":1,"a":2}', "2025-01-01T00:00:00Z"),
        b'{"received_at":"2025-01-01T00:00:00Z","envelope_text":"{}","envelope_text":"{}",'
        b'"envelope_sha256":"x"}\n',
        archive_line(json.dumps(envelope(18)), "2025-01-01T00:00:00Z", envelope_id="other"),
        archive_line(json.dumps(envelope(19)), "2025-01-01T00:00:00Z", envelope_text=5),
    ]
    with SQLEventBuffer(database_url) as buffer:
        report = import_envelopes(buffer, lines)
        assert (report.new, report.rejected) == (2, 9), report.errors
        stored = {r.envelope_id for r in query_envelopes(buffer.engine, QuerySpec())}
    assert stored == {"arc-0010", "arc-0011"}
    reasons = dict(report.errors)
    assert reasons[3] == "envelope_sha256 does not match envelope_text"
    assert "has no UTC offset" in reasons[4]
    assert "within years 1-9999" in reasons[5]
    assert "'yesterday'" in reasons[6]
    assert reasons[7] == "archive record has unknown fields: extra"
    assert "duplicate key: 'a'" in reasons[8]
    assert "duplicate key" in reasons[9]
    assert "does not match the envelope's own" in reasons[10]
    assert reasons[11] == "archive record needs envelope_text as a string"


def test_archive_lines_go_through_the_buffers_redaction(database_url: str) -> None:
    secret = json.dumps({**envelope(20), "payload": {"token": "xoxb-secret-token", "n": 1}})
    with SQLEventBuffer(database_url) as buffer:
        assert import_envelopes(buffer, [archive_line(secret, "2025-01-01T00:00:00Z")]).new == 1
    (row,) = stored_rows(database_url)
    assert "xoxb-secret-token" not in row[2]
    assert row[3] == hashlib.sha256(row[2].encode()).hexdigest()


def test_event_time_backfill_lands_on_the_events_own_day(database_url: str) -> None:
    timed = envelope(30, event_time=EVENT_TIME)
    untimed = envelope(31)
    absurd = envelope(32, event_time=10**30)
    with SQLEventBuffer(database_url) as buffer:
        report = import_envelopes(
            buffer, [line(timed), line(untimed), line(absurd)], received_at="event-time"
        )
        assert report.new == 3
    before = dt.datetime.now(UTC) - dt.timedelta(minutes=5)
    rows = {row[0]: row[1] for row in stored_rows(database_url)}
    assert rows["arc-0030"] == dt.datetime.fromtimestamp(EVENT_TIME, UTC)
    assert rows["arc-0031"] > before
    assert rows["arc-0032"] > before


def test_default_received_at_is_the_import_time_even_with_an_event_time(
    database_url: str,
) -> None:
    with SQLEventBuffer(database_url) as buffer:
        import_envelopes(buffer, [line(envelope(40, event_time=EVENT_TIME))])
    (row,) = stored_rows(database_url)
    assert row[1] > dt.datetime.now(UTC) - dt.timedelta(minutes=5)


def test_parse_line_is_pure_and_refuses_what_record_refuses() -> None:
    item = parse_line(archive_line(HOSTILE_TEXTS[1], "2025-01-01T00:00:00Z").rstrip(b"\n"))
    assert item.parsed.text == HOSTILE_TEXTS[1]
    assert item.received_at == dt.datetime(2025, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidEnvelope, match="duplicate key"):
        parse_line(b'{"envelope_id":"x","envelope_id":"y"}')
    with pytest.raises(InvalidEnvelope, match="the limit is 100 bytes"):
        parse_line(archive_line(json.dumps(envelope(1)), "2025-01-01T00:00:00Z"), max_bytes=100)
