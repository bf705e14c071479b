"""The Socket Mode simulator's server: the event loop thread, the Web API and the WebSocket link.

:class:`SimulatorServer` holds what happens on the wire (``apps.connections.open``,
``hello``, envelope frames, acks, pings, ``disconnect``, redelivery on
timeout) and the bookkeeping of what was sent and acked. The public API,
:class:`recorder.simulator.SocketModeSimulator`, builds on it; nothing here
is called by users directly. Over 450 lines: one protocol state machine
whose handlers share the state declared below; split apart, each would
reach into the others.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Coroutine, Mapping
from typing import Any, Literal, TypeVar

from recorder.errors import MissingDependency

try:
    from aiohttp import WSCloseCode, WSMsgType, web
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependency("aiohttp", "slack") from exc

from recorder.simulator.envelopes import EnvelopeFactory, SimulatorError
from recorder.simulator.records import (
    Ack,
    Connection,
    Delivery,
    DeliveryKind,
    Tracked,
)

__all__ = ["SimulatorServer", "run_loop"]

logger = logging.getLogger("recorder.simulator")

_T = TypeVar("_T")


def run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The simulator thread: serve until stopped, then close the loop here.

    Closing in this thread rather than the caller's lets ``stop()`` (and a
    ``with`` block) be used from code that has an event loop of its own
    running, such as an async test.
    """
    try:
        loop.run_forever()
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


