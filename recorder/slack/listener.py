"""``RecordingListener``: record, ack, then handle, for the sync slack_sdk clients."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from slack_sdk.socket_mode.client import BaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from recorder.adapter import ClaimedEnvelope, EventBufferAdapter
from recorder.errors import ConfigurationError
from recorder.slack.background import Maintenance
from recorder.slack.frames import capture_frame, frame_of
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

__all__ = ["Handler", "RecordingListener"]

logger = logging.getLogger("recorder.slack")

#: ``handler(client, request)``, called once per new envelope.
Handler = Callable[[BaseSocketModeClient, SocketModeRequest], Any]


class RecordingListener(RecorderFront):
    """Records each envelope, acks it, then calls ``handler`` once per envelope.

    For the sync slack_sdk clients (``slack_sdk.socket_mode.builtin`` and
    ``slack_sdk.socket_mode.websocket_client``). Add it with :meth:`attach`
    (which also captures the exact frame text), or append it to
    ``client.socket_mode_request_listeners`` yourself.

    For each envelope, in this order:

    1. the whole frame is recorded (retry fields included);
    2. the ack ``SocketModeResponse(envelope_id=...)`` is sent, so an
       acknowledged envelope is never lost;
    3. for a new envelope only, ``handler(client, request)`` runs in this
       listener's thread pool, so a slow handler never delays other acks.
       When it returns the envelope is marked complete; when it raises, the
       exception is logged with the envelope id and the envelope stays
       pending, for :meth:`recover`.

    Parameters
    ----------
    buffer
        Where envelopes are recorded, usually a
        :class:`~recorder.adapters.sql.SQLEventBuffer`.
    handler
        Your code: ``handler(client, request)``.
    on_storage_error
        What happens when the database does not answer:

        * ``"spool"`` (default): the envelope is written to a local SQLite
          file (``spool_path``), acked and handled (once per process); the
          spool is drained into the database in the background once it
          answers, with each envelope's completion state.
        * ``"nack"``: no ack, no handling; Slack redelivers it.
        * ``"raise"``: :class:`~recorder.errors.StorageUnavailable` propagates
          to the client (which logs it); no ack.

        An envelope that was not recorded is never handled.
    spool_path
        The spool file; kept across restarts, drained by the next run.
    lease_seconds
        A pending envelope whose handler showed no sign of life for this long
        (crashed, process killed) is taken over by :meth:`recover`. Claims of
        running handlers are renewed every third of it, so long handlers are
        safe while their process lives.
    recovery_interval
        Seconds between recovery runs (one runs at start).
    max_workers
        Handler threads.
    max_attempts
        Recovery gives up on an envelope after this many dispatches (it stays
        pending, visible in ``recorder query``).
    metrics
        ``True`` for Prometheus metrics (the ``metrics`` extra), or a
        :class:`~recorder.slack.metrics.Metrics`.
    monotonic, clock
        The clocks: monotonic seconds for when renewals and recovery are due,
        UTC wall time for the spool. Tests pass a
        :class:`~recorder.testing.clock.ManualClock`'s (and give the buffer
        its ``now``), so a lease expires when the test says, not after a wait.

    Notes
    -----
    Exactly-once holds across instances sharing a database. While an
    instance spools, it dedupes only against what it has seen itself; use
    ``"nack"`` where a duplicate during an outage is unacceptable.
    """

    def __init__(
        self,
        buffer: EventBufferAdapter,
        handler: Handler,
        *,
        on_storage_error: OnStorageError = "spool",
        spool_path: str | Path = DEFAULT_SPOOL_PATH,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        recovery_interval: float = DEFAULT_RECOVERY_INTERVAL,
        max_workers: int = 10,
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
        self._pool = ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="recorder-handler"
        )
        self._client: BaseSocketModeClient | None = None
        self._maintenance = Maintenance(self.recorder, self._dispatch_claims)

    def attach(self, client: BaseSocketModeClient) -> RecordingListener:
        """Listen on ``client`` and start the background work (recovery first).

        Registers a message listener that keeps the exact frame text, and
        this listener in ``client.socket_mode_request_listeners``.
        """
        client.message_listeners.append(capture_frame)
        client.socket_mode_request_listeners.append(self)
        self.start(client)
        return self

    def start(self, client: BaseSocketModeClient) -> None:
        """Start the background thread: recovery now, then drain, renewals, recovery."""
        self._client = self._client or client
        self._maintenance.start()

    def __call__(self, client: BaseSocketModeClient, request: SocketModeRequest) -> None:
        if not self._maintenance.started:
            self.start(client)
        received = time.perf_counter()
        text, frame = frame_of(request)
        outcome = self.recorder.record(request.envelope_id, text, frame)
        if not outcome.ack:
            return
        try:
            client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
            self.recorder.acked(time.perf_counter() - received)
        finally:
            # Recorded is what counts: even if the ack could not be written
            # (a dropped connection), the envelope is handled here, and the
            # redelivery Slack sends is a duplicate.
            if outcome.dispatch:
                self._submit(client, request)

    def _submit(self, client: BaseSocketModeClient, request: SocketModeRequest) -> None:
        try:
            self._pool.submit(self._run, client, request)
        except RuntimeError:
            # Shutting down: the envelope stays pending and is recovered later.
            self.recorder.finish(request.envelope_id, ok=False)

    def _run(self, client: BaseSocketModeClient, request: SocketModeRequest) -> None:
        ok = False
        try:
            self.handler(client, request)
            ok = True
        except Exception:
            logger.exception(
                "handler failed for envelope %s; it stays pending",
                request.envelope_id,
                extra={"envelope_id": request.envelope_id, "envelope_type": request.type},
            )
        finally:
            self.recorder.finish(request.envelope_id, ok)

    def recover(self) -> int:
        """Claim envelopes pending longer than the lease and dispatch them here.

        Returns how many were claimed. Two instances never claim the same one.

        Raises
        ------
        ConfigurationError
            The listener has no client yet (call :meth:`attach` first).
        StorageUnavailable
            The database did not answer.
        """
        self._require_client()
        claims = self.recorder.claim_stale()
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
                self.recorder.finish(claim.envelope_id, ok=False)
                continue
            self._submit(client, request)

    def _require_client(self) -> BaseSocketModeClient:
        if self._client is None:
            raise ConfigurationError("the listener has no client yet; call attach(client) first")
        return self._client

    def close(self, *, wait: bool = True) -> None:
        """Stop the background work, let running handlers finish, drain once more.

        Closing does not close the buffer, which stays the caller's.
        """
        self._maintenance.stop()
        self._pool.shutdown(wait=wait)
        self.recorder.close()

    def __enter__(self) -> RecordingListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
