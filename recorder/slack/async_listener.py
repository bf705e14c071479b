"""``AsyncRecordingListener``: record, ack, then handle, for the asyncio slack_sdk clients."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from recorder.adapter import ClaimedEnvelope, EventBufferAdapter
from recorder.errors import ConfigurationError
from recorder.slack.background import AsyncMaintenance, OffLoop
from recorder.slack.frames import capture_frame_async, frame_of
from recorder.slack.metrics import Metrics
from recorder.slack.options import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RECOVERY_INTERVAL,
    DEFAULT_SPOOL_PATH,
    OnStorageError,
    RecorderOptions,
)
from recorder.slack.recording import EnvelopeRecorder, RecorderFront
from recorder.slack.spool import utc_now

__all__ = ["AsyncHandler", "AsyncRecordingListener"]

logger = logging.getLogger("recorder.slack")

#: ``handler(client, request)``: a coroutine function, or a plain function
#: (run in a worker thread so it cannot block the event loop).
AsyncHandler = Callable[[AsyncBaseSocketModeClient, SocketModeRequest], Awaitable[Any] | Any]


def is_async_callable(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


class AsyncRecordingListener(RecorderFront):
    """:class:`~recorder.slack.RecordingListener` for the asyncio clients (aiohttp, websockets).

    Same parameters and the same order of things (record, ack, handle new
    envelopes off the receive path). It never blocks the event loop:
    database calls run in a small thread pool (``io_workers``); a coroutine
    handler runs as a task on the loop, a plain function in ``max_workers``
    threads. Add it with :meth:`attach`, or append it to
    ``client.socket_mode_request_listeners``.
    """

    def __init__(
        self,
        buffer: EventBufferAdapter,
        handler: AsyncHandler,
        *,
        on_storage_error: OnStorageError = "spool",
        spool_path: str | Path = DEFAULT_SPOOL_PATH,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        recovery_interval: float = DEFAULT_RECOVERY_INTERVAL,
        max_workers: int = 10,
        io_workers: int = 4,
        max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
        metrics: Metrics | bool | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.recorder = EnvelopeRecorder(
            buffer,
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
        self.handler = handler
        self._handler_is_async = is_async_callable(handler)
        self._io = OffLoop(io_workers)
        self._workers = ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="recorder-handler"
        )
        self._client: AsyncBaseSocketModeClient | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._maintenance = AsyncMaintenance(self.recorder, self._dispatch_claims, self._io)

    def attach(self, client: AsyncBaseSocketModeClient) -> AsyncRecordingListener:
        """Listen on ``client``; the background work starts with the first envelope,
        or at once when called from a running event loop."""
        client.message_listeners.append(capture_frame_async)
        client.socket_mode_request_listeners.append(self)
        self._client = self._client or client
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            self._ensure_started(client)
        return self

    async def start(self, client: AsyncBaseSocketModeClient) -> None:
        """Start the background work (recovery first) on the running loop."""
        self._ensure_started(client)

    def _ensure_started(self, client: AsyncBaseSocketModeClient) -> None:
        self._client = self._client or client
        self._maintenance.start()

    async def __call__(self, client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
        self._ensure_started(client)
        received = time.perf_counter()
        text, frame = frame_of(request)
        outcome = await self._io.run(self.recorder.record, request.envelope_id, text, frame)
        if not outcome.ack:
            return
        try:
            await client.send_socket_mode_response(
                SocketModeResponse(envelope_id=request.envelope_id)
            )
            self.recorder.acked(time.perf_counter() - received)
        finally:
            if outcome.dispatch:
                self._dispatch(client, request)

    def _dispatch(self, client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
        task = asyncio.ensure_future(self._run(client, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
        ok = False
        try:
            if self._handler_is_async:
                await self.handler(client, request)
            else:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._workers, self.handler, client, request)
            ok = True
        except Exception:
            logger.exception(
                "handler failed for envelope %s; it stays pending",
                request.envelope_id,
                extra={"envelope_id": request.envelope_id, "envelope_type": request.type},
            )
        finally:
            await self._io.run(self.recorder.finish, request.envelope_id, ok)

    async def recover(self) -> int:
        """Claim envelopes pending longer than the lease and dispatch them here.

        Raises
        ------
        ConfigurationError
            The listener has no client yet.
        StorageUnavailable
            The database did not answer.
        """
        self._require_client()
        claims = await self._io.run(self.recorder.claim_stale)
        self._dispatch_claims(claims)
        return len(claims)

    def _dispatch_claims(self, claims: list[ClaimedEnvelope]) -> None:
        client = self._require_client()
        for claim in claims:
            request = SocketModeRequest.from_dict(claim.envelope)
            if request is None:
                logger.error(
                    "stored envelope %s is not a Socket Mode request; left pending",
                    claim.envelope_id,
                    extra={"envelope_id": claim.envelope_id},
                )
                # Off the loop, like every database call.
                pending = asyncio.ensure_future(
                    self._io.run(self.recorder.finish, claim.envelope_id, False)
                )
                self._tasks.add(pending)
                pending.add_done_callback(self._tasks.discard)
                continue
            self._dispatch(client, request)

    def _require_client(self) -> AsyncBaseSocketModeClient:
        if self._client is None:
            raise ConfigurationError("the listener has no client yet; call attach(client) first")
        return self._client

    async def close(self) -> None:
        """Stop the background work, wait for running handlers, drain once more."""
        await self._maintenance.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._io.run(self.recorder.close)
        self._workers.shutdown(wait=True)
        self._io.shutdown()

    async def __aenter__(self) -> AsyncRecordingListener:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
