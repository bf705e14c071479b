"""Drop-in replacements for slack_bolt's Socket Mode handlers that record every envelope.

Change one import and add ``buffer=``::

    # from slack_bolt.adapter.socket_mode import SocketModeHandler
    from recorder.slack.bolt import SocketModeHandler

    SocketModeHandler(app, os.environ["SLACK_APP_TOKEN"], buffer=SQLEventBuffer(url)).start()

The constructors take slack_bolt's arguments unchanged, plus the recording
options of :class:`~recorder.slack.RecordingListener` (keyword only).

What differs from the plain listeners: Bolt answers slash commands and view
submissions in the ack itself (``ack(response_action=...)``), so for a new
envelope the order is **record, run the app, then ack with the app's
response**, exactly as Bolt's own handler acks after the app's ``ack()``.
The envelope is recorded before the app sees it, so the app never runs for
an unrecorded envelope. A duplicate is acked at once and never reaches the
app. An envelope no listener matches is still recorded, acked and marked
complete. The envelope id is in the context: ``context["envelope_id"]``
(and ``context["envelope_attempt"]``, 1 on first delivery, more when
recovery re-runs it).

Completion: the envelope is marked complete when the app's dispatch returns
successfully. With Bolt's defaults that is when ``ack()`` is called (the
rest of the listener runs on in Bolt's thread pool); with
``App(process_before_response=True)`` it is when the listener has finished,
so a crash mid-listener is recovered. A dispatch that fails (status 500)
leaves the envelope pending for recovery, which re-runs the app with the
stored envelope (its ack then goes nowhere: Slack has its answer).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from logging import Logger
from pathlib import Path
from typing import Any

from recorder.errors import MissingDependency

try:
    from slack_bolt import App, BoltRequest, BoltResponse
    from slack_bolt.adapter.socket_mode.aiohttp import (
        AsyncSocketModeHandler as _BoltAsyncSocketModeHandler,
    )
    from slack_bolt.adapter.socket_mode.builtin import SocketModeHandler as _BoltSocketModeHandler
    from slack_bolt.adapter.socket_mode.internals import build_headers
    from slack_bolt.app.async_app import AsyncApp
    from slack_bolt.request.async_request import AsyncBoltRequest
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependency("slack_bolt", "bolt") from exc

from slack_sdk import WebClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.client import BaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from recorder.adapter import ClaimedEnvelope, EventBufferAdapter
from recorder.adapters import open_buffer
from recorder.slack.background import AsyncMaintenance, Maintenance, OffLoop
from recorder.slack.bolt_http import AsyncRecorderMiddleware, RecorderMiddleware  # HTTP mode
from recorder.slack.frames import capture_frame, capture_frame_async, frame_of
from recorder.slack.metrics import Metrics
from recorder.slack.options import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RECOVERY_INTERVAL,
    DEFAULT_SPOOL_PATH,
    OnStorageError,
    RecorderOptions,
)
from recorder.slack.recording import EnvelopeRecorder, Outcome, RecorderFront
from recorder.slack.spool import utc_now

__all__ = [
    "AsyncRecorderMiddleware",
    "AsyncSocketModeHandler",
    "RecorderMiddleware",
    "SocketModeHandler",
]

logger = logging.getLogger("recorder.slack")

#: Statuses after which the envelope is done with: handled, or no listener for it.
FINISHED_STATUSES = (200, 404)


def default_buffer(buffer: EventBufferAdapter | str | None) -> EventBufferAdapter:
    """``buffer`` itself; a URL or ``None`` (the configured database): see
    :func:`recorder.adapters.open_buffer`."""
    if buffer is not None and not isinstance(buffer, str):
        return buffer
    return open_buffer(buffer)


def ack_response(envelope_id: str, bolt_resp: BoltResponse | None) -> SocketModeResponse:
    """The ack for a Bolt response, carrying its payload as Bolt's own handler does."""
    if bolt_resp is None or bolt_resp.status != 200 or not bolt_resp.body:
        return SocketModeResponse(envelope_id=envelope_id)
    content_type = bolt_resp.headers.get("content-type", [""])[0]
    if content_type.startswith("application/json"):
        return SocketModeResponse(envelope_id=envelope_id, payload=json.loads(bolt_resp.body))
    return SocketModeResponse(envelope_id=envelope_id, payload={"text": bolt_resp.body})


