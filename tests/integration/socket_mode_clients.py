"""Real slack_sdk Socket Mode clients behind one synchronous test harness.

:class:`Bot` runs any of the four slack_sdk clients (builtin, websocket_client,
aiohttp, websockets) against a :class:`~recorder.testing.SocketModeSimulator`.
The async clients run on an event loop in a thread of their own, so a test
drives all four the same way. A bot keeps every frame and request it received
and answers each request with ``respond(request)`` (an ack by default; ``None``
sends none).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from slack_sdk import WebClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from recorder.testing import SocketModeSimulator
from recorder.testing.simulator import SimulatorError

SYNC_KINDS = ("builtin", "websocket_client")
ASYNC_KINDS = ("aiohttp", "websockets")
ALL_KINDS = SYNC_KINDS + ASYNC_KINDS

#: Short pings keep the clients' connection monitors (and reconnects) quick.
PING_INTERVAL = 1.0

Responder = Callable[[SocketModeRequest], SocketModeResponse | None]


def ack(request: SocketModeRequest) -> SocketModeResponse:
    """Plain ack: the envelope id, no payload."""
    return SocketModeResponse(envelope_id=request.envelope_id)


class Bot:
    """One real Socket Mode client connected to a simulator."""

    def __init__(
        self,
        kind: str,
        sim: SocketModeSimulator,
        respond: Responder = ack,
        *,
        wait_for_hello: bool = True,
    ) -> None:
        if kind not in ALL_KINDS:
            raise ValueError(kind)
        self.kind = kind
        self.sim = sim
        self.respond = respond
        self.wait_for_hello = wait_for_hello
        self.frames: list[dict[str, Any]] = []
        self.requests: list[SocketModeRequest] = []
        self._changed = threading.Condition()
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # receiving ------------------------------------------------------------

    def _on_frame(self, message: dict[str, Any]) -> None:
        with self._changed:
            self.frames.append(message)
            self._changed.notify_all()

    def _answer(self, request: SocketModeRequest) -> SocketModeResponse | None:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()
        return self.respond(request)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[SocketModeRequest]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{self.kind}: {len(self.requests)} of {count} requests")
            return list(self.requests)

    def envelope_ids(self) -> list[str]:
        with self._changed:
            return [request.envelope_id for request in self.requests]

    # lifecycle ---------------------------------------------------------------

    def start(self) -> Bot:
        before = self.sim.total_connections
        if self.kind in SYNC_KINDS:
            self._start_sync()
        else:
            self._start_async()
        self.sim.wait_for(
            lambda: self.sim.total_connections > before and self.sim.connection_count > 0,
            what=f"{self.kind} to connect",
        )
        if not self.wait_for_hello:
            return self
        # The hello has reached the client: it is fully set up and safe to close.
        with self._changed:
            assert self._changed.wait_for(
                lambda: any(f.get("type") == "hello" for f in self.frames), 10
            ), f"{self.kind} got no hello"
        return self

    def _start_sync(self) -> None:
        web_client = WebClient(base_url=self.sim.api_url)
        if self.kind == "builtin":
            from slack_sdk.socket_mode.builtin import SocketModeClient as Builtin

            client: Any = Builtin(
                app_token=self.sim.app_token, web_client=web_client, ping_interval=PING_INTERVAL
            )
        else:
            from slack_sdk.socket_mode.websocket_client import SocketModeClient as WsClient

            client = WsClient(
                app_token=self.sim.app_token, web_client=web_client, ping_interval=PING_INTERVAL
            )

        def on_message(_client: Any, message: dict[str, Any], _raw: str | None) -> None:
            self._on_frame(message)

        def on_request(client: Any, request: SocketModeRequest) -> None:
            response = self._answer(request)
            if response is not None:
                client.send_socket_mode_response(response)

        client.message_listeners.append(on_message)
        client.socket_mode_request_listeners.append(on_request)
        self._client = client
        client.connect()

    def _start_async(self) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"bot-{self.kind}", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        asyncio.run_coroutine_threadsafe(self._connect_async(), loop).result(10)

    async def _connect_async(self) -> None:
        web_client = AsyncWebClient(base_url=self.sim.api_url)
        if self.kind == "aiohttp":
            from slack_sdk.socket_mode.aiohttp import SocketModeClient as AiohttpClient

            client: Any = AiohttpClient(
                app_token=self.sim.app_token, web_client=web_client, ping_interval=PING_INTERVAL
            )
        else:
            from slack_sdk.socket_mode.websockets import SocketModeClient as WebsocketsClient

            client = WebsocketsClient(
                app_token=self.sim.app_token, web_client=web_client, ping_interval=PING_INTERVAL
            )

        async def on_message(_client: Any, message: dict[str, Any], _raw: str | None) -> None:
            self._on_frame(message)

        async def on_request(client: Any, request: SocketModeRequest) -> None:
            response = self._answer(request)
            if response is not None:
                await client.send_socket_mode_response(response)

        client.message_listeners.append(on_message)
        client.socket_mode_request_listeners.append(on_request)
        self._client = client
        await client.connect()

    def send_raw(self, frame: dict[str, Any]) -> None:
        """Send any frame from the client (as an ack would go)."""
        if self._loop is None:
            self._client.send_socket_mode_response(frame)
        else:
            asyncio.run_coroutine_threadsafe(
                self._client.send_socket_mode_response(frame), self._loop
            ).result(10)

    def close(self) -> None:
        if self._client is None:
            return
        if self._loop is None:
            self._wake_sync_receiver()
            self._client.close()
        else:
            loop = self._loop
            asyncio.run_coroutine_threadsafe(self._close_async(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            assert self._thread is not None
            self._thread.join(10)
            loop.close()
            self._loop = None
        self._client = None

    def connection_id(self) -> str | None:
        """The simulator's id of the connection that sent the latest hello."""
        with self._changed:
            hellos = [f for f in self.frames if f.get("type") == "hello"]
        if not hellos:
            return None
        return str(hellos[-1]["debug_info"]["host"]).rsplit("-", 1)[-1]

    def _wake_sync_receiver(self) -> None:
        # The sync clients' receive threads block in recv/select for up to 3 s
        # (builtin) or 10 s (websocket_client) before they notice close(); a
        # close frame from the server wakes them at once. Reconnecting is
        # switched off first, so the close reads as the end, as close() would.
        self._client.closed = True
        self._client.auto_reconnect_enabled = False
        connection = self.connection_id()
        if connection is not None and self.sim.running:
            with contextlib.suppress(SimulatorError):
                self.sim.close_connections(connection)

    async def _close_async(self) -> None:
        await self._client.close()
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def __enter__(self) -> Bot:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
