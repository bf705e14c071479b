"""MemoryEventBuffer beyond the shared contract: bounded memory, expiry edges, closing, limits."""

from __future__ import annotations

import pytest

from recorder.adapter import RecordResult
from recorder.adapters import MemoryEventBuffer
from recorder.errors import ConfigurationError, InvalidEnvelope, StorageUnavailable
from recorder.testing.conformance import events_api_envelope


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_memory_stays_bounded_under_a_steady_stream() -> None:
    clock = FakeClock()
    buffer = MemoryEventBuffer(ttl_seconds=10, clock=clock)
    for n in range(2_000):
        envelope_id = f"env-{n}"
        assert buffer.record(envelope_id, events_api_envelope(envelope_id)) is RecordResult.NEW
        clock.now += 1
        assert len(buffer) <= 10
    # Never completed, yet only the last TTL's worth is held (the clock moved
    # once more after the last record, so env-1990 just expired), event ids included.
    assert len(buffer.pending()) == 9
    assert len(buffer._event_ids) == 9
    assert [e["envelope_id"] for e in buffer.pending(limit=2)] == ["env-1991", "env-1992"]


def test_entry_lives_until_exactly_its_ttl() -> None:
    clock = FakeClock()
    buffer = MemoryEventBuffer(ttl_seconds=5, clock=clock)
    envelope = events_api_envelope("env-1")
    assert buffer.record("env-1", envelope) is RecordResult.NEW
    clock.now += 4.999
    assert buffer.seen("env-1")
    assert buffer.record("env-1", envelope) is RecordResult.DUPLICATE
    clock.now += 0.001
    assert not buffer.seen("env-1")
    assert buffer.record("env-1", envelope) is RecordResult.NEW


def test_rerecorded_entry_gets_a_fresh_ttl_and_keeps_order() -> None:
    clock = FakeClock()
    buffer = MemoryEventBuffer(ttl_seconds=10, clock=clock)
    assert buffer.record("a", events_api_envelope("a")) is RecordResult.NEW
    assert buffer.record("b", events_api_envelope("b")) is RecordResult.NEW
    buffer.delete("a")
    clock.now += 5
    assert buffer.record("a", events_api_envelope("a")) is RecordResult.NEW
    assert [e["envelope_id"] for e in buffer.pending()] == ["b", "a"]
    clock.now += 6
    assert not buffer.seen("b")
    assert buffer.seen("a")


def test_closed_buffer_raises_storage_unavailable_and_close_twice_is_harmless() -> None:
    buffer = MemoryEventBuffer()
    assert buffer.record("env-1", events_api_envelope("env-1")) is RecordResult.NEW
    buffer.close()
    buffer.close()
    with pytest.raises(StorageUnavailable, match="closed"):
        buffer.record("env-2", events_api_envelope("env-2"))
    with pytest.raises(StorageUnavailable):
        buffer.seen("env-1")
    with pytest.raises(StorageUnavailable):
        len(buffer)


def test_context_manager_closes() -> None:
    with MemoryEventBuffer() as buffer:
        assert buffer.record("env-1", events_api_envelope("env-1")) is RecordResult.NEW
    with pytest.raises(StorageUnavailable):
        buffer.pending()


def test_pending_returns_fresh_copies() -> None:
    buffer = MemoryEventBuffer()
    envelope = events_api_envelope("env-1")
    buffer.record("env-1", envelope)
    buffer.pending()[0]["payload"]["event"]["text"] = "tampered"
    assert buffer.pending() == [envelope]


def test_caller_mutating_its_envelope_after_record_changes_nothing_stored() -> None:
    buffer = MemoryEventBuffer()
    envelope = events_api_envelope("env-1", text="original")
    buffer.record("env-1", envelope)
    envelope["payload"]["event"]["text"] = "changed later"
    assert buffer.pending()[0]["payload"]["event"]["text"] == "original"


def test_negative_pending_limit_is_an_error() -> None:
    with pytest.raises(ValueError, match="limit"):
        MemoryEventBuffer().pending(limit=-1)


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), "300", True])
def test_bad_ttl_is_a_configuration_error(ttl: object) -> None:
    with pytest.raises(ConfigurationError, match="ttl_seconds"):
        MemoryEventBuffer(ttl_seconds=ttl)  # type: ignore[arg-type]


def test_size_limit_is_configurable_and_named_in_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small = MemoryEventBuffer(max_envelope_bytes=600)
    with pytest.raises(InvalidEnvelope, match="the limit is 600 bytes"):
        small.record("big", events_api_envelope("big", text="x" * 600))
    assert small.record("ok", events_api_envelope("ok")) is RecordResult.NEW

    monkeypatch.setenv("RECORDER_MAX_ENVELOPE_BYTES", "500")
    assert MemoryEventBuffer().max_envelope_bytes == 500
    monkeypatch.setenv("RECORDER_MAX_ENVELOPE_BYTES", "lots")
    with pytest.raises(ConfigurationError, match="RECORDER_MAX_ENVELOPE_BYTES"):
        MemoryEventBuffer()
