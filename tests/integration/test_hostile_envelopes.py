"""Hostile envelopes on PostgreSQL and SQLite: stored and read back exactly, or rejected.

Whatever comes in, the outcome is one of two: the envelope is recorded and
reads back exactly as given (``pending()``, ``envelope_text``, the digest), or
``record`` raises InvalidEnvelope and nothing is stored. Either way the next
good envelope is recorded as NEW.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from recorder import InvalidEnvelope, RecordResult
from recorder.adapters.sql import SQLEventBuffer
from recorder.envelope import DEFAULT_MAX_ENVELOPE_BYTES, MAX_COLUMN_LENGTH
from recorder.schema import envelopes

INJECTION = "'); DROP TABLE envelopes;--"


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = {"level": level, "next": [value]}
    return value


@dataclass(frozen=True)
class Case:
    envelope_id: str
    envelope: str | bytes | dict[str, Any]
    queryable_type: str | None = "events_api"
    """``envelope->>'type'`` expected on PostgreSQL."""


def message(envelope_id: str, text: str, **event: Any) -> dict[str, Any]:
    return {
        "envelope_id": envelope_id,
        "type": "events_api",
        "payload": {
            "team_id": "T0001",
            "api_app_id": "A0001",
            "event_id": f"Ev-{envelope_id}",
            "event": {
                "type": "message",
                "channel": "C0001",
                "user": "U0001",
                "text": text,
                **event,
            },
        },
        "retry_attempt": 0,
        "retry_reason": "",
    }


def as_text(envelope: dict[str, Any]) -> str:
    return json.dumps(envelope, separators=(", ", ": "), ensure_ascii=False)


RECORDED: dict[str, Case] = {
    "nul-escape-in-text": Case(
        "nul-text",
        '{"envelope_id": "nul-text", "type": "events_api", '
        '"payload": {"event": {"type": "message", "text": "before\\u0000after"}, '
        '"event_id": "Ev-nul-text"}}',
    ),
    "nul-in-dict-strings": Case(
        "nul-dict", message("nul-dict", "a\x00b", **{"key\x00with-nul": "\x00"})
    ),
    "lone-surrogates-escaped-in-text": Case(
        "surrogate-text",
        '{"envelope_id":"surrogate-text","type":"events_api",'
        '"payload":{"event":{"text":"high \\ud800 low \\udfff reversed \\udc00\\ud800"}}}',
    ),
    "lone-surrogates-in-dict": Case(
        "surrogate-dict", message("surrogate-dict", "lone \ud800 and \udfff", **{"\udc80": 1})
    ),
    "paired-surrogate-escapes": Case(
        "paired", '{"envelope_id":"paired","type":"events_api","t":"\\ud83d\\ude00"}'
    ),
    "injection-in-id-and-values": Case(
        INJECTION,
        message(
            INJECTION,
            INJECTION,
            channel="C'; DELETE FROM envelopes; --",
            user='U"); DROP TABLE alembic_version;--',
        ),
    ),
    "injection-as-text": Case(
        "inj-text",
        as_text(message("inj-text", "$$; DROP TABLE envelopes; $$ \\'; --") | {"team": INJECTION}),
    ),
    "nesting-200-dict": Case("nest-dict", message("nest-dict", "deep") | {"deep": nested(200)}),
    "nesting-200-text": Case(
        "nest-text", as_text(message("nest-text", "deep") | {"deep": nested(200)})
    ),
    "emoji-and-astral": Case(
        "emoji-😀",
        message(
            "emoji-😀",
            "😀 👩\u200d👩\u200d👧 🇺🇳 \U0001d54f\U0001d538 𠜎 \U0010fffd \u202eRTL\u202c \ufeff zero\u200bwidth",
            user="U😀",
        ),
    ),
    "emoji-as-bytes": Case(
        "emoji-bytes",
        '{"envelope_id":"emoji-bytes", "type":"events_api", "x":"🎉𝄞"}'.encode(),
    ),
    "whitespace-and-key-order-kept": Case(
        "ws",
        '\n {\n\t"type" : "events_api" ,\r\n "z":1, "a":[ ] ,"envelope_id":"ws" }\n',
    ),
    "huge-channel-id": Case(
        "huge-channel", message("huge-channel", "x", channel="C" * 100_000, user="U" * 256)
    ),
    "non-string-team-and-ids": Case(
        "odd-types",
        {
            "envelope_id": "odd-types",
            "type": "events_api",
            "retry_attempt": 2**40,
            "retry_reason": {"nested": True},
            "payload": {
                "team_id": 12345,
                "enterprise_id": ["E"],
                "api_app_id": None,
                "event_id": 3.5,
                "event": {"type": {"t": 1}, "channel": {"id": 42}, "user": True},
            },
        },
    ),
    "nul-in-event-id": Case(
        "nul-event-id",
        '{"envelope_id":"nul-event-id","type":"events_api",'
        '"payload":{"event_id":"Ev\\u0000X","team_id":"T\\u0000","event":{"type":"m"}}}',
    ),
    "unknown-type-no-payload": Case("bare", '{"envelope_id":"bare","type":"\\u0000"}', "\ufffd"),
    "number-beyond-float-with-nul": Case(
        "num-nul", '{"envelope_id":"num-nul","type":"events_api","n":1e400,"s":"\\u0000"}'
    ),
    "large-and-tiny-numbers": Case(
        "numbers",
        '{"envelope_id":"numbers","type":"events_api","n":[1e300,-1e-300,123456789012345678901234567890,0.1]}',
    ),
}


REJECTED: dict[str, tuple[object, object]] = {
    "nul-in-id": ("bad\x00id", {"type": "events_api"}),
    "surrogate-in-id": ("bad\ud800", {"type": "events_api"}),
    "id-too-long": ("x" * 256, {"type": "events_api"}),
    "injection-id-mismatch": ("good", {"envelope_id": INJECTION}),
    "not-json": ("nj", "{'envelope_id': 'nj'}"),
    "truncated-json": ("tr", '{"envelope_id":"tr","payload":{'),
    "raw-lone-surrogate-in-str": ("raw", '{"envelope_id":"raw","t":"\udc80"}'),
    "invalid-utf8-bytes": ("b8", b'{"envelope_id":"b8","t":"\xc3\x28"}'),
    "bom": ("bom", '\ufeff{"envelope_id":"bom"}'),
    "nan": ("nan", '{"envelope_id":"nan","v":NaN}'),
    "array": ("arr", '[{"envelope_id":"arr"}]'),
    "deeper-than-the-decoder": ("deep", '{"d":' + "[" * 200_000 + "]" * 200_000 + "}"),
}


@pytest.fixture
def buffer(database_url: str) -> Iterator[SQLEventBuffer]:
    with SQLEventBuffer(database_url) as buf:
        yield buf


def expected_text(buf: SQLEventBuffer, case: Case) -> str:
    if isinstance(case.envelope, bytes):
        return case.envelope.decode("utf-8")
    if isinstance(case.envelope, str):
        return case.envelope
    return buf.parse(case.envelope_id, case.envelope).text


def expected_data(case: Case) -> dict[str, Any]:
    if isinstance(case.envelope, dict):
        return case.envelope
    data: dict[str, Any] = json.loads(case.envelope)
    return data


def stored_row(buf: SQLEventBuffer, envelope_id: str) -> sa.Row[Any]:
    with buf.engine.connect() as conn:
        rows = conn.execute(
            sa.select(envelopes).where(envelopes.c.envelope_id == envelope_id)
        ).all()
    assert len(rows) == 1
    return rows[0]


def row_count(buf: SQLEventBuffer) -> int:
    with buf.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(envelopes)).scalar_one())


def assert_next_good_envelope_is_new(buf: SQLEventBuffer) -> None:
    good = message("good-after", "fine")
    assert buf.record("good-after", good) is RecordResult.NEW
    assert buf.seen("good-after")
    assert stored_row(buf, "good-after").envelope_text == as_compact(good)


def as_compact(envelope: dict[str, Any]) -> str:
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_hostile_envelope_is_recorded_and_read_back_exactly(
    buffer: SQLEventBuffer, name: str
) -> None:
    case = RECORDED[name]
    assert buffer.record(case.envelope_id, case.envelope) is RecordResult.NEW
    assert buffer.record(case.envelope_id, case.envelope) is RecordResult.DUPLICATE
    assert buffer.seen(case.envelope_id)

    assert buffer.pending() == [expected_data(case)]
    row = stored_row(buffer, case.envelope_id)
    text = expected_text(buffer, case)
    assert row.envelope_text == text
    assert row.envelope_sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()
    for column in ("team_id", "channel_id", "user_id", "event_id", "event_type"):
        value = getattr(row, column)
        assert value is None or (isinstance(value, str) and len(value) <= MAX_COLUMN_LENGTH)

    if buffer.engine.dialect.name == "postgresql":
        with buffer.engine.connect() as conn:
            queried = conn.execute(
                sa.text(
                    "SELECT envelope->>'type', envelope->>'envelope_id', jsonb_typeof(envelope) "
                    "FROM envelopes WHERE envelope_id = :id"
                ),
                {"id": case.envelope_id},
            ).one()
        assert queried[0] == case.queryable_type
        assert queried[2] == "object"

    assert_next_good_envelope_is_new(buffer)
    assert row_count(buffer) == 2


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_hostile_envelope_is_rejected_and_nothing_is_stored(
    buffer: SQLEventBuffer, name: str
) -> None:
    envelope_id, envelope = REJECTED[name]
    with pytest.raises(InvalidEnvelope):
        buffer.record(envelope_id, envelope)  # type: ignore[arg-type]
    assert row_count(buffer) == 0
    assert_next_good_envelope_is_new(buffer)


def test_injection_strings_land_in_the_reporting_columns_as_plain_values(
    buffer: SQLEventBuffer,
) -> None:
    envelope = message("inj-cols", "x", channel=INJECTION, user=INJECTION)
    envelope["payload"]["team_id"] = INJECTION
    assert buffer.record("inj-cols", envelope) is RecordResult.NEW
    row = stored_row(buffer, "inj-cols")
    assert (row.team_id, row.channel_id, row.user_id) == (INJECTION, INJECTION, INJECTION)
    assert sa.inspect(buffer.engine).has_table("envelopes")
    buffer.delete("inj-cols")
    assert not buffer.seen("inj-cols")


def test_hostile_event_id_does_not_block_later_events(buffer: SQLEventBuffer) -> None:
    hostile = '{"envelope_id":"h1","type":"events_api","payload":{"event_id":"Ev\\u0000"}}'
    assert buffer.record("h1", hostile) is RecordResult.NEW
    assert stored_row(buffer, "h1").event_id is None
    retry = message("r1", "x")
    retry["payload"]["event_id"] = "Ev-shared"
    assert buffer.record("r1", retry) is RecordResult.NEW
    again = message("r2", "x")
    again["payload"]["event_id"] = "Ev-shared"
    assert buffer.record("r2", again) is RecordResult.DUPLICATE
    assert not buffer.seen("r2")


def five_megabyte_text() -> str:
    envelope = message("five-mb", "big")
    envelope["payload"]["event"]["blocks"] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{i:06d} " + "é😀x" * 500}}
        for i in range(1450)
    ]
    text = as_text(envelope)
    assert 5_000_000 < len(text.encode("utf-8")) < 6_000_000
    return text


def test_five_megabyte_text_is_rejected_at_the_default_limit(buffer: SQLEventBuffer) -> None:
    text = five_megabyte_text()
    size = len(text.encode("utf-8"))
    with pytest.raises(InvalidEnvelope) as raised:
        buffer.record("five-mb", text)
    assert f"{size:,} bytes" in str(raised.value)
    assert f"the limit is {DEFAULT_MAX_ENVELOPE_BYTES:,} bytes" in str(raised.value)
    assert row_count(buffer) == 0
    assert_next_good_envelope_is_new(buffer)


def test_five_megabyte_text_is_recorded_exactly_under_a_raised_limit(database_url: str) -> None:
    text = five_megabyte_text()
    with SQLEventBuffer(database_url, max_envelope_bytes=8 * 1024 * 1024) as buf:
        assert buf.record("five-mb", text) is RecordResult.NEW
        assert buf.record("five-mb", text.encode("utf-8")) is RecordResult.DUPLICATE
        assert buf.pending() == [json.loads(text)]
        row = stored_row(buf, "five-mb")
        assert row.envelope_text == text
        assert row.envelope_sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()
        if buf.engine.dialect.name == "postgresql":
            with buf.engine.connect() as conn:
                blocks = conn.execute(
                    sa.text(
                        "SELECT jsonb_array_length(envelope->'payload'->'event'->'blocks') "
                        "FROM envelopes WHERE envelope_id = 'five-mb'"
                    )
                ).scalar_one()
            assert blocks == 1450
        assert_next_good_envelope_is_new(buf)


def test_nul_and_surrogates_are_queryable_with_a_replacement_on_postgresql(pg_url: str) -> None:
    with SQLEventBuffer(pg_url) as buf:
        buf.record("q1", message("q1", "a\x00b \ud800 😀"))
        with buf.engine.connect() as conn:
            text, channel = conn.execute(
                sa.text(
                    "SELECT envelope->'payload'->'event'->>'text', "
                    "envelope->'payload'->'event'->>'channel' FROM envelopes"
                )
            ).one()
        assert text == "a\ufffdb \ufffd 😀"
        assert channel == "C0001"
        assert buf.pending() == [message("q1", "a\x00b \ud800 😀")]


def test_every_hostile_case_in_a_row_then_a_good_one(buffer: SQLEventBuffer) -> None:
    """One buffer, one after another: no hostile envelope spoils the ones that follow."""
    for case in RECORDED.values():
        assert buffer.record(case.envelope_id, case.envelope) is RecordResult.NEW
    for envelope_id, envelope in REJECTED.values():
        with pytest.raises(InvalidEnvelope):
            buffer.record(envelope_id, envelope)  # type: ignore[arg-type]
    assert buffer.pending() == [expected_data(case) for case in RECORDED.values()]
    assert_next_good_envelope_is_new(buffer)
    assert row_count(buffer) == len(RECORDED) + 1


def test_hostile_envelopes_through_the_batch_import_path(buffer: SQLEventBuffer) -> None:
    """``record_many`` (COPY on PostgreSQL, executemany on SQLite) keeps them exactly too."""
    parsed = [buffer.parse(case.envelope_id, case.envelope) for case in RECORDED.values()]
    assert buffer.record_many(parsed) == len(RECORDED)
    assert buffer.record_many(parsed) == 0
    by_id = {envelope["envelope_id"]: envelope for envelope in buffer.pending()}
    for case in RECORDED.values():
        row = stored_row(buffer, case.envelope_id)
        text = expected_text(buffer, case)
        assert row.envelope_text == text
        assert row.envelope_sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()
        assert by_id[case.envelope_id] == expected_data(case)
    assert_next_good_envelope_is_new(buffer)
