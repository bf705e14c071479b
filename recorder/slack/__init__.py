"""Slack Socket Mode integration: record every envelope, ack it, handle it once.

* :class:`RecordingListener` for the sync slack_sdk clients (builtin,
  websocket_client), :class:`AsyncRecordingListener` for the asyncio ones
  (aiohttp, websockets);
* :mod:`recorder.slack.bolt`: drop-in replacements for slack_bolt's
  ``SocketModeHandler`` and ``AsyncSocketModeHandler``.

Needs the ``slack`` extra (``pip install 'envelope-recorder[slack]'``).
"""

from __future__ import annotations

from recorder.errors import MissingDependency

try:
    import slack_sdk  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependency("slack_sdk", "slack") from exc

from recorder.slack.async_listener import AsyncHandler, AsyncRecordingListener
from recorder.slack.listener import Handler, RecordingListener
from recorder.slack.metrics import Metrics, RecorderMetrics
from recorder.slack.recording import OnStorageError, Outcome, RecorderStats

__all__ = [
    "AsyncHandler",
    "AsyncRecordingListener",
    "Handler",
    "Metrics",
    "OnStorageError",
    "Outcome",
    "RecorderMetrics",
    "RecorderStats",
    "RecordingListener",
]