def bolt_context(request: SocketModeRequest, attempt: int) -> dict[str, Any]:
    return {"envelope_id": request.envelope_id, "envelope_attempt": attempt}


def _log_unfinished(request: SocketModeRequest, bolt_resp: BoltResponse | None) -> None:
    status = None if bolt_resp is None else bolt_resp.status
    logger.error(
        "app failed for envelope %s (status %s); it stays pending",
        request.envelope_id,
        status,
        extra={"envelope_id": request.envelope_id, "envelope_type": request.type, "status": status},
    )


def _recorder(
    buffer: EventBufferAdapter | str | None,
    on_storage_error: OnStorageError,
    spool_path: str | Path,
    lease_seconds: float,
    recovery_interval: float,
    max_attempts: int | None,
    metrics: Metrics | bool | None,
    monotonic: Callable[[], float],
    clock: Callable[[], dt.datetime],
) -> EnvelopeRecorder:
    return EnvelopeRecorder(
        default_buffer(buffer),
        RecorderOptions(
            on_storage_error=on_storage_error,
            spool_path=spool_path,
            lease_seconds=lease_seconds,
            recovery_interval=recovery_interval,
            max_attempts=max_attempts,
            metrics=metrics,
        ),
        monotonic=monotonic,
        clock=clock,
    )


