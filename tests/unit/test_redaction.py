"""Redaction before storage: masked and dropped paths, never mutating the caller's envelope."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest

from recorder.envelope import (
    DEFAULT_REDACTION,
    REDACTED,
    Redaction,
    parse_envelope,
    parse_envelope_text,
)
from recorder.errors import ConfigurationError
from recorder.settings import resolve_redaction

# Any: the tests index into nested payloads the way Slack delivers them.
SLASH: dict[str, Any] = {
    "envelope_id": "e1",
    "type": "slash_commands",
    "payload": {
        "token": "verification-token",
        "team_id": "T1",
        "command": "/deploy",
        "text": "prod",
        "response_url": "https://hooks.slack.com/commands/T1/1/secret",
    },
}
VIEW_SUBMISSION: dict[str, Any] = {
    "envelope_id": "e2",
    "type": "interactive",
    "payload": {
        "type": "view_submission",
        "token": "verification-token",
        "response_urls": [
            {"block_id": "b", "response_url": "https://hooks.slack.com/app/1"},
            {"block_id": "c", "response_url": "https://hooks.slack.com/app/2"},
        ],
    },
}


def test_defaults_mask_the_token_and_response_urls_in_the_stored_copy_only() -> None:
    given = copy.deepcopy(SLASH)
    parsed = parse_envelope("e1", given, redaction=Redaction.default())
    assert given == SLASH  # the caller's envelope is untouched
    stored = json.loads(parsed.text)
    assert stored["payload"]["token"] == REDACTED
    assert stored["payload"]["response_url"] == REDACTED
    assert stored["payload"]["text"] == "prod"
    assert "verification-token" not in parsed.text
    assert "secret" not in parsed.text
    assert parsed.data == stored
    assert parsed.sha256 == hashlib.sha256(parsed.text.encode()).hexdigest()
    assert parsed.columns["event_type"] == "/deploy"


def test_wildcards_reach_every_list_item() -> None:
    given = copy.deepcopy(VIEW_SUBMISSION)
    parsed = parse_envelope("e2", given, redaction=Redaction.default())
    urls = [item["response_url"] for item in parsed.data["payload"]["response_urls"]]
    assert urls == [REDACTED, REDACTED]
    assert given == VIEW_SUBMISSION


def test_drop_removes_keys_and_list_items() -> None:
    redaction = Redaction(drop=("payload.text", "payload.response_urls.0"))
    data, changed = redaction.apply(VIEW_SUBMISSION | {"payload": SLASH["payload"]})
    assert changed
    assert "text" not in data["payload"]
    first = Redaction(drop=("payload.response_urls.0",)).apply(VIEW_SUBMISSION)[0]
    assert [u["block_id"] for u in first["payload"]["response_urls"]] == ["c"]
    assert len(VIEW_SUBMISSION["payload"]["response_urls"]) == 2


def test_text_without_anything_to_redact_keeps_its_exact_bytes() -> None:
    text = '{ "envelope_id": "e3",  "type": "events_api", "payload": {"event": {"type": "x"}}}'
    parsed = parse_envelope("e3", text, redaction=Redaction.default())
    assert parsed.text == text
    assert parse_envelope("e3", text.encode(), redaction=Redaction.default()).text == text


def test_text_with_a_secret_is_reserialised_and_digested_after_redaction() -> None:
    text = json.dumps(SLASH, indent=2)
    parsed = parse_envelope("e1", text, redaction=Redaction.default())
    assert "verification-token" not in parsed.text
    assert parsed.sha256 == hashlib.sha256(parsed.text.encode()).hexdigest()
    line = parse_envelope_text(text, redaction=Redaction.default())
    assert line.text == parsed.text


def test_redacting_twice_changes_nothing_so_reimports_keep_their_digest() -> None:
    once = parse_envelope("e1", SLASH, redaction=Redaction.default())
    again = parse_envelope_text(once.text, redaction=Redaction.default())
    assert again.text == once.text
    assert again.sha256 == once.sha256
    assert Redaction.default().apply(once.data) == (once.data, False)


def test_no_redaction_stores_the_envelope_as_given() -> None:
    for redaction in (None, Redaction.none()):
        parsed = parse_envelope("e1", SLASH, redaction=redaction)
        assert json.loads(parsed.text) == SLASH


def test_masking_a_value_of_any_type_and_absent_paths() -> None:
    redaction = Redaction(mask=("payload.blob", "payload.missing.deeper", "payload.text.x"))
    data, changed = redaction.apply({"payload": {"blob": {"a": [1, 2]}, "text": "str"}})
    assert changed
    assert data == {"payload": {"blob": REDACTED, "text": "str"}}
    assert Redaction(mask=("nope",)).apply({"a": 1}) == ({"a": 1}, False)


def test_parse_reads_recorder_redact_specs() -> None:
    assert Redaction.parse("off") == Redaction.none()
    assert Redaction.parse("none").enabled is False
    assert Redaction.parse("default") == Redaction.default()
    custom = Redaction.parse("default, drop:payload.event.text,mask:payload.user")
    assert custom.drop == ("payload.event.text",)
    assert custom.mask[-1] == "payload.user"
    assert set(Redaction.default().mask) <= set(custom.mask)
    with pytest.raises(ConfigurationError, match="RECORDER_REDACT"):
        Redaction.parse("hide:payload.x")
    with pytest.raises(ConfigurationError, match=r"RECORDER_REDACT: redaction path 'a\.\.b'"):
        Redaction.parse("mask:a..b")


@pytest.mark.parametrize("path", ["", "payload..token", "envelope_id", "*", "*.x", ".a"])
def test_unusable_paths_are_configuration_errors(path: str) -> None:
    with pytest.raises(ConfigurationError, match="redaction path"):
        Redaction(mask=(path,))


def test_adapters_default_follows_recorder_redact_and_explicit_values_win() -> None:
    assert resolve_redaction(DEFAULT_REDACTION, {}) == Redaction.default()
    assert resolve_redaction(DEFAULT_REDACTION, {"RECORDER_REDACT": "off"}) == Redaction.none()
    assert resolve_redaction(None, {"RECORDER_REDACT": "default"}) == Redaction.none()
    mine = Redaction(mask=("payload.x",))
    assert resolve_redaction(mine, {"RECORDER_REDACT": "off"}) is mine
