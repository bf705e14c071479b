"""recorder.slack.bolt handlers with real Bolt apps against the simulator."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from slack_bolt import App
from slack_bolt.async_app import AsyncApp

from recorder.adapters.sql import SQLEventBuffer
from recorder.slack.bolt import AsyncSocketModeHandler, SocketModeHandler
from recorder.testing import ManualClock, SocketModeSimulator
from tests.integration.slack_bots import (
    delivery_key,
    delivery_keys,
    play_with_duplicates,
    wait_until,
)


@pytest.fixture
def sim() -> Iterator[SocketModeSimulator]:
    with SocketModeSimulator(redeliver_after=None, seed=5) as simulator:
        yield simulator


@pytest.fixture
def buffer(sqlite_url: str) -> Iterator[SQLEventBuffer]:
    with SQLEventBuffer(sqlite_url) as sql_buffer:
        yield sql_buffer


class Seen:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: list[str] = []
        self.context_ids: list[str] = []

    def add(self, body: dict[str, Any], context: Any) -> None:
        with self.lock:
            payload_key = body.get("event_id") or context["envelope_id"]
            self.keys.append(payload_key)
            self.context_ids.append(context["envelope_id"])


def bolt_stream(sim: SocketModeSimulator) -> list[dict[str, Any]]:
    """40 messages, 5 slash commands (answered in the ack), 5 view submissions."""
    factory = sim.envelopes
    envelopes = [factory.message(f"m{i}") for i in range(40)]
    envelopes += [factory.slash_command("/deploy", f"svc{i}") for i in range(5)]
    envelopes += [factory.view_submission("modal") for _ in range(5)]
    return envelopes


def check_results(sim: SocketModeSimulator, envelopes: list[dict[str, Any]], seen: Seen) -> None:
    assert len(seen.keys) == 50
    assert collections.Counter(seen.keys) == delivery_keys(envelopes)
    deliveries = collections.Counter(d.envelope_id for d in sim.deliveries)
    assert collections.Counter(a.envelope_id for a in sim.acks) == deliveries
    by_id = {e["envelope_id"]: e for e in envelopes}
    answered = {a.envelope_id: a.payload for a in sim.acks if a.payload and a.envelope_id in by_id}
    commands = [e["envelope_id"] for e in envelopes if e["type"] == "slash_commands"]
    views = [e["envelope_id"] for e in envelopes if e["type"] == "interactive"]
    for envelope_id in commands:
        # The app's ack payload reached Slack, with the envelope id from the context.
        assert answered[envelope_id] == {"text": f"deploying, envelope {envelope_id}"}
    for envelope_id in views:
        assert answered[envelope_id] == {"response_action": "clear"}
    # Each handled envelope's context carried its own id.
    for key, context_id in zip(seen.keys, seen.context_ids, strict=True):
        envelope = sim.envelope(context_id)
        assert delivery_key(context_id, envelope.get("payload")) == key


def test_bolt_app_handles_each_once_and_answers_in_the_ack(
    sim: SocketModeSimulator, buffer: SQLEventBuffer, tmp_path: Path
) -> None:
    seen = Seen()
    # Bolt runs listeners in this pool after the ack; shutting it down waits for them.
    listeners = ThreadPoolExecutor(max_workers=10)
    app = App(client=sim.web_client(), listener_executor=listeners)

    @app.event("message")
    def on_message(body: dict[str, Any], context: Any) -> None:
        seen.add(body, context)

    @app.command("/deploy")
    def deploy(ack: Any, body: dict[str, Any], context: Any) -> None:
        ack(text=f"deploying, envelope {context['envelope_id']}")
        seen.add(body, context)

    @app.view("modal")
    def submitted(ack: Any, body: dict[str, Any], context: Any) -> None:
        ack(response_action="clear")
        seen.add(body, context)

    envelopes = bolt_stream(sim)
    unhandled = sim.envelopes.reaction_added()
    handler = SocketModeHandler(
        app, sim.app_token, ping_interval=1, buffer=buffer, spool_path=tmp_path / "spool.db"
    )
    handler.connect()
    try:
        sim.wait_for_connections(1)
        play_with_duplicates(sim, envelopes, retransmits=20, retries=10)
        sim.send(unhandled)
        sim.wait_for_acks(81, timeout=15)
    finally:
        handler.close()
        listeners.shutdown(wait=True)  # every listener call Bolt started has returned

    check_results(sim, envelopes, seen)
    # No listener for reaction_added: still acked, recorded, and not left pending.
    assert sim.acked(unhandled["envelope_id"])
    assert buffer.seen(unhandled["envelope_id"])
    assert buffer.count_pending() == 0
    assert handler.stats.outcomes == {"new": 51, "duplicate": 30}


def test_async_bolt_app_handles_each_once_and_answers_in_the_ack(
    sim: SocketModeSimulator, buffer: SQLEventBuffer, tmp_path: Path
) -> None:
    seen = Seen()
    envelopes = bolt_stream(sim)

    async def scenario() -> None:
        app = AsyncApp(client=sim.async_web_client())

        @app.event("message")
        async def on_message(body: dict[str, Any], context: Any) -> None:
            seen.add(body, context)

        @app.command("/deploy")
        async def deploy(ack: Any, body: dict[str, Any], context: Any) -> None:
            await ack(text=f"deploying, envelope {context['envelope_id']}")
            seen.add(body, context)

        @app.view("modal")
        async def submitted(ack: Any, body: dict[str, Any], context: Any) -> None:
            await ack(response_action="clear")
            seen.add(body, context)

        handler = AsyncSocketModeHandler(
            app, sim.app_token, ping_interval=1, buffer=buffer, spool_path=tmp_path / "spool.db"
        )
        await handler.connect_async()
        try:
            await sim.wait_for_connections_async(1)
            play_with_duplicates(sim, envelopes, retransmits=20, retries=10)
            await sim.wait_for_acks_async(80, timeout=15)
            # Every dispatch was decided before its ack: 50 for the app, 30 duplicates.
            assert handler.stats.outcomes == {"new": 50, "duplicate": 30}
            assert handler.stats.dispatched == 50
            await sim.wait_for_async(lambda: len(seen.keys) >= 50, timeout=15)
        finally:
            await handler.close_async()

    asyncio.run(scenario())
    check_results(sim, envelopes, seen)
    assert buffer.count_pending() == 0


def test_bolt_listener_failure_leaves_the_envelope_pending_for_recovery(
    sim: SocketModeSimulator, buffer: SQLEventBuffer, sqlite_url: str, tmp_path: Path
) -> None:
    attempts: list[int] = []
    clock = ManualClock()
    clocked = SQLEventBuffer(sqlite_url, clock=clock.now)
    app = App(client=sim.web_client(), process_before_response=True)

    @app.event("message")
    def on_message(context: Any) -> None:
        attempts.append(context["envelope_attempt"])
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    handler = SocketModeHandler(
        app,
        sim.app_token,
        ping_interval=1,
        buffer=clocked,
        spool_path=tmp_path / "spool.db",
        lease_seconds=60,
        recovery_interval=10,
        monotonic=clock.monotonic,
        clock=clock.now,
    )
    envelope = sim.envelopes.message("flaky")
    handler.connect()
    try:
        sim.wait_for_connections(1)
        sim.send(envelope)
        sim.wait_for_acks(1)  # after the app ran: process_before_response
        assert attempts == [1]
        clock.advance(61)  # the lease runs out; the next recovery is due
        wait_until(lambda: len(attempts) >= 2, what="recovery")
        wait_until(lambda: buffer.count_pending() == 0, what="the completion")
        clock.advance(120)  # more leases: it is not run again
        assert handler.recover() == 0
    finally:
        handler.close()
        clocked.close()
    assert attempts == [1, 2]
    assert buffer.count_pending() == 0
