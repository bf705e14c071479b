"""Bolt middleware for HTTP mode: record each verified request before any listener runs.

::

    app = App(signing_secret=SIGNING_SECRET, token=BOT_TOKEN)
    app.use(RecorderMiddleware(buffer))            # AsyncRecorderMiddleware for AsyncApp

Added with ``app.use``, the middleware runs after Bolt's built-in ones: the
SSL check and URL verification are answered before it, Bolt's
RequestVerification has refused (401) any request whose signature or
timestamp does not verify (so such a request is never stored), and the
authorization and self-event filters have run. The app's own events, which
Bolt's ``IgnoringSelfEvents`` acknowledges and drops, therefore never reach
the recorder and are not stored.

For each request the middleware records it (:mod:`recorder.http` says how
it maps to an envelope), then:

* new (or spooled while the database is away): hands it on to the
  listeners; ``context["envelope_id"]`` names the envelope;
* a duplicate (Slack's retry of a recorded event, ``X-Slack-Retry-Num``):
  answers 200 at once; no listener runs;
* not recorded (``"nack"`` policy with the database away): answers 503, so
  Slack retries; no listener runs. Under ``"raise"`` the error reaches
  Bolt's middleware error handler (500).

Bolt's lazy-listener re-invocations (``x-slack-bolt-lazy-only``, as the
AWS Lambda adapter sends them) carry the original request; they pass
through untouched, so a lazy listener runs although its request is recorded.

Bolt's global middleware cannot see a listener finish (``next()`` only lets
the chain continue), so an HTTP envelope is marked complete when the
middleware hands it on; Slack has its answer by then, and nothing re-runs it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from recorder.errors import MissingDependency

try:
    from slack_bolt.middleware.async_middleware import AsyncMiddleware
    from slack_bolt.middleware.middleware import Middleware
    from slack_bolt.request import BoltRequest
    from slack_bolt.request.async_request import AsyncBoltRequest
    from slack_bolt.response import BoltResponse
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependency("slack_bolt", "bolt") from exc

from recorder.adapter import EventBufferAdapter
from recorder.http import Decision, HttpRecorder
from recorder.slack.metrics import Metrics
from recorder.slack.recording import DEFAULT_SPOOL_PATH, OnStorageError, RecorderFront

__all__ = ["AsyncRecorderMiddleware", "RecorderMiddleware"]


def _answer(decision: Decision) -> BoltResponse:
    headers: dict[str, str | Sequence[str]] = {
        "content-type": decision.content_type,
        **decision.headers,
    }
    return BoltResponse(status=decision.status, body=decision.body, headers=headers)


def _passes_through(req: BoltRequest | AsyncBoltRequest) -> bool:
    # Socket Mode requests are recorded by the Socket Mode handlers; a lazy
    # re-invocation is a copy of a request already recorded.
    return req.mode != "http" or bool(req.lazy_only)


class _Front(RecorderFront):
    http: HttpRecorder

    def close(self) -> None:
        """Stop the background work and drain the spool once more; the buffer stays open."""
        self.http.close()


class RecorderMiddleware(_Front, Middleware):
    """Records every verified Slack HTTP request before Bolt's listeners see it.

    Parameters
    ----------
    buffer
        Where requests are recorded: an adapter, a database URL, or ``None``
        for ``RECORDER_DATABASE_URL`` (default ``sqlite:///recorder.db``).
    on_storage_error, spool_path, metrics
        As for :class:`~recorder.http.HttpRecorder`.
    """

    def __init__(
        self,
        buffer: EventBufferAdapter | str | None = None,
        *,
        on_storage_error: OnStorageError = "spool",
        spool_path: str | Path = DEFAULT_SPOOL_PATH,
        metrics: Metrics | bool | None = None,
    ) -> None:
        self.http = HttpRecorder(
            buffer, on_storage_error=on_storage_error, spool_path=spool_path, metrics=metrics
        )
        self.recorder = self.http.recorder

    def process(
        self,
        *,
        req: BoltRequest,
        resp: BoltResponse,
        next: Callable[[], BoltResponse],
    ) -> BoltResponse | None:
        if _passes_through(req):
            return next()
        received = time.perf_counter()
        decision = self.http.decide_verified(req.headers, req.raw_body)
        if not decision.dispatch:
            if decision.envelope_id is None and decision.status == 200:
                return next()  # not a recorded kind of request: Bolt decides
            return _answer(decision)
        req.context["envelope_id"] = decision.envelope_id
        self.http.answered(time.perf_counter() - received)
        self.http.finish(decision)
        return next()


class AsyncRecorderMiddleware(_Front, AsyncMiddleware):
    """:class:`RecorderMiddleware` for ``AsyncApp``.

    Database calls run in a small thread pool (``io_workers``), never on the
    event loop.
    """

    def __init__(
        self,
        buffer: EventBufferAdapter | str | None = None,
        *,
        on_storage_error: OnStorageError = "spool",
        spool_path: str | Path = DEFAULT_SPOOL_PATH,
        metrics: Metrics | bool | None = None,
        io_workers: int = 4,
    ) -> None:
        self.http = HttpRecorder(
            buffer, on_storage_error=on_storage_error, spool_path=spool_path, metrics=metrics
        )
        self.recorder = self.http.recorder
        self._io = ThreadPoolExecutor(max_workers=io_workers, thread_name_prefix="recorder-io")

    async def async_process(
        self,
        *,
        req: AsyncBoltRequest,
        resp: BoltResponse,
        next: Callable[[], Awaitable[BoltResponse]],
    ) -> BoltResponse | None:
        if _passes_through(req):
            return await next()
        received = time.perf_counter()
        loop = asyncio.get_running_loop()
        decision = await loop.run_in_executor(
            self._io, self.http.decide_verified, req.headers, req.raw_body
        )
        if not decision.dispatch:
            if decision.envelope_id is None and decision.status == 200:
                return await next()
            return _answer(decision)
        req.context["envelope_id"] = decision.envelope_id
        self.http.answered(time.perf_counter() - received)
        await loop.run_in_executor(self._io, self.http.finish, decision)
        return await next()

    def close(self) -> None:
        """Stop the background work and the I/O threads; the buffer stays open."""
        self.http.close()
        self._io.shutdown(wait=True)
