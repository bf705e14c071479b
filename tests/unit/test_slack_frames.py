"""Frame capture and the pure parts of the recorder's decisions (no I/O)."""

from __future__ import annotations

import json
import threading

import pytest
from slack_sdk.socket_mode.request import SocketModeRequest

from recorder.slack.frames import capture_frame, frame_of, rebuild_frame
from recorder.slack.recent import RecentKeys, dedupe_keys, event_id_of
from recorder.slack.recording import Outcome

RETRY = {
    "envelope_id": "e-2",
    "payload": {"event_id": "Ev1", "event": {"type": "message", "text": "hi"}},
    "type": "events_api",
    "accepts_response_payload": False,
    "retry_attempt": 2,
    "retry_reason": "timeout",
}


def test_rebuilt_frame_keeps_the_fields_to_dict_drops() -> None:
    request = SocketModeRequest.from_dict(RETRY)
    assert request is not None
    assert "retry_attempt" not in request.to_dict()
    assert rebuild_frame(request) == RETRY


def test_rebuilt_slash_command_has_no_retry_fields() -> None:
    command = {
        "envelope_id": "e-3",
        "payload": {"command": "/deploy"},
        "type": "slash_commands",
        "accepts_response_payload": True,
    }
    request = SocketModeRequest.from_dict(command)
    assert request is not None
    assert rebuild_frame(request) == command


def test_captured_text_is_used_byte_for_byte_for_the_same_envelope_only() -> None:
    raw = json.dumps(RETRY, indent=1)  # spacing a rebuild would not reproduce
    request = SocketModeRequest.from_dict(RETRY)
    assert request is not None
    capture_frame(None, RETRY, raw)
    assert frame_of(request) == (raw, RETRY)
    # Consumed: the next request (without a capture) is rebuilt.
    text, frame = frame_of(request)
    assert text != raw
    assert json.loads(text) == frame == RETRY

    other = SocketModeRequest.from_dict({**RETRY, "envelope_id": "e-9"})
    assert other is not None
    capture_frame(None, RETRY, raw)
    assert frame_of(other)[1]["envelope_id"] == "e-9"


def test_capture_is_per_thread() -> None:
    request = SocketModeRequest.from_dict(RETRY)
    assert request is not None
    capture_frame(None, RETRY, "captured elsewhere")
    seen: list[str] = []
    thread = threading.Thread(target=lambda: seen.append(frame_of(request)[0]))
    thread.start()
    thread.join()
    assert seen[0] != "captured elsewhere"
    assert frame_of(request)[0] == "captured elsewhere"


@pytest.mark.parametrize(
    ("outcome", "ack", "dispatch"),
    [
        (Outcome.NEW, True, True),
        (Outcome.SPOOLED, True, True),
        (Outcome.DUPLICATE, True, False),
        (Outcome.NACKED, False, False),
        (Outcome.REJECTED, False, False),
    ],
)
def test_only_recorded_envelopes_are_acked_and_only_new_ones_dispatched(
    outcome: Outcome, ack: bool, dispatch: bool
) -> None:
    assert (outcome.ack, outcome.dispatch) == (ack, dispatch)


def test_dedupe_keys_cover_the_event_id_of_events_only() -> None:
    assert event_id_of(RETRY) == "Ev1"
    assert event_id_of({**RETRY, "type": "interactive"}) is None
    assert event_id_of({"type": "events_api", "payload": "text"}) is None
    assert dedupe_keys("e-2", "Ev1") == ["envelope:e-2", "event:Ev1"]
    assert dedupe_keys("e-2", None) == ["envelope:e-2"]


def test_recent_keys_expire_are_bounded_and_pins_outlive_the_ttl() -> None:
    now = [100.0]
    recent = RecentKeys(ttl=60, max_keys=3, clock=lambda: now[0])
    recent.add(["a", "b"])
    assert recent.any_of(["x", "a"])
    recent.add(["c", "d"])  # over the bound: the oldest goes
    assert not recent.any_of(["a"])
    assert recent.any_of(["d"])
    recent.pin(["p"])
    now[0] += 61
    assert not recent.any_of(["d"])
    assert recent.any_of(["p"])
    recent.unpin_all_but(set())
    assert recent.any_of(["p"])  # unpinned, but remembered for one more TTL
    now[0] += 61
    assert not recent.any_of(["p"])
