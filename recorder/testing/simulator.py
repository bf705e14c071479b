"""A local Slack Socket Mode server that the real slack_sdk clients connect to.

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
import contextlib
import itertools
import json
import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from recorder.errors import MissingDependency
from recorder.testing.envelopes import EnvelopeFactory, SimulatorError

try:
    from aiohttp import WSCloseCode, WSMsgType, web
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependency("aiohttp", "slack") from exc

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

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: A syntactically valid app-level token, accepted by default.
DEFAULT_APP_TOKEN = "xapp-1-A0SIMAPP-1-simulated"
#: A bot token for clients that need one (slack_bolt's App calls ``auth.test``).
DEFAULT_BOT_TOKEN = "xoxb-0-simulated"

DisconnectReason = Literal["warning", "refresh_requested", "link_disabled"]
DeliveryKind = Literal["send", "broadcast", "retransmit", "retry", "redelivery"]


class SimulatorTimeout(SimulatorError, TimeoutError):
    """A wait ran out of time; the message says what was still missing."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One envelope frame written to one connection."""

    envelope_id: str
    connection_id: str
    sent_ns: int
    """``time.monotonic_ns()`` just before the frame was written."""
    kind: DeliveryKind
    """Why it was written: ``send``, ``broadcast``, ``retransmit``, ``retry`` or ``redelivery``."""


@dataclass(frozen=True, slots=True)
class Ack:
    """One acknowledgement received from a client."""

    envelope_id: str
    connection_id: str
    """The connection the ack came in on (not necessarily the one the envelope went out on)."""
    payload: dict[str, Any] | None
    """The response payload, when the ack carried one."""
    sent_ns: int
    """When the delivery it answers was written: the oldest unanswered delivery of
    the id on the ack's connection, else the oldest on any connection."""
    received_ns: int
    """``time.monotonic_ns()`` when the ack frame was read."""
    frame: dict[str, Any]
    """The whole ack frame as received."""

    @property
    def latency_ns(self) -> int:
        """Nanoseconds from the envelope frame written to the ack read."""
        return self.received_ns - self.sent_ns


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """One WebSocket connection, open or closed."""

    connection_id: str
    opened_ns: int
    closed_ns: int | None
    disconnect_reason: str | None
    """The reason of the ``disconnect`` frame sent on it, if any."""

    @property
    def open(self) -> bool:
        """Whether the connection is still open."""
        return self.closed_ns is None


@dataclass(eq=False)
class _Connection:
    connection_id: str
    ws: web.WebSocketResponse
    opened_ns: int
    last_pong_ns: int | None = None
    greeted: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once ``hello`` is written (or the connection ended): nothing goes out before it."""
    closed_ns: int | None = None
    disconnect_reason: str | None = None

    def eligible(self) -> bool:
        return self.greeted.is_set() and self.closed_ns is None and self.disconnect_reason is None

    def info(self) -> ConnectionInfo:
        return ConnectionInfo(
            self.connection_id, self.opened_ns, self.closed_ns, self.disconnect_reason
        )


@dataclass(eq=False)
class _Tracked:
    envelope: dict[str, Any]
    text: str
    chain: str
    """Envelopes with one chain key are one event: an ack of any settles them all."""
    outstanding: list[tuple[str, int]] = field(default_factory=list)
    """Deliveries not yet answered by an ack: (connection id, sent_ns), oldest first."""
    last_sent_ns: int | None = None
    acked: bool = False
    timer: asyncio.TimerHandle | None = None


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
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


class SocketModeSimulator:
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
        self._connections: dict[str, _Connection] = {}
        self._tickets: set[str] = set()
        self._tracked: dict[str, _Tracked] = {}
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
            target=_run_loop, args=(loop,), name="socket-mode-simulator", daemon=True
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
    def port(self) -> int:
        """The port served on."""
        if self._port is None:
            raise SimulatorError(
                "the simulator is not running; call start() or use it in a with block"
            )
        return self._port

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
                self._tracked[envelope_id] = _Tracked(json.loads(text), text, chain)
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

    def _require_tracked(self, envelope_id: str) -> _Tracked:
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
        conn = _Connection(f"c{next(self._connection_numbers)}", ws, time.monotonic_ns())
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

    async def _ping(self, conn: _Connection, interval: float) -> None:
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

    def _hello(self, conn: _Connection) -> dict[str, Any]:
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

    def _on_client_text(self, conn: _Connection, text: str, received_ns: int) -> None:
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

    def _eligible(self) -> list[_Connection]:
        with self._changed:
            return [c for c in self._connections.values() if c.eligible()]

    def _pick(self, connection: str | None) -> _Connection | None:
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

    async def _write(self, conn: _Connection, envelope_id: str, kind: DeliveryKind) -> bool:
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

    async def _close_later(self, conn: _Connection, delay: float) -> None:
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

    async def _close(self, conn: _Connection, code: int) -> None:
        if conn.closed_ns is None:
            with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
                await conn.ws.close(code=code, message=b"simulator closed the connection")
        with self._changed:
            conn.closed_ns = conn.closed_ns or time.monotonic_ns()
            self._signal()
