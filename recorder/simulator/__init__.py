"""A local Slack Socket Mode server that the real slack_sdk clients connect to.

This package is the simulator itself, shared by ``recorder demo`` and the
test kit (:mod:`recorder.testing.simulator` re-exports it): ``__init__`` is
the public API (over 450 lines because each of its thirty-odd calls carries
its documentation), :mod:`~recorder.simulator.server` the wire protocol and
its bookkeeping, :mod:`~recorder.simulator.records` what it keeps, and
:mod:`~recorder.simulator.envelopes` the envelope builder.

:class:`SocketModeSimulator` serves the ``apps.connections.open`` Web API
method and the WebSocket link it hands out, on one ephemeral port, from an
aiohttp server running on its own event loop in a background thread. Point a
real client at it with ``WebClient(base_url=sim.api_url)``; everything else
about the client stays as in production::

    from slack_sdk import WebClient
    from slack_sdk.socket_mode.builtin import SocketModeClient
    from slack_sdk.socket_mode.response import SocketModeResponse
    from recorder.testing import SocketModeSimulator

    with SocketModeSimulator() as sim:
        client = SocketModeClient(app_token=sim.app_token,
                                  web_client=WebClient(base_url=sim.api_url))
        client.socket_mode_request_listeners.append(
            lambda c, req: c.send_socket_mode_response(
                SocketModeResponse(envelope_id=req.envelope_id)))
        client.connect()
        sim.wait_for_connections(1)
        envelope = sim.envelopes.message("hello")
        sim.send(envelope)
        sim.wait_until_acked(timeout=5)
        assert sim.acks_for(envelope["envelope_id"])[0].latency_ns > 0
        client.close()

The API is synchronous and thread-safe; the ``*_async`` waits do the same
without blocking an event loop (for the aiohttp and websockets clients, whose
acks come from the caller's own loop). ``send`` and the other actions return
once the frame is written (or queued), so they are fine to call from a
coroutine too.

What it does, the way Slack does it
-----------------------------------
* ``apps.connections.open`` checks the token looks like an app-level token
  (``xapp-``) and returns ``{"ok": true, "url": "ws://127.0.0.1:PORT/link/?ticket=..."}``;
  each ticket opens one connection. ``auth.test`` answers for the bot token
  (slack_bolt calls it), and any other Web API method answers ``{"ok": true}``
  and is kept in :attr:`SocketModeSimulator.api_calls`.
* On connect it sends ``hello`` (``num_connections``, ``debug_info``,
  ``connection_info``), then any envelopes queued while no connection was open.
  ``debug_info.host`` ends with the connection id (``applink-simulator-c1``),
  so a client can tell which connection it is on. A connection counts as open
  from its handshake; nothing is written to it before its ``hello``.
* It answers client pings; with ``ping_interval`` it also pings, and closes a
  connection that answers none for four intervals.
* :meth:`~SocketModeSimulator.send` writes an envelope to one connection,
  chosen round robin (or at random) over the open connections that were not
  told to disconnect; :meth:`~SocketModeSimulator.broadcast` writes it to
  every one (two bot instances both receiving each envelope).
* :meth:`~SocketModeSimulator.retransmit` writes the exact same frame again
  (same ``envelope_id``); :meth:`~SocketModeSimulator.retry` sends a new
  envelope with the same payload (same ``event_id``), ``retry_attempt`` one
  higher and ``retry_reason`` set.
* Redelivery: an ``events_api`` envelope not acked within ``redeliver_after``
  seconds (3 by default, ``None`` turns it off) is retried in a new envelope
  (``retry_reason`` ``"timeout"``), up to ``max_retries`` (3) times. An
  envelope counts as acknowledged once it or any retry of the same event is
  acked.
* :meth:`~SocketModeSimulator.disconnect` sends a ``disconnect`` frame
  (``warning``, ``refresh_requested``, ``link_disabled``); the clients then open
  a new connection and close the old one. The simulator closes the old
  connection itself after ``close_after`` seconds unless told otherwise.
  :meth:`~SocketModeSimulator.close_connections` closes connections outright.
* Every ack is kept as an :class:`Ack`: the envelope id, the connection it
  came in on, the response payload (slash commands, view submissions), and
  the latency from the frame being written to the ack being read
  (``time.monotonic_ns``). Acks may arrive on any connection, as with Slack.

Public API (stable; other modules and the tests of :mod:`recorder.slack` build on it)
---------------------------------------------------------------------------------------
Lifecycle: ``start()``, ``stop()``, ``with``; ``api_url``, ``port``, ``app_token``,
``bot_token``, ``web_client()``, ``async_web_client()``, ``running``.

Building: ``sim.envelopes`` (:class:`EnvelopeFactory`): ``message``,
``app_mention``, ``reaction_added``, ``events_api``, ``slash_command``,
``block_actions``, ``view_submission``, ``retry_of``.

Acting: ``send(envelope, connection=None) -> envelope_id``, ``send_many``,
``broadcast(envelope) -> [connection ids]``, ``retransmit(envelope_id)``,
``retry(envelope_or_id, reason="timeout") -> retry envelope``,
``disconnect(reason, connection=None, close_after=...)``,
``close_connections(connection=None)``, ``send_frame(frame)`` (untracked).

Observing: ``acks`` (:class:`Ack`), ``ack_count``, ``acks_for(id)``, ``acked(id)``,
``unacked()``, ``deliveries`` (:class:`Delivery`), ``sent_envelope_ids()``,
``envelope(id)``, ``connections()`` (:class:`ConnectionInfo`),
``open_connection_ids()``, ``connection_count``, ``total_connections``,
``api_calls``, ``stray_frames``.

Waiting (raise :class:`SimulatorTimeout`, a ``TimeoutError``, saying what was
missing): ``wait_for_connections(n)``, ``wait_for_acks(n)``,
``wait_until_acked(ids=None)``, ``wait_for(predicate)``, and ``*_async``
forms of each.

Misuse (not started, unknown envelope or connection, malformed envelope)
raises :class:`SimulatorError`, a :class:`~recorder.errors.RecorderError`.
A user guide with runnable examples is ``docs/testing.md``.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from recorder.errors import MissingDependency

try:
    from aiohttp import WSCloseCode, web
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependency("aiohttp", "slack") from exc

from recorder.simulator.envelopes import EnvelopeFactory, SimulatorError
from recorder.simulator.records import (
    DEFAULT_APP_TOKEN,
    DEFAULT_BOT_TOKEN,
    Ack,
    Connection,
    ConnectionInfo,
    Delivery,
    DeliveryKind,
    DisconnectReason,
    SimulatorTimeout,
    Tracked,
)
from recorder.simulator.server import SimulatorServer, run_loop

if TYPE_CHECKING:
    from slack_sdk import WebClient
    from slack_sdk.web.async_client import AsyncWebClient

__all__ = [
    "Ack",
    "ConnectionInfo",
    "Delivery",
    "EnvelopeFactory",
    "SimulatorError",
    "SimulatorTimeout",
    "SocketModeSimulator",
]

_T = TypeVar("_T")


class SocketModeSimulator(SimulatorServer):
    """A local Socket Mode endpoint for tests; see the module docstring.

    Parameters
    ----------
    app_token
        The app-level token ``apps.connections.open`` accepts. ``None``
        accepts any token starting with ``xapp-``.
    host, port
        Where to listen; port 0 picks a free one.
    redeliver_after
        Seconds to wait for an ack before retrying an envelope in a new one,
        as Slack does; ``None`` never retries on its own.
    max_retries
        The highest ``retry_attempt`` a redelivery reaches.
    redeliver_types
        Envelope types retried on timeout. Slack retries only ``events_api``:
        only those have an ``event_id`` that lets a retry be told apart.
    spread
        How :meth:`send` picks a connection: ``"round_robin"`` or ``"random"``.
    close_after
        Seconds after a ``disconnect`` frame before the simulator closes that
        connection itself (Slack waits about 10); ``None`` leaves it to the client.
    ping_interval
        Seconds between server pings; a connection that answers none for four
        intervals is closed. ``None`` sends none (clients still get pongs to
        their own pings).
    send_hello
        Send ``hello`` on connect. A client that waits for it never becomes
        ready without.
    envelopes
        The envelope builder; by default one for team ``T0SIMTEAM``, app ``A0SIMAPP``.
    seed
        Seeds the random spread (and the default envelope builder's ids).
    """

    def __init__(
        self,
        *,
        app_token: str | None = DEFAULT_APP_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
        redeliver_after: float | None = 3.0,
        max_retries: int = 3,
        redeliver_types: Collection[str] = ("events_api",),
        spread: Literal["round_robin", "random"] = "round_robin",
        close_after: float | None = 10.0,
        ping_interval: float | None = None,
        send_hello: bool = True,
        envelopes: EnvelopeFactory | None = None,
        seed: int | None = None,
    ) -> None:
        if app_token is not None and not app_token.startswith("xapp-"):
            raise SimulatorError(f"app_token must start with 'xapp-', got {app_token[:8]!r}...")
        if spread not in ("round_robin", "random"):
            raise SimulatorError(f"spread must be 'round_robin' or 'random', not {spread!r}")
        if redeliver_after is not None and redeliver_after <= 0:
            raise SimulatorError("redeliver_after must be positive (or None to turn it off)")
        if max_retries < 0:
            raise SimulatorError("max_retries must not be negative")
        self._app_token = app_token
        self._host = host
        self._requested_port = port
        self.redeliver_after = redeliver_after
        self.max_retries = max_retries
        self.redeliver_types = frozenset(redeliver_types)
        self.spread = spread
        self.close_after = close_after
        self.ping_interval = ping_interval
        self.send_hello = send_hello
        self.envelopes: EnvelopeFactory = envelopes or EnvelopeFactory(seed=seed)
        """Builds envelopes for this simulator's workspace; see :class:`EnvelopeFactory`."""
        self._random = random.Random(seed)
        self._round_robin = itertools.count()
        self._connection_numbers = itertools.count(1)

        # Guards everything below; the loop thread changes state under it and
        # notifies, callers read copies and wait on it.
        self._changed = threading.Condition(threading.RLock())
        self._generation = 0
        self._connections: dict[str, Connection] = {}
        self._tickets: set[str] = set()
        self._tracked: dict[str, Tracked] = {}
        self._acked_chains: set[str] = set()
        # Ids neither acked nor settled by an ack of their event, kept up to date
        # so that waits stay cheap with thousands of envelopes in flight.
        self._unsettled: dict[str, None] = {}
        self._chain_members: dict[str, list[str]] = collections.defaultdict(list)
        self._deliveries: list[Delivery] = []
        self._acks: list[Ack] = []
        self._stray_frames: list[str] = []
        self._api_calls: list[tuple[str, dict[str, str]]] = []
        self._outbox: collections.deque[tuple[str, DeliveryKind]] = collections.deque()

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._port: int | None = None
        self._stopping = False
        self._flushing = False

    # lifecycle -------------------------------------------------------------

    def start(self) -> SocketModeSimulator:
        """Start serving in a background thread; returns self.

        Raises
        ------
        SimulatorError
            Already started, or the address cannot be bound.
        """
        if self._loop is not None:
            raise SimulatorError("the simulator is already running")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=run_loop, args=(loop,), name="socket-mode-simulator", daemon=True
        )
        self._loop, self._thread = loop, thread
        self._stopping = False
        thread.start()
        try:
            self._call(self._serve(), timeout=10)
        except BaseException:
            self._halt_loop()
            raise
        return self

    def stop(self) -> None:
        """Close every connection, stop the server and join its thread. Idempotent."""
        if self._loop is None:
            return
        try:
            self._call(self._shutdown(), timeout=20)
        finally:
            self._halt_loop()

    def __enter__(self) -> SocketModeSimulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._loop is not None and self._port is not None

    @property
    def api_url(self) -> str:
        """Web API base URL, for ``WebClient(base_url=...)`` (ends with ``/api/``)."""
        return f"http://{self._host}:{self.port}/api/"

    @property
    def app_token(self) -> str:
        """An app-level token ``apps.connections.open`` accepts."""
        return self._app_token or DEFAULT_APP_TOKEN

    @property
    def bot_token(self) -> str:
        """A bot token for clients that need one (``auth.test`` accepts anything)."""
        return DEFAULT_BOT_TOKEN

    def web_client(self) -> WebClient:
        """A slack_sdk ``WebClient`` pointed at this simulator."""
        try:
            from slack_sdk import WebClient
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise MissingDependency("slack_sdk", "slack") from exc
        return WebClient(token=self.bot_token, base_url=self.api_url)

    def async_web_client(self) -> AsyncWebClient:
        """A slack_sdk ``AsyncWebClient`` pointed at this simulator."""
        try:
            from slack_sdk.web.async_client import AsyncWebClient
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise MissingDependency("slack_sdk", "slack") from exc
        return AsyncWebClient(token=self.bot_token, base_url=self.api_url)

    # sending ---------------------------------------------------------------

    def send(self, envelope: Mapping[str, Any], *, connection: str | None = None) -> str:
        """Send an envelope to one connection; returns its ``envelope_id``.

        Parameters
        ----------
        envelope
            A Socket Mode envelope with a string ``envelope_id`` and a ``type``
            (build one with :attr:`envelopes`). Sending an id again writes the
            same frame again (a retransmit).
        connection
            A connection id; by default one is picked by :attr:`spread`. With
            no connection open the envelope waits and goes out on the next one.

        Raises
        ------
        SimulatorError
            The envelope has no usable id or type, or ``connection`` is not open.
        """
        envelope_id = self._track(envelope)
        self._call(self._deliver(envelope_id, "send", connection))
        return envelope_id

    def send_many(self, envelopes: Iterable[Mapping[str, Any]]) -> list[str]:
        """Send several envelopes in order, each as :meth:`send` does; returns their ids."""
        return [self.send(envelope) for envelope in envelopes]

    def broadcast(self, envelope: Mapping[str, Any]) -> list[str]:
        """Send an envelope to every open connection; returns the connection ids.

        Connections told to disconnect are skipped. With none open it waits in
        the queue and goes to one connection, as :meth:`send` does.
        """
        envelope_id = self._track(envelope)
        return self._call(self._broadcast(envelope_id))

    def retransmit(self, envelope_id: str, *, connection: str | None = None) -> None:
        """Write the exact frame of an envelope sent before again (same ``envelope_id``).

        Raises
        ------
        SimulatorError
            The envelope was never sent, or ``connection`` is not open.
        """
        self._require_tracked(envelope_id)
        self._call(self._deliver(envelope_id, "retransmit", connection))

    def retry(
        self,
        envelope: Mapping[str, Any] | str,
        *,
        reason: str = "timeout",
        attempt: int | None = None,
        connection: str | None = None,
    ) -> dict[str, Any]:
        """Send Slack's retry of an envelope: a new envelope id, the same payload.

        Parameters
        ----------
        envelope
            The envelope, or the id of one sent before.
        reason, attempt
            ``retry_reason``, and ``retry_attempt`` (one more than the
            original's by default).

        Returns
        -------
        dict
            The retry envelope sent.
        """
        original = self.envelope(envelope) if isinstance(envelope, str) else dict(envelope)
        retry = self.envelopes.retry_of(original, reason=reason, attempt=attempt)
        chain = self._chain_of(original)
        envelope_id = self._track(retry, chain=chain)
        self._call(self._deliver(envelope_id, "retry", connection))
        return retry

    def send_frame(self, frame: Mapping[str, Any] | str, *, connection: str | None = None) -> str:
        """Write any frame, untracked (malformed envelopes, unknown types); returns the connection id.

        Raises
        ------
        SimulatorError
            No connection is open, or ``connection`` is not open.
        """
        text = frame if isinstance(frame, str) else json.dumps(frame)
        return self._call(self._send_text(text, connection))

    def disconnect(
        self,
        reason: DisconnectReason = "warning",
        *,
        connection: str | None = None,
        close_after: float | Literal["default"] | None = "default",
    ) -> list[str]:
        """Send a ``disconnect`` frame; returns the connection ids it went to.

        Parameters
        ----------
        reason
            ``"warning"`` (the connection will close soon), ``"refresh_requested"``
            or ``"link_disabled"``.
        connection
            One connection id; by default every open connection.
        close_after
            Seconds before the simulator closes those connections itself;
            ``None`` never; by default the simulator's ``close_after``.
        """
        delay = self.close_after if close_after == "default" else close_after
        return self._call(self._disconnect(reason, connection, delay))

    def close_connections(
        self, connection: str | None = None, *, code: int = int(WSCloseCode.GOING_AWAY)
    ) -> list[str]:
        """Close one connection (or every open one) with a close frame; returns their ids."""
        return self._call(self._close_matching(connection, code))

    # observing ---------------------------------------------------------------

    @property
    def acks(self) -> list[Ack]:
        """Every ack received, in order."""
        with self._changed:
            return list(self._acks)

    @property
    def ack_count(self) -> int:
        """How many acks arrived (cheaper than ``len(sim.acks)``)."""
        with self._changed:
            return len(self._acks)

    def acks_for(self, envelope_id: str) -> list[Ack]:
        """The acks received for one envelope id."""
        with self._changed:
            return [ack for ack in self._acks if ack.envelope_id == envelope_id]

    @property
    def deliveries(self) -> list[Delivery]:
        """Every envelope frame written, in order (retransmits and broadcast copies included)."""
        with self._changed:
            return list(self._deliveries)

    @property
    def stray_frames(self) -> list[str]:
        """Frames from clients that were not an ack of an envelope sent (unknown id, not JSON)."""
        with self._changed:
            return list(self._stray_frames)

    @property
    def api_calls(self) -> list[tuple[str, dict[str, str]]]:
        """Web API calls received: ``(method, parameters)``, tokens left out."""
        with self._changed:
            return list(self._api_calls)

    def envelope(self, envelope_id: str) -> dict[str, Any]:
        """The envelope sent under an id (a copy)."""
        with self._changed:
            tracked = self._require_tracked(envelope_id)
            result: dict[str, Any] = json.loads(tracked.text)
            return result

    def sent_envelope_ids(self) -> list[str]:
        """Ids of every envelope sent or queued (retries included), in order."""
        with self._changed:
            return list(self._tracked)

    def acked(self, envelope_id: str) -> bool:
        """Whether an ack for this very envelope id arrived."""
        with self._changed:
            return self._require_tracked(envelope_id).acked

    def unacked(self) -> list[str]:
        """Envelope ids still waiting for an ack.

        An envelope counts as acknowledged once it, or another envelope of the
        same event (a retry), is acked.
        """
        with self._changed:
            return list(self._unsettled)

    def connections(self) -> list[ConnectionInfo]:
        """Every connection opened so far, open or closed, oldest first."""
        with self._changed:
            return [conn.info() for conn in self._connections.values()]

    def open_connection_ids(self) -> list[str]:
        """Ids of the open connections, oldest first.

        A connection counts from its WebSocket handshake; whatever is sent to it
        goes out after its ``hello``.
        """
        with self._changed:
            return [
                conn.connection_id for conn in self._connections.values() if conn.closed_ns is None
            ]

    @property
    def connection_count(self) -> int:
        """How many connections are open."""
        return len(self.open_connection_ids())

    @property
    def total_connections(self) -> int:
        """How many connections were ever opened, closed ones included."""
        with self._changed:
            return len(self._connections)

    # waiting ------------------------------------------------------------------

    def wait_for(
        self, predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition"
    ) -> None:
        """Wait until ``predicate()`` is true.

        It is re-checked whenever the simulator's state changes, and at least
        every 50 ms (for predicates on a bot's own state).

        Raises
        ------
        SimulatorTimeout
            Still false after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                generation = self._generation
            # Evaluated without the lock: a predicate may do anything, even send.
            if predicate():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise SimulatorTimeout(f"timed out after {timeout} s waiting for {what}")
            with self._changed:
                if self._generation == generation:
                    self._changed.wait(min(left, 0.05))

    def wait_for_connections(self, count: int = 1, *, timeout: float = 10.0) -> list[str]:
        """Wait until at least ``count`` connections are open; returns their ids."""
        try:
            self.wait_for(lambda: self.connection_count >= count, timeout=timeout)
        except SimulatorTimeout:
            raise SimulatorTimeout(
                f"{self.connection_count} of {count} connections open after {timeout} s"
            ) from None
        return self.open_connection_ids()

    def wait_for_acks(self, count: int, *, timeout: float = 10.0) -> list[Ack]:
        """Wait until at least ``count`` acks in total arrived; returns all acks."""
        try:
            self.wait_for(lambda: self.ack_count >= count, timeout=timeout)
        except SimulatorTimeout:
            raise SimulatorTimeout(
                f"{len(self.acks)} of {count} acks after {timeout} s; unacked: {self.unacked()[:10]}"
            ) from None
        return self.acks

    def wait_until_acked(
        self, envelope_ids: Iterable[str] | None = None, *, timeout: float = 10.0
    ) -> None:
        """Wait until the given envelopes (by default every one sent) are acknowledged.

        Acknowledged as in :meth:`unacked`: the envelope or a retry of its event was acked.
        """
        wanted = None if envelope_ids is None else set(envelope_ids)

        def missing() -> list[str]:
            pending = self.unacked()
            return pending if wanted is None else [e for e in pending if e in wanted]

        def settled() -> bool:
            with self._changed:
                if wanted is None:
                    return not self._unsettled
                return self._unsettled.keys().isdisjoint(wanted)

        try:
            self.wait_for(settled, timeout=timeout)
        except SimulatorTimeout:
            left = missing()
            raise SimulatorTimeout(
                f"{len(left)} envelopes still unacked after {timeout} s: {left[:10]}"
            ) from None

    async def wait_for_connections_async(
        self, count: int = 1, *, timeout: float = 10.0
    ) -> list[str]:
        """:meth:`wait_for_connections` without blocking the running event loop."""
        return await asyncio.to_thread(self.wait_for_connections, count, timeout=timeout)

    async def wait_for_acks_async(self, count: int, *, timeout: float = 10.0) -> list[Ack]:
        """:meth:`wait_for_acks` without blocking the running event loop."""
        return await asyncio.to_thread(self.wait_for_acks, count, timeout=timeout)

    async def wait_until_acked_async(
        self, envelope_ids: Iterable[str] | None = None, *, timeout: float = 10.0
    ) -> None:
        """:meth:`wait_until_acked` without blocking the running event loop."""
        ids = None if envelope_ids is None else list(envelope_ids)
        await asyncio.to_thread(self.wait_until_acked, ids, timeout=timeout)

    async def wait_for_async(
        self, predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition"
    ) -> None:
        """:meth:`wait_for` without blocking the running event loop."""
        await asyncio.to_thread(self.wait_for, predicate, timeout=timeout, what=what)
