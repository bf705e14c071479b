"""Fuzzed envelopes on SQLite and PostgreSQL: recorded exactly (after redaction) or InvalidEnvelope.

Hypothesis generates arbitrary JSON (any Unicode, NUL and lone surrogates
included; nesting; huge and empty strings), given to ``record`` as a dict,
as JSON text or as UTF-8 bytes. Whatever happens, ``record`` raises nothing
but InvalidEnvelope, the next good envelope is still recorded, and what
``query`` and the JSON Lines export return decodes to the input with the
default redaction applied.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import itertools
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from recorder.adapter import RecordResult
from recorder.adapters.sql import SQLEventBuffer
from recorder.audit import QuerySpec, query_envelopes, write_jsonl
from recorder.engine import create_engine
from recorder.envelope import DEFAULT_MAX_ENVELOPE_BYTES, Redaction, decode_stored
from recorder.errors import InvalidEnvelope

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 1, tzinfo=UTC)

# Every code point: NUL, controls, lone surrogates, astral characters.
ANY_CHAR = st.characters(exclude_categories=())
TEXT = st.text(ANY_CHAR, max_size=40)
HUGE = st.builds(
    lambda n, c: c * n,
    st.sampled_from([0, 1, 70_000, 600_000, DEFAULT_MAX_ENVELOPE_BYTES + 1]),
    st.sampled_from(["a", "é", "😀", "\x00", "\ud800", '"']),
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=25,
)


def _nest(depth: int, leaf: Any) -> Any:
    for level in range(depth):
        leaf = [leaf] if level % 2 else {"k": leaf}
    return leaf


DEEP = st.builds(_nest, st.integers(min_value=1, max_value=400), SCALARS)
SECRETS = st.fixed_dictionaries(
    {},
    optional={
        "token": TEXT,
        "response_url": TEXT | st.integers(),
        "response_urls": st.lists(st.fixed_dictionaries({"response_url": TEXT}), max_size=2),
    },
)


@st.composite
def envelopes(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    envelope_id = draw(
        st.one_of(
            st.just("fz-"),
            st.just("fz-\x00"),
            st.just("fz-\udc80"),
            st.text(ANY_CHAR, min_size=0, max_size=10).map(lambda t: "fz-" + t),
        )
    )
    envelope_id = f"{envelope_id}{uuid.uuid4().hex}" if draw(st.booleans()) else envelope_id
    payload = draw(st.dictionaries(TEXT, JSON | DEEP | HUGE, max_size=4))
    payload.update(draw(SECRETS))
    payload.pop("event_id", None)
    kind = draw(st.sampled_from(["events_api", "slash_commands", "interactive", "hello"]) | TEXT)
    if kind == "events_api":
        # a unique event_id: a collision with an earlier example would be a (correct) DUPLICATE
        payload["event_id"] = f"Ev{uuid.uuid4().hex}"
    envelope: dict[str, Any] = {"envelope_id": envelope_id, "type": kind, "payload": payload}
    envelope.update(draw(st.dictionaries(TEXT, JSON, max_size=3)))
    envelope["envelope_id"] = envelope_id
    return envelope_id, envelope


def _as_input(envelope: dict[str, Any], form: str) -> Any:
    if form == "dict":
        return envelope
    if form == "ascii-text":
        return json.dumps(envelope, ensure_ascii=True)
    if form == "unicode-text":
        # a lone surrogate here is a raw str that cannot be UTF-8: InvalidEnvelope
        return json.dumps(envelope, ensure_ascii=False, indent=1)
    return json.dumps(envelope, ensure_ascii=True).encode("utf-8")


@pytest.fixture
def recorder_engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def test_fuzzed_envelopes_round_trip_or_are_invalid(recorder_engine: Engine) -> None:
    seconds = itertools.count()
    stamp: list[dt.datetime] = [T0]
    buffer = SQLEventBuffer(recorder_engine, clock=lambda: stamp[0])
    outcomes = {"recorded": 0, "invalid": 0}
    recorded: set[str] = set()

    @settings(
        max_examples=120,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(
        drawn=envelopes(),
        form=st.sampled_from(["dict", "ascii-text", "unicode-text", "bytes"]),
    )
    def check(drawn: tuple[str, dict[str, Any]], form: str) -> None:
        envelope_id, envelope = drawn
        stamp[0] = T0 + dt.timedelta(seconds=next(seconds))
        given_input = _as_input(envelope, form)
        snapshot = json.dumps(envelope, ensure_ascii=True)
        try:
            result = buffer.record(envelope_id, given_input)
        except InvalidEnvelope:
            outcomes["invalid"] += 1
            good = f"good-{uuid.uuid4().hex}"
            assert buffer.record(good, {"type": "hello"}) is RecordResult.NEW
            return
        # the caller's envelope is untouched
        assert json.dumps(envelope, ensure_ascii=True) == snapshot
        if envelope_id in recorded:
            # a short id drawn again (or an example replayed): first write wins
            assert result is RecordResult.DUPLICATE
            return
        assert result is RecordResult.NEW
        recorded.add(envelope_id)
        outcomes["recorded"] += 1

        expected = Redaction.default().apply(envelope)[0]
        rows = list(
            query_envelopes(
                recorder_engine,
                QuerySpec(since=stamp[0], until=stamp[0] + dt.timedelta(seconds=1)),
            )
        )
        assert [row.envelope_id for row in rows] == [envelope_id]
        row = rows[0]
        assert decode_stored(row.envelope_text) == expected
        assert row.envelope_sha256 == hashlib.sha256(row.envelope_text.encode("utf-8")).hexdigest()
        exported = io.BytesIO()
        assert write_jsonl(rows, exported) == 1
        assert json.loads(exported.getvalue().decode("utf-8")) == expected
        if form != "dict" and expected == json.loads(given_input):
            # nothing redacted: the exact text given is the text kept
            text = given_input.decode() if isinstance(given_input, bytes) else given_input
            assert row.envelope_text == text

    check()
    # the generator must exercise both outcomes, or the test proves little
    assert outcomes["recorded"] > 10, outcomes
    assert outcomes["invalid"] > 0, outcomes