class SimulatorServer:
    """The server half of :class:`~recorder.simulator.SocketModeSimulator`."""

    # State, set by SocketModeSimulator.__init__; guarded by ``_changed``.
    _app_token: str | None
    _host: str
    _requested_port: int
    redeliver_after: float | None
    max_retries: int
    redeliver_types: frozenset[str]
    spread: Literal["round_robin", "random"]
    close_after: float | None
    ping_interval: float | None
    send_hello: bool
    _random: random.Random
    _round_robin: itertools.count[int]
    _connection_numbers: itertools.count[int]
    _changed: threading.Condition
    _generation: int
    _connections: dict[str, Connection]
    _tickets: set[str]
    _tracked: dict[str, Tracked]
    _acked_chains: set[str]
    _unsettled: dict[str, None]
    _chain_members: dict[str, list[str]]
    _deliveries: list[Delivery]
    _acks: list[Ack]
    _stray_frames: list[str]
    _api_calls: list[tuple[str, dict[str, str]]]
    _outbox: collections.deque[tuple[str, DeliveryKind]]
    _loop: asyncio.AbstractEventLoop | None
    _thread: threading.Thread | None
    _runner: web.AppRunner | None
    _tasks: set[asyncio.Task[Any]]
    _port: int | None
    _stopping: bool
    _flushing: bool
    envelopes: EnvelopeFactory

    @property
    def port(self) -> int:
        """The port served on."""
        if self._port is None:
            raise SimulatorError(
                "the simulator is not running; call start() or use it in a with block"
            )
        return self._port

    # bookkeeping (any thread) ----------------------------------------------------

    def _chain_of(self, envelope: Mapping[str, Any]) -> str:
        envelope_id = envelope.get("envelope_id")
        with self._changed:
            if isinstance(envelope_id, str) and envelope_id in self._tracked:
                return self._tracked[envelope_id].chain
        payload = envelope.get("payload")
        if envelope.get("type") == "events_api" and isinstance(payload, Mapping):
            event_id = payload.get("event_id")
            if isinstance(event_id, str) and event_id:
                return f"event:{event_id}"
        return f"envelope:{envelope_id}"

    def _track(self, envelope: Mapping[str, Any], *, chain: str | None = None) -> str:
        if not isinstance(envelope, Mapping):
            raise SimulatorError(f"an envelope is a mapping, not {type(envelope).__name__}")
        envelope_id = envelope.get("envelope_id")
        if not isinstance(envelope_id, str) or not envelope_id:
            raise SimulatorError("the envelope needs a non-empty string 'envelope_id'")
        if not isinstance(envelope.get("type"), str):
            raise SimulatorError("the envelope needs a string 'type'")
        try:
            text = json.dumps(envelope)
        except (TypeError, ValueError) as exc:
            raise SimulatorError(f"the envelope is not JSON-serialisable: {exc}") from exc
        chain = chain or self._chain_of(envelope)
        with self._changed:
            tracked = self._tracked.get(envelope_id)
            if tracked is None:
                self._tracked[envelope_id] = Tracked(json.loads(text), text, chain)
                self._chain_members[chain].append(envelope_id)
                if chain not in self._acked_chains:
                    self._unsettled[envelope_id] = None
            else:
                # Sending an id again re-sends what was first sent under it, as a
                # retransmit would; a changed body under a used id is a test bug.
                if tracked.text != text:
                    raise SimulatorError(
                        f"envelope {envelope_id} was already sent with different content"
                    )
        return envelope_id

    def _require_tracked(self, envelope_id: str) -> Tracked:
        with self._changed:
            tracked = self._tracked.get(envelope_id)
        if tracked is None:
            raise SimulatorError(f"no envelope {envelope_id!r} was sent by this simulator")
        return tracked

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise SimulatorError(
                "the simulator is not running; call start() or use it in a with block"
            )
        if threading.current_thread() is self._thread:
            coro.close()
            raise SimulatorError("the simulator's blocking API cannot be called from its own loop")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def _halt_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(10)
        self._loop, self._thread, self._port, self._runner = None, None, None, None

    def _notify(self) -> None:
        with self._changed:
            self._signal()

    def _signal(self) -> None:
        """Wake the waits; the caller holds ``self._changed``."""
        self._generation += 1
        self._changed.notify_all()

    # the server (loop thread) ------------------------------------------------------

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/link/", self._link)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._requested_port))
        except OSError as exc:
            sock.close()
            await runner.cleanup()
            raise SimulatorError(
                f"cannot listen on {self._host}:{self._requested_port}: {exc}"
            ) from exc
        site = web.SockSite(runner, sock)
        await site.start()
        self._runner = runner
        self._port = sock.getsockname()[1]

    async def _shutdown(self) -> None:
        self._stopping = True
        with self._changed:
            for tracked in self._tracked.values():
                if tracked.timer is not None:
                    tracked.timer.cancel()
                    tracked.timer = None
            conns = [c for c in self._connections.values() if c.closed_ns is None]
        await asyncio.gather(
            *(self._close(conn, int(WSCloseCode.GOING_AWAY)) for conn in conns),
            return_exceptions=True,
        )
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        self._notify()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, str] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                with contextlib.suppress(ValueError):
                    body = await request.json()
                    if isinstance(body, dict):
                        params.update({k: str(v) for k, v in body.items()})
            else:
                params.update({k: str(v) for k, v in (await request.post()).items()})
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else params.get("token", "")
        params.pop("token", None)
        with self._changed:
            self._api_calls.append((method, params))
            self._signal()
        if method == "apps.connections.open":
            return web.json_response(self._connections_open(token))
        if method == "auth.test":
            return web.json_response(self._auth_test(token))
        return web.json_response({"ok": True})

    def _connections_open(self, token: str) -> dict[str, Any]:
        if not token:
            return {"ok": False, "error": "not_authed"}
        if not token.startswith("xapp-"):
            return {"ok": False, "error": "not_allowed_token_type"}
        if self._app_token is not None and token != self._app_token:
            return {"ok": False, "error": "invalid_auth"}
        ticket = uuid.uuid4().hex
        with self._changed:
            self._tickets.add(ticket)
        url = f"ws://{self._host}:{self.port}/link/?ticket={ticket}&app_id={self.envelopes.api_app_id}"
        return {"ok": True, "url": url}

    def _auth_test(self, token: str) -> dict[str, Any]:
        if not token:
            return {"ok": False, "error": "not_authed"}
        factory = self.envelopes
        return {
            "ok": True,
            "url": "https://simulated.slack.com/",
            "team": "Simulated",
            "user": "simulated-bot",
            "team_id": factory.team_id,
            "user_id": factory.bot_user_id,
            "bot_id": "B0SIMBOT",
            "app_id": factory.api_app_id,
            "is_enterprise_install": False,
        }

    async def _link(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        with self._changed:
            known = ticket in self._tickets
            self._tickets.discard(ticket)
        if not known or self._stopping:
            return web.Response(status=401, text="invalid or used ticket")
        # Pings and pongs are handled here rather than by aiohttp, whose
        # heartbeat drops a connection after half an interval without a pong:
        # stricter than Slack, and stricter than the builtin client keeps up with.
        ws = web.WebSocketResponse(timeout=2.0, compress=False, autoping=False)
        await ws.prepare(request)
        conn = Connection(f"c{next(self._connection_numbers)}", ws, time.monotonic_ns())
        with self._changed:
            self._connections[conn.connection_id] = conn
        try:
            if self.send_hello:
                await ws.send_str(json.dumps(self._hello(conn)))
            with self._changed:
                conn.greeted.set()
                self._signal()
            # Queued envelopes go out from a task of their own, so that acks on
            # this connection are read (and timed) while the queue drains.
            self._spawn(self._flush_outbox())
            if self.ping_interval is not None:
                self._spawn(self._ping(conn, self.ping_interval))
            async for message in ws:
                if message.type == WSMsgType.PING:
                    await ws.pong(message.data)
                elif message.type == WSMsgType.PONG:
                    conn.last_pong_ns = time.monotonic_ns()
                elif message.type == WSMsgType.TEXT:
                    self._on_client_text(conn, message.data, time.monotonic_ns())
                elif message.type == WSMsgType.BINARY:
                    self._on_client_text(
                        conn, message.data.decode("utf-8", "replace"), time.monotonic_ns()
                    )
        except ConnectionError:
            pass
        finally:
            with self._changed:
                conn.closed_ns = time.monotonic_ns()
                conn.greeted.set()
                self._signal()
        return ws

    async def _ping(self, conn: Connection, interval: float) -> None:
        """Ping every ``interval`` seconds; close after four intervals without a pong."""
        while conn.closed_ns is None and not self._stopping:
            await asyncio.sleep(interval)
            if conn.closed_ns is not None:
                return
            since = conn.last_pong_ns if conn.last_pong_ns is not None else conn.opened_ns
            if time.monotonic_ns() - since > 4 * interval * 1e9:
                logger.info("simulator: %s answered no ping; closing it", conn.connection_id)
                await self._close(conn, int(WSCloseCode.POLICY_VIOLATION))
                return
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.ws.ping(f"simulator:{time.time()}".encode())

    def _hello(self, conn: Connection) -> dict[str, Any]:
        with self._changed:
            open_count = sum(1 for c in self._connections.values() if c.closed_ns is None)
        return {
            "type": "hello",
            "num_connections": open_count,
            "debug_info": {
                "host": f"applink-simulator-{conn.connection_id}",
                "build_number": 1,
                "approximate_connection_time": 18060,
            },
            "connection_info": {"app_id": self.envelopes.api_app_id},
        }

    def _on_client_text(self, conn: Connection, text: str, received_ns: int) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            frame = None
        envelope_id = frame.get("envelope_id") if isinstance(frame, dict) else None
        with self._changed:
            tracked = self._tracked.get(envelope_id) if isinstance(envelope_id, str) else None
            if tracked is None or not isinstance(frame, dict) or not isinstance(envelope_id, str):
                self._stray_frames.append(text)
                self._signal()
                logger.warning("simulator: frame that acks no sent envelope: %.200s", text)
                return
            # An ack answers the oldest unanswered delivery on its own connection,
            # else the oldest on any (acks may come back on another connection);
            # an ack beyond the number of deliveries is timed from the latest one.
            if tracked.outstanding:
                index = next(
                    (
                        i
                        for i, (connection_id, _) in enumerate(tracked.outstanding)
                        if connection_id == conn.connection_id
                    ),
                    0,
                )
                sent_ns = tracked.outstanding.pop(index)[1]
            else:
                sent_ns = tracked.last_sent_ns if tracked.last_sent_ns is not None else received_ns
            payload = frame.get("payload")
            self._acks.append(
                Ack(
                    envelope_id=envelope_id,
                    connection_id=conn.connection_id,
                    payload=payload if isinstance(payload, dict) else None,
                    sent_ns=sent_ns,
                    received_ns=received_ns,
                    frame=frame,
                )
            )
            tracked.acked = True
            if tracked.chain not in self._acked_chains:
                self._acked_chains.add(tracked.chain)
                for member in self._chain_members[tracked.chain]:
                    self._unsettled.pop(member, None)
            if tracked.timer is not None:
                tracked.timer.cancel()
                tracked.timer = None
            self._signal()

    def _eligible(self) -> list[Connection]:
        with self._changed:
            return [c for c in self._connections.values() if c.eligible()]

    def _pick(self, connection: str | None) -> Connection | None:
        if connection is not None:
            with self._changed:
                conn = self._connections.get(connection)
            if conn is None or conn.closed_ns is not None:
                raise SimulatorError(f"connection {connection!r} is not open")
            return conn
        candidates = self._eligible()
        if not candidates:
            return None
        if self.spread == "random":
            return self._random.choice(candidates)
        return candidates[next(self._round_robin) % len(candidates)]

    async def _deliver(
        self, envelope_id: str, kind: DeliveryKind, connection: str | None
    ) -> str | None:
        """Write one envelope to one connection, or queue it; returns the connection id."""
        while True:
            with self._changed:
                # Behind queued envelopes, to keep the order they were sent in.
                queue_behind = connection is None and bool(self._outbox)
            conn = None if queue_behind else self._pick(connection)
            if conn is None:
                with self._changed:
                    self._outbox.append((envelope_id, kind))
                if queue_behind and self._eligible():
                    self._spawn(self._flush_outbox())
                return None
            if await self._write(conn, envelope_id, kind):
                return conn.connection_id
            if connection is not None:
                raise SimulatorError(f"connection {connection!r} closed while sending")

    async def _broadcast(self, envelope_id: str) -> list[str]:
        targets = self._eligible()
        if not targets:
            await self._deliver(envelope_id, "broadcast", None)
            return []
        sent = []
        for conn in targets:
            if await self._write(conn, envelope_id, "broadcast"):
                sent.append(conn.connection_id)
        return sent

    async def _write(self, conn: Connection, envelope_id: str, kind: DeliveryKind) -> bool:
        await conn.greeted.wait()
        with self._changed:
            if conn.closed_ns is not None:
                return False
            tracked = self._tracked[envelope_id]
            first = tracked.last_sent_ns is None
            sent_ns = time.monotonic_ns()
            # Recorded before the write: the ack can be read while the write drains.
            delivery = Delivery(envelope_id, conn.connection_id, sent_ns, kind)
            self._deliveries.append(delivery)
            tracked.outstanding.append((conn.connection_id, sent_ns))
            previous_sent_ns = tracked.last_sent_ns
            tracked.last_sent_ns = sent_ns
        try:
            await conn.ws.send_str(tracked.text)
        except (ConnectionError, RuntimeError) as exc:
            logger.info("simulator: write to %s failed: %s", conn.connection_id, exc)
            with self._changed:
                self._deliveries.remove(delivery)
                with contextlib.suppress(ValueError):
                    tracked.outstanding.remove((conn.connection_id, sent_ns))
                tracked.last_sent_ns = previous_sent_ns
                conn.closed_ns = conn.closed_ns or time.monotonic_ns()
                self._signal()
            return False
        if first:
            self._arm_redelivery(envelope_id)
        self._notify()
        return True

    async def _send_text(self, text: str, connection: str | None) -> str:
        conn = self._pick(connection)
        if conn is None:
            raise SimulatorError("no connection is open")
        await conn.greeted.wait()
        await conn.ws.send_str(text)
        return conn.connection_id

    async def _flush_outbox(self) -> None:
        if self._flushing:
            return
        self._flushing = True
        try:
            while True:
                with self._changed:
                    if not self._outbox:
                        return
                conn = self._pick(None)
                if conn is None:
                    return
                with self._changed:
                    envelope_id, kind = self._outbox.popleft()
                if not await self._write(conn, envelope_id, kind):
                    with self._changed:
                        self._outbox.appendleft((envelope_id, kind))
        finally:
            self._flushing = False

    # redelivery -------------------------------------------------------------------

    def _arm_redelivery(self, envelope_id: str) -> None:
        if self.redeliver_after is None or self._stopping:
            return
        loop = asyncio.get_running_loop()
        with self._changed:
            tracked = self._tracked[envelope_id]
            if tracked.envelope.get("type") not in self.redeliver_types:
                return
            tracked.timer = loop.call_later(self.redeliver_after, self._on_ack_timeout, envelope_id)

    def _on_ack_timeout(self, envelope_id: str) -> None:
        with self._changed:
            tracked = self._tracked[envelope_id]
            tracked.timer = None
            if tracked.acked or tracked.chain in self._acked_chains or self._stopping:
                return
            attempt = tracked.envelope.get("retry_attempt")
            attempt = attempt if isinstance(attempt, int) else 0
            if attempt >= self.max_retries:
                logger.info("simulator: %s never acked; no retries left", envelope_id)
                return
            retry = self.envelopes.retry_of(tracked.envelope, reason="timeout")
            chain = tracked.chain
        retry_id = self._track(retry, chain=chain)
        logger.info(
            "simulator: %s not acked in %s s; retry %s as %s",
            envelope_id,
            self.redeliver_after,
            retry["retry_attempt"],
            retry_id,
        )
        self._spawn(self._deliver(retry_id, "redelivery", None))

    # disconnects ----------------------------------------------------------------------

    async def _disconnect(
        self, reason: str, connection: str | None, close_after: float | None
    ) -> list[str]:
        if connection is not None:
            targets = [self._pick(connection)]
        else:
            with self._changed:
                targets = [c for c in self._connections.values() if c.closed_ns is None]
        frame = json.dumps(
            {
                "type": "disconnect",
                "reason": reason,
                "debug_info": {"host": "applink-simulator"},
            }
        )
        sent = []
        for conn in targets:
            if conn is None:
                continue
            await conn.greeted.wait()
            if conn.closed_ns is not None:
                continue
            with self._changed:
                conn.disconnect_reason = reason
                self._signal()
            try:
                await conn.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                continue
            sent.append(conn.connection_id)
            if close_after is not None:
                self._spawn(self._close_later(conn, close_after))
        return sent

    async def _close_later(self, conn: Connection, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._close(conn, int(WSCloseCode.GOING_AWAY))

    async def _close_matching(self, connection: str | None, code: int) -> list[str]:
        if connection is not None:
            conn = self._pick(connection)
            targets = [conn] if conn is not None else []
        else:
            with self._changed:
                targets = [c for c in self._connections.values() if c.closed_ns is None]
        await asyncio.gather(*(self._close(c, code) for c in targets), return_exceptions=True)
        return [c.connection_id for c in targets]

    async def _close(self, conn: Connection, code: int) -> None:
        if conn.closed_ns is None:
            with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
                await conn.ws.close(code=code, message=b"simulator closed the connection")
        with self._changed:
            conn.closed_ns = conn.closed_ns or time.monotonic_ns()
            self._signal()
