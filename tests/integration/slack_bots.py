"""A bot under test: a real slack_sdk client with a recording listener, against the simulator.

The async clients run on an event loop in a thread of their own, so tests
drive every client kind the same synchronous way.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from typing import Any

from slack_sdk.socket_mode.request import SocketModeRequest

from recorder.adapter import EventBufferAdapter
from recorder.slack import AsyncRecordingListener, RecordingListener
from recorder.testing import SocketModeSimulator

SYNC_KINDS = ("builtin", "websocket_client")
ASYNC_KINDS = ("aiohttp", "websockets")
#: Short pings keep the clients' monitors, reconnects and shutdown quick.
PING_INTERVAL = 1.0


class Calls:
    """Handler calls, thread-safe, with a wait."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.envelope_ids: list[str] = []
        self.requests: list[SocketModeRequest] = []

    def add(self, request: SocketModeRequest) -> None:
        with self._changed:
            self.envelope_ids.append(request.envelope_id)
            self.requests.append(request)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.envelope_ids) >= count, timeout):
                raise AssertionError(f"{len(self.envelope_ids)} of {count} handler calls")

    def counts(self) -> collections.Counter[str]:
        with self._changed:
            return collections.Counter(self.envelope_ids)

    def event_counts(self) -> collections.Counter[str]:
        """Calls per delivery chain: the event id (retries share it), else the envelope id."""
        with self._changed:
            return collections.Counter(
                delivery_key(r.envelope_id, r.payload) for r in self.requests
            )

    def __len__(self) -> int:
        with self._changed:
            return len(self.envelope_ids)


def delivery_key(envelope_id: str, payload: Any) -> str:
    event_id = payload.get("event_id") if isinstance(payload, dict) else None
    return str(event_id) if event_id else envelope_id


def delivery_keys(envelopes: list[dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(delivery_key(e["envelope_id"], e.get("payload")) for e in envelopes)


def recording_handler(calls: Calls, fail: Callable[[SocketModeRequest], bool] | None = None) -> Any:
    def handler(client: Any, request: SocketModeRequest) -> None:
        if fail is not None and fail(request):
            raise RuntimeError(f"handler failure for {request.envelope_id}")
        calls.add(request)

    return handler


class RecordingBot:
    """One client of ``kind`` with a (sync or async) recording listener attached."""

    def __init__(
        self,
        kind: str,
        sim: SocketModeSimulator,
        buffer: EventBufferAdapter,
        handler: Any,
        **options: Any,
    ) -> None:
        self.kind = kind
        self.sim = sim
        self.buffer = buffer
        self.handler = handler
        self.options = options
        self.listener: Any = None
        self.client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> RecordingBot:
        if self.kind in SYNC_KINDS:
            if self.kind == "builtin":
                from slack_sdk.socket_mode.builtin import SocketModeClient
            else:
                from slack_sdk.socket_mode.websocket_client import (  # type: ignore[assignment]
                    SocketModeClient,
                )
            self.client = SocketModeClient(
                app_token=self.sim.app_token,
                web_client=self.sim.web_client(),
                ping_interval=PING_INTERVAL,
            )
            self.listener = RecordingListener(self.buffer, self.handler, **self.options)
            self.listener.attach(self.client)
            self.client.connect()
            return self
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._run(self._start_async())
        return self

    async def _start_async(self) -> None:
        if self.kind == "aiohttp":
            from slack_sdk.socket_mode.aiohttp import SocketModeClient
        else:
            from slack_sdk.socket_mode.websockets import (  # type: ignore[assignment]
                SocketModeClient,
            )
        self.client = SocketModeClient(
            app_token=self.sim.app_token,
            web_client=self.sim.async_web_client(),
            ping_interval=PING_INTERVAL,
        )
        self.listener = AsyncRecordingListener(self.buffer, self.handler, **self.options)
        self.listener.attach(self.client)
        await self.client.connect()

    def _run(self, coro: Any, timeout: float = 15.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def recover(self) -> int:
        if self.kind in SYNC_KINDS:
            return int(self.listener.recover())
        return int(self._run(self.listener.recover()))

    def stop(self) -> None:
        if self.client is None:
            return
        if self.kind in SYNC_KINDS:
            self.client.close()
            self.listener.close()
            return
        self._run(self.client.close())
        self._run(self.listener.close())
        assert self._loop is not None
        assert self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> RecordingBot:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def mixed_stream(sim: SocketModeSimulator, count: int) -> list[dict[str, Any]]:
    """``count`` envelopes as a workspace sends them: mostly events, some commands and clicks."""
    factory = sim.envelopes
    envelopes: list[dict[str, Any]] = []
    for i in range(count):
        kind = i % 10
        if kind == 7:
            envelopes.append(factory.slash_command("/deploy", f"service-{i}"))
        elif kind == 8:
            envelopes.append(factory.block_actions("approve", f"v{i}"))
        elif kind == 9:
            envelopes.append(factory.app_mention(f"<@U0SIMBOT> question {i}"))
        elif kind == 6:
            envelopes.append(factory.reaction_added("eyes"))
        else:
            envelopes.append(factory.message(f"message {i}"))
    return envelopes


def play_with_duplicates(
    sim: SocketModeSimulator, envelopes: list[dict[str, Any]], *, retransmits: int, retries: int
) -> None:
    """Send every envelope, then exact retransmits of some and Slack retries of others."""
    for envelope in envelopes:
        sim.send(envelope)
    for envelope in envelopes[:retransmits]:
        sim.retransmit(envelope["envelope_id"])
    events = [e for e in envelopes[retransmits:] if e["type"] == "events_api"]
    assert len(events) >= retries
    for envelope in events[:retries]:
        sim.retry(envelope)


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` (for state the simulator does not track)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
