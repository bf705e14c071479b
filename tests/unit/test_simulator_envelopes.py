"""EnvelopeFactory: realistic, unique, reproducible Socket Mode envelopes (no I/O)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from recorder.errors import RecorderError
from recorder.testing.envelopes import EnvelopeFactory, SimulatorError


def _all_kinds(factory: EnvelopeFactory) -> list[dict[str, Any]]:
    return [
        factory.message("hi"),
        factory.app_mention("help"),
        factory.reaction_added("eyes"),
        factory.slash_command("/deploy", "prod"),
        factory.block_actions("approve", "yes"),
        factory.view_submission("signup"),
    ]


def test_every_envelope_has_a_fresh_uuid_and_every_event_a_fresh_event_id() -> None:
    factory = EnvelopeFactory()
    envelopes = [factory.message(f"m{i}") for i in range(500)]

    ids = [e["envelope_id"] for e in envelopes]
    event_ids = [e["payload"]["event_id"] for e in envelopes]
    assert len(set(ids)) == 500
    assert len(set(event_ids)) == 500
    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert all(e.startswith("Ev") and len(e) == 12 for e in event_ids)
    timestamps = [e["payload"]["event"]["ts"] for e in envelopes]
    assert timestamps == sorted(timestamps, key=float)
    assert len(set(timestamps)) == 500


def test_ids_stay_unique_across_threads() -> None:
    factory = EnvelopeFactory()
    ids: list[str] = []
    lock = threading.Lock()

    def make() -> None:
        made = [factory.envelope_id() for _ in range(500)]
        with lock:
            ids.extend(made)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 2000


def test_a_seed_replays_the_same_stream() -> None:
    assert _all_kinds(EnvelopeFactory(seed=42)) == _all_kinds(EnvelopeFactory(seed=42))
    assert _all_kinds(EnvelopeFactory(seed=42)) != _all_kinds(EnvelopeFactory(seed=43))


def test_envelope_shapes_follow_slack() -> None:
    factory = EnvelopeFactory(team_id="T1", api_app_id="A1", channel_id="C1", user_id="U1")
    message, mention, reaction, command, actions, submission = _all_kinds(factory)

    for envelope in (message, mention, reaction):
        assert envelope["type"] == "events_api"
        assert envelope["accepts_response_payload"] is False
        assert (envelope["retry_attempt"], envelope["retry_reason"]) == (0, "")
        payload = envelope["payload"]
        assert payload["type"] == "event_callback"
        assert (payload["team_id"], payload["api_app_id"]) == ("T1", "A1")
        assert payload["authorizations"][0]["team_id"] == "T1"
    assert message["payload"]["event"]["channel"] == "C1"
    assert mention["payload"]["event"]["text"].startswith(f"<@{factory.bot_user_id}>")
    assert reaction["payload"]["event"]["item"]["channel"] == "C1"

    assert command["type"] == "slash_commands"
    assert command["accepts_response_payload"] is True
    assert (command["payload"]["command"], command["payload"]["text"]) == ("/deploy", "prod")

    assert actions["type"] == submission["type"] == "interactive"
    assert actions["accepts_response_payload"] is False
    assert actions["payload"]["actions"][0]["action_id"] == "approve"
    assert submission["accepts_response_payload"] is True
    assert submission["payload"]["view"]["callback_id"] == "signup"
    assert "retry_attempt" not in command
    assert "retry_attempt" not in actions


def test_extra_fields_reach_the_event_and_values_are_copied() -> None:
    factory = EnvelopeFactory()
    threaded = factory.message("reply", thread_ts="1.000001", subtype="thread_broadcast")
    assert threaded["payload"]["event"]["thread_ts"] == "1.000001"
    assert threaded["payload"]["event"]["subtype"] == "thread_broadcast"

    values = {"b": {"a": {"value": "x"}}}
    submission = factory.view_submission("f", values)
    values["b"]["a"]["value"] = "changed"
    assert submission["payload"]["view"]["state"]["values"]["b"]["a"]["value"] == "x"


def test_retry_of_keeps_the_payload_and_counts_attempts() -> None:
    factory = EnvelopeFactory()
    original = factory.message("again")
    first = factory.retry_of(original)
    second = factory.retry_of(first, reason="http_timeout")
    explicit = factory.retry_of(original, attempt=3)

    assert len({original["envelope_id"], first["envelope_id"], second["envelope_id"]}) == 3
    assert first["payload"] == second["payload"] == original["payload"]
    assert (first["retry_attempt"], first["retry_reason"]) == (1, "timeout")
    assert (second["retry_attempt"], second["retry_reason"]) == (2, "http_timeout")
    assert explicit["retry_attempt"] == 3
    assert (original["retry_attempt"], original["retry_reason"]) == (0, "")
    first["payload"]["event"]["text"] = "mutated"
    assert original["payload"]["event"]["text"] == "again"


def test_bad_input_raises_simulator_error() -> None:
    factory = EnvelopeFactory()
    with pytest.raises(SimulatorError, match="type"):
        factory.events_api({"text": "no type"})
    with pytest.raises(SimulatorError, match="'/'"):
        factory.slash_command("deploy")
    with pytest.raises(SimulatorError, match="payload"):
        factory.retry_of({"envelope_id": "x", "type": "events_api"})
    assert issubclass(SimulatorError, RecorderError)
