"""RecordingListener / AsyncRecordingListener with the real slack_sdk clients against the simulator."""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from slack_sdk.socket_mode.request import SocketModeRequest

from recorder.adapters.sql import SQLEventBuffer
from recorder.testing import SocketModeSimulator
from tests.integration.slack_bots import (
    Calls,
    RecordingBot,
    delivery_keys,
    mixed_stream,
    play_with_duplicates,
    recording_handler,
)


@pytest.fixture
def sim() -> Iterator[SocketModeSimulator]:
    with SocketModeSimulator(redeliver_after=None, seed=3) as simulator:
        yield simulator


@pytest.fixture
def sqlite_buffer(sqlite_url: str) -> Iterator[SQLEventBuffer]:
    with SQLEventBuffer(sqlite_url) as sql_buffer:
        yield sql_buffer


def assert_every_frame_acked(sim: SocketModeSimulator) -> None:
    deliveries = collections.Counter(d.envelope_id for d in sim.deliveries)
    acks = collections.Counter(a.envelope_id for a in sim.acks)
    assert acks == deliveries


@pytest.mark.parametrize(
    ("kind", "backend"),
    [
        ("builtin", "sqlite_url"),
        ("websocket_client", "sqlite_url"),
        ("aiohttp", "sqlite_url"),
        ("websockets", "sqlite_url"),
        ("builtin", "pg_url"),
        ("aiohttp", "pg_url"),
    ],
)
def test_each_envelope_handled_once_and_every_frame_acked(
    kind: str,
    backend: str,
    sim: SocketModeSimulator,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    buffer = SQLEventBuffer(request.getfixturevalue(backend))
    request.addfinalizer(buffer.close)
    calls = Calls()
    envelopes = mixed_stream(sim, 50)
    with RecordingBot(kind, sim, buffer, recording_handler(calls), spool_path=tmp_path / "s.db"):
        sim.wait_for_connections(1)
        play_with_duplicates(sim, envelopes, retransmits=20, retries=10)
        sim.wait_for_acks(80, timeout=15)
        calls.wait_for(50)
    # Leaving the block closes the listener, which waits for running handlers:
    # a wrongly dispatched duplicate has been counted by now.

    # A retry may overtake its original (the clients process frames concurrently);
    # either way each event is handled exactly once.
    assert len(calls) == 50
    assert calls.event_counts() == delivery_keys(envelopes)
    assert len(sim.acks) == 80
    assert_every_frame_acked(sim)
    assert buffer.count_pending() == 0


def test_whole_frame_is_recorded_with_retry_fields(
    sim: SocketModeSimulator, sqlite_buffer: SQLEventBuffer, tmp_path: Path
) -> None:
    buffer = sqlite_buffer
    calls = Calls()
    retry = sim.envelopes.retry_of(sim.envelopes.message("original"), reason="http_timeout")
    with RecordingBot("builtin", sim, buffer, recording_handler(calls), spool_path=tmp_path / "s"):
        sim.wait_for_connections(1)
        sim.send(retry)
        sim.wait_for_acks(1)
        calls.wait_for(1)

    with buffer.engine.connect() as conn:
        stored = conn.execute(
            sa.text(
                "SELECT envelope_text, retry_attempt, retry_reason FROM envelopes"
                " WHERE envelope_id = :id"
            ),
            {"id": retry["envelope_id"]},
        ).one()
    frame = json.loads(stored[0])
    # Secrets are redacted on record; everything else is the frame as sent.
    assert frame["payload"].pop("token") != retry["payload"].pop("token")
    assert frame == retry
    assert (frame["retry_attempt"], frame["retry_reason"]) == (1, "http_timeout")
    assert (stored[1], stored[2]) == (1, "http_timeout")
    assert "accepts_response_payload" in frame


def test_slow_handler_does_not_delay_other_acks(
    sim: SocketModeSimulator, sqlite_buffer: SQLEventBuffer, tmp_path: Path
) -> None:
    calls = Calls()
    release = threading.Event()

    def slow(client: object, request: SocketModeRequest) -> None:
        release.wait(10)
        calls.add(request)

    envelopes = [sim.envelopes.message(f"m{i}") for i in range(12)]
    bot = RecordingBot(
        "builtin", sim, sqlite_buffer, slow, spool_path=tmp_path / "s", max_workers=2
    )
    with bot:
        sim.wait_for_connections(1)
        for envelope in envelopes:
            sim.send(envelope)
        # Every handler thread is stuck, yet every envelope is acked.
        sim.wait_for_acks(12, timeout=5)
        assert len(calls) == 0
        release.set()
        calls.wait_for(12)
    assert len(calls) == 12


def test_async_handler_runs_on_the_loop(
    sim: SocketModeSimulator, sqlite_buffer: SQLEventBuffer, tmp_path: Path
) -> None:
    buffer = sqlite_buffer
    calls = Calls()

    async def handler(client: object, request: SocketModeRequest) -> None:
        calls.add(request)

    envelopes = [sim.envelopes.message(f"m{i}") for i in range(5)]
    with RecordingBot("aiohttp", sim, buffer, handler, spool_path=tmp_path / "s"):
        sim.wait_for_connections(1)
        for envelope in envelopes:
            sim.send(envelope)
        sim.wait_for_acks(5)
        calls.wait_for(5)
    # Closed: handlers waited for, completions written.
    assert sorted(calls.envelope_ids) == sorted(e["envelope_id"] for e in envelopes)
    assert buffer.count_pending() == 0


def test_any_adapter_works_without_recovery(sim: SocketModeSimulator, tmp_path: Path) -> None:
    """The in-memory adapter has no claims: recording and dedupe work, recovery is off."""
    from recorder.adapters.memory import MemoryEventBuffer

    calls = Calls()
    buffer = MemoryEventBuffer(ttl_seconds=60)
    envelopes = mixed_stream(sim, 10)
    bot = RecordingBot("aiohttp", sim, buffer, recording_handler(calls), spool_path=tmp_path / "s")
    with bot:
        sim.wait_for_connections(1)
        play_with_duplicates(sim, envelopes, retransmits=4, retries=2)
        sim.wait_for_acks(16)
        calls.wait_for(10)
        assert bot.recover() == 0
    assert calls.event_counts() == delivery_keys(envelopes)
    assert buffer.pending() == []
