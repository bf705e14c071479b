"""The whole Socket Mode frame of a request, as received.

``SocketModeRequest.to_dict()`` drops ``retry_attempt``, ``retry_reason`` and
``accepts_response_payload``, so the frame is taken from the raw WebSocket
message instead: a message listener (:func:`capture_frame`, run by the client
just before the request listeners, in the same thread or task) keeps the
text in a context variable, and :func:`frame_of` picks it up. When a listener
was added without the capture (appended to ``socket_mode_request_listeners``
by hand), the frame is rebuilt from every field the request carries.

The captured text is what the buffer decodes (strictly: a frame repeating a
key is refused, see :func:`recorder.envelope.loads_strict`); slack_sdk's own
decoded dict keeps the last of repeated keys, so it is never what gets
stored. A rebuilt frame is slack_sdk's dict re-encoded: it cannot repeat a
key, but a repeat in the original frame can no longer be seen either.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Mapping
from typing import Any

from slack_sdk.socket_mode.request import SocketModeRequest

__all__ = ["capture_frame", "capture_frame_async", "frame_of", "rebuild_frame"]

# (envelope_id, raw text, decoded frame) of the message being processed. The
# sync clients run a message's listeners in one worker thread, the async ones
# in one task; either way the request listener sees what the capture set.
_current: contextvars.ContextVar[tuple[str, str, dict[str, Any]] | None] = contextvars.ContextVar(
    "recorder_current_frame", default=None
)


def _remember(message: Mapping[str, Any], raw_message: str | None) -> None:
    envelope_id = message.get("envelope_id")
    if isinstance(envelope_id, str) and isinstance(raw_message, str):
        _current.set((envelope_id, raw_message, dict(message)))
    else:
        _current.set(None)


def capture_frame(client: Any, message: dict[str, Any], raw_message: str | None = None) -> None:
    """A ``message_listeners`` entry for the sync clients."""
    _remember(message, raw_message)


async def capture_frame_async(
    client: Any, message: dict[str, Any], raw_message: str | None = None
) -> None:
    """A ``message_listeners`` entry for the async clients."""
    _remember(message, raw_message)


def rebuild_frame(request: SocketModeRequest) -> dict[str, Any]:
    """The frame as Slack sends it, from every field ``request`` keeps."""
    frame: dict[str, Any] = {
        "envelope_id": request.envelope_id,
        "payload": request.payload,
        "type": request.type,
        "accepts_response_payload": request.accepts_response_payload,
    }
    if request.retry_attempt is not None:
        frame["retry_attempt"] = request.retry_attempt
    if request.retry_reason is not None:
        frame["retry_reason"] = request.retry_reason
    return frame


def frame_of(request: SocketModeRequest) -> tuple[str, dict[str, Any]]:
    """``(json_text, frame)`` for ``request``: the received text when captured."""
    current = _current.get()
    if current is not None and current[0] == request.envelope_id:
        _current.set(None)
        return current[1], current[2]
    frame = rebuild_frame(request)
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":")), frame