class SocketModeHandler(RecorderFront, _BoltSocketModeHandler):
    """slack_bolt's ``SocketModeHandler`` (builtin client) that records every envelope.

    Parameters
    ----------
    app, app_token, logger, web_client, proxy, proxy_headers, auto_reconnect_enabled, \
trace_enabled, all_message_trace_enabled, ping_pong_trace_enabled, ping_interval, \
receive_buffer_size, concurrency
        As for ``slack_bolt.adapter.socket_mode.SocketModeHandler``.
    buffer
        Where envelopes are recorded: an adapter, a database URL, or ``None``
        for ``RECORDER_DATABASE_URL`` (default ``sqlite:///recorder.db``).
    on_storage_error, spool_path, lease_seconds, recovery_interval, max_attempts, metrics, \
monotonic, clock
        As for :class:`~recorder.slack.RecordingListener`.
    """

    def __init__(
        self,
        app: App,
        app_token: str | None = None,
        logger: Logger | None = None,
        web_client: WebClient | None = None,
        proxy: str | None = None,
        proxy_headers: dict[str, str] | None = None,
        auto_reconnect_enabled: bool = True,
        trace_enabled: bool = False,
        all_message_trace_enabled: bool = False,
        ping_pong_trace_enabled: bool = False,
        ping_interval: float = 10,
        receive_buffer_size: int = 1024,
        concurrency: int = 10,
        *,
        buffer: EventBufferAdapter | str | None = None,
        on_storage_error: OnStorageError = "spool",
        spool_path: str | Path = DEFAULT_SPOOL_PATH,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        recovery_interval: float = DEFAULT_RECOVERY_INTERVAL,
        max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
        metrics: Metrics | bool | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.recorder = _recorder(
            buffer,
            on_storage_error,
            spool_path,
            lease_seconds,
            recovery_interval,
            max_attempts,
            metrics,
            monotonic,
            clock,
        )
        super().__init__(
            app,
            app_token=app_token,
            logger=logger,
            web_client=web_client,
            proxy=proxy,
            proxy_headers=proxy_headers,
            auto_reconnect_enabled=auto_reconnect_enabled,
            trace_enabled=trace_enabled,
            all_message_trace_enabled=all_message_trace_enabled,
            ping_pong_trace_enabled=ping_pong_trace_enabled,
            ping_interval=ping_interval,
            receive_buffer_size=receive_buffer_size,
            concurrency=concurrency,
        )
        # The frame capture must run before the request listener Bolt added.
        self.client.message_listeners.insert(0, capture_frame)
        self._recovery_pool = ThreadPoolExecutor(
            max_workers=max(1, concurrency // 2), thread_name_prefix="recorder-recovery"
        )
        self._maintenance = Maintenance(self.recorder, self._dispatch_claims)

    def handle(self, client: BaseSocketModeClient, req: SocketModeRequest) -> None:
        received = time.perf_counter()
        text, frame = frame_of(req)
        outcome = self.recorder.record(req.envelope_id, text, frame)
        if not outcome.ack:
            return
        if outcome is Outcome.DUPLICATE:
            client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
            self.recorder.acked(time.perf_counter() - received)
            return
        bolt_resp: BoltResponse | None = None
        try:
            bolt_resp = self._run_app(req, attempt=1)
        finally:
            try:
                client.send_socket_mode_response(ack_response(req.envelope_id, bolt_resp))
                self.recorder.acked(time.perf_counter() - received)
            finally:
                self._finish(req, bolt_resp)

    def _run_app(self, req: SocketModeRequest, attempt: int) -> BoltResponse:
        bolt_req = BoltRequest(
            mode="socket_mode",
            body=req.payload,
            headers=build_headers(req),
            context=bolt_context(req, attempt),
        )
        resp: BoltResponse = self.app.dispatch(bolt_req)
        return resp

    def _finish(self, req: SocketModeRequest, bolt_resp: BoltResponse | None) -> None:
        ok = bolt_resp is not None and bolt_resp.status in FINISHED_STATUSES
        if not ok:
            _log_unfinished(req, bolt_resp)
        self.recorder.finish(req.envelope_id, ok)

    def _recover_one(self, claim: ClaimedEnvelope) -> None:
        req = SocketModeRequest.from_dict(claim.envelope)
        if req is None:
            self.recorder.finish(claim.envelope_id, ok=False)
            return
        bolt_resp: BoltResponse | None = None
        try:
            bolt_resp = self._run_app(req, attempt=claim.attempts)
        finally:
            self._finish(req, bolt_resp)

    def recover(self) -> int:
        """Claim envelopes pending longer than the lease and run the app for them."""
        claims = self.recorder.claim_stale()
        self._dispatch_claims(claims)
        return len(claims)

    def _dispatch_claims(self, claims: list[ClaimedEnvelope]) -> None:
        for claim in claims:
            self._recovery_pool.submit(self._recover_one, claim)

    def connect(self) -> None:
        """Connect, and start the background work (recovery first)."""
        self._maintenance.start()
        super().connect()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Disconnect, stop the background work, and drain the spool once more."""
        self._maintenance.stop()
        super().close()  # type: ignore[no-untyped-call]
        self._recovery_pool.shutdown(wait=True)
        self.recorder.close()


class AsyncSocketModeHandler(RecorderFront, _BoltAsyncSocketModeHandler):
    """slack_bolt's ``AsyncSocketModeHandler`` (aiohttp client) that records every envelope.

    Parameters
    ----------
    app, app_token, logger, web_client, proxy, ping_interval, loop
        As for ``slack_bolt.adapter.socket_mode.async_handler.AsyncSocketModeHandler``.
    buffer, on_storage_error, spool_path, lease_seconds, recovery_interval, max_attempts, \
metrics, monotonic, clock
        As for :class:`SocketModeHandler`. Database calls run in a small
        thread pool, never on the event loop.
    """

    def __init__(
        self,
        app: AsyncApp,
        app_token: str | None = None,
        logger: Logger | None = None,
        web_client: AsyncWebClient | None = None,
        proxy: str | None = None,
        ping_interval: float = 10,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        buffer: EventBufferAdapter | str | None = None,
        on_storage_error: OnStorageError = "spool",
        spool_path: str | Path = DEFAULT_SPOOL_PATH,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        recovery_interval: float = DEFAULT_RECOVERY_INTERVAL,
        max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
        metrics: Metrics | bool | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], dt.datetime] = utc_now,
        io_workers: int = 4,
    ) -> None:
        self.recorder = _recorder(
            buffer,
            on_storage_error,
            spool_path,
            lease_seconds,
            recovery_interval,
            max_attempts,
            metrics,
            monotonic,
            clock,
        )
        super().__init__(
            app,
            app_token=app_token,
            logger=logger,
            web_client=web_client,
            proxy=proxy,
            ping_interval=ping_interval,
            loop=loop,
        )
        self.client.message_listeners.insert(0, capture_frame_async)
        self._io = OffLoop(io_workers)
        self._tasks: set[asyncio.Future[Any]] = set()
        self._maintenance = AsyncMaintenance(self.recorder, self._dispatch_claims, self._io)

    async def handle(self, client: AsyncBaseSocketModeClient, req: SocketModeRequest) -> None:
        received = time.perf_counter()
        text, frame = frame_of(req)
        outcome: Outcome = await self._io.run(self.recorder.record, req.envelope_id, text, frame)
        if not outcome.ack:
            return
        if outcome is Outcome.DUPLICATE:
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
            self.recorder.acked(time.perf_counter() - received)
            return
        bolt_resp: BoltResponse | None = None
        try:
            bolt_resp = await self._run_app(req, attempt=1)
        finally:
            try:
                await client.send_socket_mode_response(ack_response(req.envelope_id, bolt_resp))
                self.recorder.acked(time.perf_counter() - received)
            finally:
                await self._finish(req, bolt_resp)

    async def _run_app(self, req: SocketModeRequest, attempt: int) -> BoltResponse:
        bolt_req = AsyncBoltRequest(
            mode="socket_mode",
            body=req.payload,
            headers=build_headers(req),
            context=bolt_context(req, attempt),
        )
        resp: BoltResponse = await self.app.async_dispatch(bolt_req)
        return resp

    async def _finish(self, req: SocketModeRequest, bolt_resp: BoltResponse | None) -> None:
        ok = bolt_resp is not None and bolt_resp.status in FINISHED_STATUSES
        if not ok:
            _log_unfinished(req, bolt_resp)
        await self._io.run(self.recorder.finish, req.envelope_id, ok)

    async def _recover_one(self, claim: ClaimedEnvelope) -> None:
        req = SocketModeRequest.from_dict(claim.envelope)
        if req is None:
            await self._io.run(self.recorder.finish, claim.envelope_id, False)
            return
        bolt_resp: BoltResponse | None = None
        try:
            bolt_resp = await self._run_app(req, attempt=claim.attempts)
        finally:
            await self._finish(req, bolt_resp)

    def _dispatch_claims(self, claims: list[ClaimedEnvelope]) -> None:
        for claim in claims:
            task = asyncio.ensure_future(self._recover_one(claim))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def recover(self) -> int:
        """Claim envelopes pending longer than the lease and run the app for them."""
        claims: list[ClaimedEnvelope] = await self._io.run(self.recorder.claim_stale)
        self._dispatch_claims(claims)
        return len(claims)

    async def connect_async(self) -> None:
        """Connect, and start the background work (recovery first)."""
        self._maintenance.start()
        await super().connect_async()  # type: ignore[no-untyped-call]

    async def close_async(self) -> None:
        """Disconnect, stop the background work, and drain the spool once more."""
        await self._maintenance.stop()
        await super().close_async()  # type: ignore[no-untyped-call]
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._io.run(self.recorder.close)
        self._io.shutdown()
