"""The background work of every Slack front-end, run once: a thread (sync) or a task (async).

Both run :meth:`~recorder.slack.recording.EnvelopeRecorder.tick` every
:attr:`~recorder.slack.options.RecorderOptions.tick_seconds`, recovery first,
and hand the claims recovery returns to the front-end's ``dispatch``.
:class:`OffLoop` keeps the recorder's blocking calls off an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from recorder.adapter import ClaimedEnvelope
from recorder.slack.recording import EnvelopeRecorder

__all__ = ["AsyncMaintenance", "Dispatch", "Maintenance", "OffLoop"]

_T = TypeVar("_T")

#: What a front-end does with the envelopes recovery claimed.
Dispatch = Callable[[list[ClaimedEnvelope]], None]


class Maintenance:
    """The recorder's background work on a daemon thread."""

    def __init__(self, recorder: EnvelopeRecorder, dispatch: Dispatch) -> None:
        self._recorder = recorder
        self._dispatch = dispatch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Take over a spool an earlier run left, then start the thread. Idempotent."""
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._recorder.open_existing_spool()
            self._thread = threading.Thread(
                target=self._run, name="recorder-maintenance", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        force = True
        interval = self._recorder.options.tick_seconds
        while not self._stop.is_set():
            claims = self._recorder.tick(force_recovery=force)
            force = False
            if claims:
                self._dispatch(claims)
            self._stop.wait(interval)

    def stop(self) -> None:
        """Stop the thread and wait for its current tick."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


class OffLoop:
    """A small thread pool for the recorder's blocking calls: never on the event loop."""

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recorder-io")

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class AsyncMaintenance:
    """The recorder's background work as a task on the running event loop."""

    def __init__(self, recorder: EnvelopeRecorder, dispatch: Dispatch, io: OffLoop) -> None:
        self._recorder = recorder
        self._dispatch = dispatch
        self._io = io
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        """Start on the running loop (call from a coroutine). Idempotent."""
        if self._task is None and not self._stopped:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="recorder-maintenance"
            )

    async def _run(self) -> None:
        await self._io.run(self._recorder.open_existing_spool)
        force = True
        interval = self._recorder.options.tick_seconds
        while not self._stopped:
            claims = await self._io.run(lambda f=force: self._recorder.tick(force_recovery=f))
            force = False
            if claims:
                self._dispatch(claims)
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        """Cancel the task and wait for it to end."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
