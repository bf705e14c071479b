"""``recorder listen``: an archiving app that records everything it receives.

For a Slack app dedicated to the audit trail: every envelope is recorded and
acked; there is nothing else to do, so each is marked complete at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.socket_mode.websocket_client import SocketModeClient

from recorder.adapters.sql import SQLEventBuffer
from recorder.errors import ConfigurationError, RecorderError
from recorder.settings import DEFAULT_SPOOL_PATH, OnStorageError
from recorder.slack.listener import RecordingListener
from recorder.slack.recording import RecorderStats

__all__ = ["listen"]

logger = logging.getLogger("recorder.slack")


def _archive_only(client: Any, request: Any) -> None:
    """Recording is the whole job of an archiving app."""


def listen(
    database_url: str,
    app_token: str | None,
    *,
    on_storage_error: OnStorageError = "spool",
    spool_path: str | Path = DEFAULT_SPOOL_PATH,
    api_url: str | None = None,
    metrics_port: int | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[], None] | None = None,
) -> RecorderStats:
    """Record every envelope the app receives until SIGINT or SIGTERM (or ``stop``).

    Raises
    ------
    ConfigurationError
        No app token, or not an app-level (``xapp-``) token.
    """
    if not app_token:
        raise ConfigurationError("no app token: set SLACK_APP_TOKEN or pass --app-token")
    if not app_token.startswith("xapp-"):
        raise ConfigurationError("the app token must be an app-level token starting with xapp-")
    metrics: bool = False
    if metrics_port is not None:
        from recorder.slack.metrics import RecorderMetrics

        RecorderMetrics.default()
        import prometheus_client

        try:
            prometheus_client.start_http_server(metrics_port)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on port {metrics_port}: {exc.strerror or exc}"
            ) from exc
        metrics = True
    stop = stop or threading.Event()
    buffer = SQLEventBuffer(database_url, upgrade=database_url.startswith("sqlite"))
    web_client = WebClient(base_url=api_url) if api_url else WebClient()
    client = SocketModeClient(app_token=app_token, web_client=web_client)
    listener = RecordingListener(
        buffer,
        _archive_only,
        on_storage_error=on_storage_error,
        spool_path=spool_path,
        metrics=metrics,
    )
    previous = _install_signal_handlers(stop)
    try:
        listener.attach(client)
        _connect(client)
        logger.info("listening; stop with Ctrl-C or SIGTERM")
        if on_ready is not None:
            on_ready()
        stop.wait()
    finally:
        _restore_signal_handlers(previous)
        _close(client)
        listener.close()
        buffer.close()
    return listener.stats


def _close(client: SocketModeClient) -> None:
    """Close the link now, not at the next ping.

    ``SocketModeClient.close`` closes the socket under the thread that reads
    it, which waits in ``select`` on the closed descriptor until its next
    ping (10 s); under load a SIGTERM took over 30 s to end ``listen``. A
    close frame, then ``abort`` (a shutdown of the socket), wakes that thread
    at once.
    """
    session = client.current_session
    link = getattr(session, "sock", None)
    if link is not None:
        # Best effort: the link may be gone already; close() below still runs.
        with contextlib.suppress(Exception):
            link.send_close()
        with contextlib.suppress(Exception):
            link.abort()
    client.close()


def _connect(client: SocketModeClient) -> None:
    """Open the Socket Mode link; Slack not answering, or refusing the token, is one error."""
    try:
        client.connect()
    except (SlackApiError, SlackClientError, OSError) as exc:
        reason = exc.response.get("error") if isinstance(exc, SlackApiError) else exc
        raise RecorderError(
            f"could not connect to Slack (apps.connections.open at {client.web_client.base_url}): "
            f"{reason}"
        ) from exc


def _install_signal_handlers(stop: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
