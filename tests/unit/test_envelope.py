"""recorder.envelope: parsing, column extraction, limits. Pure functions, no I/O."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from recorder.envelope import (
    DEFAULT_MAX_ENVELOPE_BYTES,
    MAX_COLUMN_LENGTH,
    MAX_ENVELOPE_ID_LENGTH,
    decode_stored,
    extract_columns,
    parse_envelope,
    parse_envelope_text,
    validate_envelope_id,
)
from recorder.errors import InvalidEnvelope


def events_api(event: dict[str, Any], **payload: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "token": "XXYYZZ",
        "team_id": "T0001",
        "enterprise_id": None,
        "api_app_id": "A0001",
        "event": event,
        "type": "event_callback",
        "event_id": "Ev0001",
        "event_time": 1700000000,
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": "T0001",
                "user_id": "U0BOT",
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
    }
    body.update(payload)
    return {
        "envelope_id": "57d6a792-4d35-4d0b-b6aa-3361493e1caf",
        "payload": body,
        "type": "events_api",
        "accepts_response_payload": False,
        "retry_attempt": 0,
        "retry_reason": "",
    }


MESSAGE = {
    "client_msg_id": "8f6a2b1e",
    "type": "message",
    "text": "hello <@U0BOT>",
    "user": "U0AUTHOR",
    "ts": "1700000000.000100",
    "team": "T0001",
    "channel": "C0GENERAL",
    "event_ts": "1700000000.000100",
    "channel_type": "channel",
}


# -- column extraction: events_api


def test_events_api_message_columns() -> None:
    columns = extract_columns(events_api(MESSAGE))
    assert columns == {
        "envelope_type": "events_api",
        "team_id": "T0001",
        "enterprise_id": None,
        "api_app_id": "A0001",
        "event_id": "Ev0001",
        "event_type": "message",
        "channel_id": "C0GENERAL",
        "user_id": "U0AUTHOR",
        "retry_attempt": 0,
        "retry_reason": None,
    }


def test_events_api_reaction_added_takes_the_channel_from_the_item() -> None:
    event = {
        "type": "reaction_added",
        "user": "U0REACTOR",
        "reaction": "thumbsup",
        "item_user": "U0AUTHOR",
        "item": {"type": "message", "channel": "C0ITEM", "ts": "1700000000.000100"},
        "event_ts": "1700000001.000200",
    }
    columns = extract_columns(events_api(event, event_id="Ev0002"))
    assert columns["event_type"] == "reaction_added"
    assert columns["channel_id"] == "C0ITEM"
    assert columns["user_id"] == "U0REACTOR"
    assert columns["event_id"] == "Ev0002"


def test_events_api_channel_created_takes_the_id_of_the_channel_object() -> None:
    event = {
        "type": "channel_created",
        "channel": {
            "id": "C0NEW",
            "name": "project-x",
            "created": 1700000000,
            "creator": "U0CREATOR",
        },
        "event_ts": "1700000000.000300",
    }
    columns = extract_columns(events_api(event))
    assert columns["event_type"] == "channel_created"
    assert columns["channel_id"] == "C0NEW"
    assert columns["user_id"] is None


def test_events_api_user_change_takes_the_id_of_the_user_object() -> None:
    event = {
        "type": "user_change",
        "user": {"id": "U0CHANGED", "team_id": "T0001", "name": "ada", "deleted": False},
        "cache_ts": 1700000000,
        "event_ts": "1700000000.000400",
    }
    columns = extract_columns(events_api(event))
    assert columns["event_type"] == "user_change"
    assert columns["user_id"] == "U0CHANGED"
    assert columns["channel_id"] is None


@pytest.mark.parametrize("inner", ["message", "previous_message"])
def test_edited_and_deleted_messages_take_the_author_from_the_inner_message(inner: str) -> None:
    event = {
        "type": "message",
        "subtype": "message_changed" if inner == "message" else "message_deleted",
        "channel": "C0EDITS",
        inner: {"type": "message", "user": "U0AUTHOR", "text": "before", "ts": "1700000000.000100"},
        "event_ts": "1700000001.000200",
    }
    columns = extract_columns(events_api(event))
    assert columns["user_id"] == "U0AUTHOR"
    assert columns["channel_id"] == "C0EDITS"


def test_events_api_team_and_enterprise_fall_back_to_the_authorization() -> None:
    envelope = events_api(MESSAGE, team_id=None, enterprise_id=None)
    envelope["payload"]["authorizations"][0].update(team_id="T0AUTH", enterprise_id="E0AUTH")
    columns = extract_columns(envelope)
    assert columns["team_id"] == "T0AUTH"
    assert columns["enterprise_id"] == "E0AUTH"


def test_events_api_enterprise_grid_ids() -> None:
    columns = extract_columns(events_api(MESSAGE, enterprise_id="E0GRID"))
    assert columns["enterprise_id"] == "E0GRID"


# -- column extraction: slash commands and interactive payloads


def test_slash_command_columns() -> None:
    envelope = {
        "envelope_id": "b1c3f0a2",
        "type": "slash_commands",
        "accepts_response_payload": True,
        "payload": {
            "token": "XXYYZZ",
            "team_id": "T0001",
            "team_domain": "acme",
            "enterprise_id": "E0GRID",
            "channel_id": "C0GENERAL",
            "channel_name": "general",
            "user_id": "U0CALLER",
            "user_name": "ada",
            "command": "/deploy",
            "text": "api --force",
            "api_app_id": "A0001",
            "is_enterprise_install": "false",
            "response_url": "https://hooks.slack.com/commands/T0001/1/abc",
            "trigger_id": "1.2.abc",
        },
    }
    assert extract_columns(envelope) == {
        "envelope_type": "slash_commands",
        "team_id": "T0001",
        "enterprise_id": "E0GRID",
        "api_app_id": "A0001",
        "event_id": None,
        "event_type": "/deploy",
        "channel_id": "C0GENERAL",
        "user_id": "U0CALLER",
        "retry_attempt": None,
        "retry_reason": None,
    }


def interactive(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "envelope_id": "c2d4e6f8",
        "type": "interactive",
        "accepts_response_payload": payload["type"] == "view_submission",
        "payload": payload,
    }


def test_block_actions_columns() -> None:
    payload = {
        "type": "block_actions",
        "user": {"id": "U0CLICKER", "username": "ada", "name": "ada", "team_id": "T0001"},
        "api_app_id": "A0001",
        "token": "XXYYZZ",
        "container": {"type": "message", "message_ts": "1700000000.000100"},
        "trigger_id": "1.2.abc",
        "team": {"id": "T0001", "domain": "acme"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": "C0GENERAL", "name": "general"},
        "message": {"type": "message", "text": "Approve?", "ts": "1700000000.000100"},
        "response_url": "https://hooks.slack.com/actions/T0001/1/abc",
        "actions": [{"action_id": "approve", "block_id": "b1", "type": "button", "value": "yes"}],
    }
    assert extract_columns(interactive(payload)) == {
        "envelope_type": "interactive",
        "team_id": "T0001",
        "enterprise_id": None,
        "api_app_id": "A0001",
        "event_id": None,
        "event_type": "block_actions",
        "channel_id": "C0GENERAL",
        "user_id": "U0CLICKER",
        "retry_attempt": None,
        "retry_reason": None,
    }


def test_view_submission_columns() -> None:
    payload = {
        "type": "view_submission",
        "team": {"id": "T0001", "domain": "acme", "enterprise_id": "E0GRID"},
        "user": {"id": "U0SUBMITTER", "username": "ada", "team_id": "T0001"},
        "api_app_id": "A0001",
        "token": "XXYYZZ",
        "trigger_id": "1.2.abc",
        "view": {
            "id": "V0001",
            "type": "modal",
            "callback_id": "deploy_form",
            "state": {"values": {"b1": {"env": {"type": "plain_text_input", "value": "prod"}}}},
        },
        "response_urls": [],
    }
    columns = extract_columns(interactive(payload))
    assert columns["event_type"] == "view_submission"
    assert columns["team_id"] == "T0001"
    assert columns["enterprise_id"] == "E0GRID"
    assert columns["user_id"] == "U0SUBMITTER"
    assert columns["channel_id"] is None


def test_shortcut_columns() -> None:
    payload = {
        "type": "shortcut",
        "token": "XXYYZZ",
        "action_ts": "1700000000.000500",
        "team": {"id": "T0001", "domain": "acme"},
        "user": {"id": "U0SHORT", "username": "ada", "team_id": "T0001"},
        "is_enterprise_install": False,
        "enterprise": {"id": "E0ENT", "name": "Acme Corp"},
        "callback_id": "open_ticket",
        "trigger_id": "1.2.abc",
    }
    columns = extract_columns(interactive(payload))
    assert columns["event_type"] == "shortcut"
    assert columns["team_id"] == "T0001"
    assert columns["enterprise_id"] == "E0ENT"
    assert columns["user_id"] == "U0SHORT"


def test_unknown_type_keeps_what_the_common_fields_give() -> None:
    envelope = {
        "envelope_id": "d4e5",
        "type": "something_new",
        "payload": {"type": "novelty", "team": {"id": "T0001"}, "user_id": "U0X"},
        "retry_attempt": 2,
        "retry_reason": "timeout",
    }
    columns = extract_columns(envelope)
    assert columns["envelope_type"] == "something_new"
    assert columns["event_type"] == "novelty"
    assert columns["team_id"] == "T0001"
    assert columns["user_id"] == "U0X"
    assert columns["retry_attempt"] == 2
    assert columns["retry_reason"] == "timeout"


@pytest.mark.parametrize(
    "envelope",
    [
        {},
        {"type": 7},
        {"type": "events_api", "payload": "not an object"},
        {"type": "events_api", "payload": {"event": ["not", "an", "object"]}},
        {"type": "events_api", "payload": {"event": {"item": "x"}, "authorizations": "x"}},
        {"type": "events_api", "payload": {"authorizations": [1, 2]}},
        {"type": "interactive", "payload": {"team": [], "user": {"id": 5}}},
        {"type": "slash_commands", "payload": {"command": {"nested": True}}},
    ],
)
def test_malformed_shapes_give_empty_columns_not_errors(envelope: dict[str, Any]) -> None:
    columns = extract_columns(envelope)
    assert set(columns) >= {"envelope_type", "team_id", "event_id", "channel_id", "user_id"}
    assert all(value is None for key, value in columns.items() if key != "envelope_type")


# -- retry fields


def test_retry_fields_are_read_from_the_frame() -> None:
    envelope = events_api(MESSAGE)
    envelope.update(retry_attempt=3, retry_reason="http_timeout")
    columns = extract_columns(envelope)
    assert columns["retry_attempt"] == 3
    assert columns["retry_reason"] == "http_timeout"


@pytest.mark.parametrize("attempt", [True, "2", 2.0, 2**31, -(2**31) - 1, None, [1]])
def test_retry_attempt_that_is_not_a_32_bit_integer_is_left_empty(attempt: object) -> None:
    envelope = events_api(MESSAGE)
    envelope["retry_attempt"] = attempt
    assert extract_columns(envelope)["retry_attempt"] is None


# -- what is stored: exact text, digest


def test_text_is_kept_byte_for_byte_and_digest_covers_it() -> None:
    text = '{ "envelope_id" : "e1",\n  "type":"events_api", "payload": {"x": "caf\\u00e9 é"}}'
    parsed = parse_envelope("e1", text)
    assert parsed.text == text
    assert parsed.sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert parsed.data == json.loads(text)
    assert parsed.row()["envelope_text"] == text
    assert parsed.row()["envelope_sha256"] == parsed.sha256


def test_bytes_are_kept_byte_for_byte() -> None:
    raw = '{"envelope_id":"e1", "type":"x", "emoji":"😀", "k":  [1, 2.50, 1e3]}'.encode()
    parsed = parse_envelope("e1", raw)
    assert parsed.text.encode("utf-8") == raw
    assert parsed.sha256 == hashlib.sha256(raw).hexdigest()
    assert parse_envelope("e1", bytearray(raw)).text == parsed.text
    assert parse_envelope("e1", memoryview(raw)).text == parsed.text


def test_dict_is_serialised_compactly_and_decodes_back_equal() -> None:
    envelope = events_api(MESSAGE)
    parsed = parse_envelope(envelope["envelope_id"], envelope)
    assert parsed.text == json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))
    assert decode_stored(parsed.text) == envelope
    assert parsed.sha256 == hashlib.sha256(parsed.text.encode("utf-8")).hexdigest()
    assert parsed.columns == extract_columns(envelope)


def test_dict_strings_with_nul_and_lone_surrogates_survive_exactly() -> None:
    envelope = {
        "envelope_id": "e1",
        "type": "x",
        "a": "nul\x00here",
        "b": "lone\ud800",
        "\ud83d": 1,
    }
    parsed = parse_envelope("e1", envelope)
    parsed.text.encode("utf-8")  # storable as UTF-8 text
    assert "\x00" not in parsed.text
    assert decode_stored(parsed.text) == envelope


def test_jsonb_unsafe_escapes_get_a_queryable_copy_and_keep_the_exact_text() -> None:
    text = '{"envelope_id":"e1","type":"x","a":"nul\\u0000","b":"\\udc00x","ok":"\\ud83d\\ude00"}'
    parsed = parse_envelope("e1", text)
    assert parsed.text == text
    queryable = json.loads(parsed.queryable_text)
    assert queryable == {
        "envelope_id": "e1",
        "type": "x",
        "a": "nul\ufffd",
        "b": "\ufffdx",
        "ok": "😀",
    }
    assert "\\u0000" not in parsed.queryable_text
    assert parsed.row()["envelope_json"] == parsed.queryable_text


def test_safe_text_is_its_own_queryable_copy() -> None:
    text = '{"envelope_id":"e1","type":"x","emoji":"🎉","ctl":"\\u0001\\\\u0000"}'
    assert parse_envelope("e1", text).queryable_text == text


def test_paired_surrogate_escapes_decode_to_the_same_queryable_value() -> None:
    text = '{"envelope_id":"e1","emoji":"\\ud83d\\ude00 🎉"}'
    parsed = parse_envelope("e1", text)
    assert parsed.text == text
    assert json.loads(parsed.queryable_text) == {"envelope_id": "e1", "emoji": "😀 🎉"}


def test_parse_envelope_text_takes_the_id_from_the_body() -> None:
    line = b'{"envelope_id":"line-1","type":"slash_commands","payload":{"command":"/x"}}'
    parsed = parse_envelope_text(line)
    assert parsed.envelope_id == "line-1"
    assert parsed.columns["event_type"] == "/x"
    with pytest.raises(InvalidEnvelope, match="no envelope_id"):
        parse_envelope_text('{"type":"x"}')
    with pytest.raises(InvalidEnvelope, match="empty"):
        parse_envelope_text('{"envelope_id":""}')


def test_envelope_without_its_own_id_field_is_accepted() -> None:
    parsed = parse_envelope("outer", {"type": "hello"})
    assert parsed.envelope_id == "outer"
    assert parsed.columns["envelope_type"] == "hello"


# -- limits and rejections


@pytest.mark.parametrize(
    ("envelope_id", "message"),
    [
        (None, "must be a string"),
        (42, "must be a string"),
        (b"e1", "must be a string"),
        ("", "empty"),
        ("x" * (MAX_ENVELOPE_ID_LENGTH + 1), "256 characters long; the limit is 255"),
        ("a\x00b", "NUL"),
        ("a\udc80", "surrogate"),
    ],
)
def test_invalid_envelope_ids(envelope_id: object, message: str) -> None:
    with pytest.raises(InvalidEnvelope, match=message):
        validate_envelope_id(envelope_id)
    with pytest.raises(InvalidEnvelope, match=message):
        parse_envelope(envelope_id, {"type": "x"})


def test_envelope_id_at_the_limit_is_accepted() -> None:
    longest = "é" * MAX_ENVELOPE_ID_LENGTH
    assert validate_envelope_id(longest) == longest
    assert parse_envelope(longest, {}).envelope_id == longest


def test_size_limit_message_gives_the_size_and_the_limit() -> None:
    envelope = {"envelope_id": "big", "blob": "x" * DEFAULT_MAX_ENVELOPE_BYTES}
    text = json.dumps(envelope, indent=2)
    limit = f"the limit is {DEFAULT_MAX_ENVELOPE_BYTES:,} bytes"
    text_size = len(text.encode("utf-8"))
    # A mapping is measured as the compact JSON the recorder stores.
    dict_size = len(json.dumps(envelope, separators=(",", ":")).encode("utf-8"))
    for given, size in (
        (text, text_size),
        (text.encode("utf-8"), text_size),
        (envelope, dict_size),
    ):
        with pytest.raises(InvalidEnvelope, match=f"is {size:,} bytes; {limit}"):
            parse_envelope("big", given)
    with pytest.raises(InvalidEnvelope, match=f"is {text_size:,} bytes; {limit}"):
        parse_envelope_text(text)


def test_size_limit_counts_utf8_bytes_and_is_inclusive() -> None:
    text = '{"e":"' + "é" * 10 + '"}'  # 10 characters, 20 bytes inside the string
    size = len(text.encode("utf-8"))
    assert parse_envelope("e1", text, max_bytes=size).text == text
    with pytest.raises(InvalidEnvelope, match=f"{size} bytes; the limit is {size - 1} bytes"):
        parse_envelope("e1", text, max_bytes=size - 1)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": NaN}',
        '{"a": Infinity}',
        '{"a": -Infinity}',
    ],
)
def test_nan_and_infinity_in_text_are_rejected(text: str) -> None:
    with pytest.raises(InvalidEnvelope, match="not JSON"):
        parse_envelope("e1", text)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_infinity_in_a_dict_are_rejected(value: float) -> None:
    with pytest.raises(InvalidEnvelope, match="cannot be encoded"):
        parse_envelope("e1", {"a": value})


@pytest.mark.parametrize("text", ["[]", "[1, 2]", '"text"', "42", "null", "true"])
def test_json_that_is_not_an_object_is_rejected(text: str) -> None:
    with pytest.raises(InvalidEnvelope, match="must be a JSON object"):
        parse_envelope("e1", text)


@pytest.mark.parametrize("text", ["", "{", "{'a': 1}", '{"a": 1} trailing', '{"a": "\x01"}'])
def test_text_that_is_not_json_is_rejected(text: str) -> None:
    with pytest.raises(InvalidEnvelope, match="not valid JSON"):
        parse_envelope("e1", text)


def test_bytes_that_are_not_utf8_are_rejected() -> None:
    with pytest.raises(InvalidEnvelope, match="not UTF-8"):
        parse_envelope("e1", b'{"a": "\xff"}')


def test_str_with_a_raw_lone_surrogate_is_rejected() -> None:
    with pytest.raises(InvalidEnvelope, match="lone surrogate"):
        parse_envelope("e1", '{"a": "\udc80"}')


@pytest.mark.parametrize("envelope", [None, 42, ["a"], ("a",), object()])
def test_envelope_of_another_type_is_rejected(envelope: object) -> None:
    with pytest.raises(InvalidEnvelope, match="must be a mapping, str or bytes"):
        parse_envelope("e1", envelope)


def test_dict_that_json_cannot_hold_is_rejected() -> None:
    with pytest.raises(InvalidEnvelope, match="cannot be encoded"):
        parse_envelope("e1", {"when": object()})


@pytest.mark.parametrize("body_id", ["other", None, 7])
def test_envelope_id_must_match_the_envelopes_own(body_id: object) -> None:
    with pytest.raises(InvalidEnvelope, match="does not match"):
        parse_envelope("e1", {"envelope_id": body_id, "type": "x"})
    with pytest.raises(InvalidEnvelope, match="does not match"):
        parse_envelope("e1", json.dumps({"envelope_id": body_id}))


def test_deep_nesting_is_accepted_and_too_deep_is_rejected() -> None:
    nested: Any = "leaf"
    for _ in range(200):
        nested = {"n": nested}
    parsed = parse_envelope("e1", {"deep": nested})
    assert decode_stored(parsed.text) == {"deep": nested}
    too_deep = '{"d":' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(InvalidEnvelope, match="nested too deeply"):
        parse_envelope("e1", too_deep, max_bytes=10 * DEFAULT_MAX_ENVELOPE_BYTES)


def test_hostile_column_values_are_left_empty() -> None:
    envelope = events_api(
        {"type": "message", "channel": "C" * (MAX_COLUMN_LENGTH + 1), "user": "U\x00X"},
        team_id=12345,
        event_id="Ev\x00",
        api_app_id=["A"],
    )
    columns = extract_columns(envelope)
    assert columns["channel_id"] is None
    assert columns["user_id"] is None
    # The authorization's team id is the fallback for a team_id that is not text.
    assert columns["team_id"] == "T0001"
    assert columns["event_id"] is None
    assert columns["api_app_id"] is None
    longest = "C" * MAX_COLUMN_LENGTH
    envelope["payload"]["event"]["channel"] = longest
    assert extract_columns(envelope)["channel_id"] == longest


@pytest.mark.parametrize(
    ("escaped", "queryable"),
    [
        ("\\u0000", "\\ufffd"),
        ("\\ud800", "\\ufffd"),
        ("\\udfff", "\\ufffd"),
        ("\\ud800\\ud800", "\\ufffd\\ufffd"),
        ("\\udc00\\ud800", "\\ufffd\\ufffd"),
        ("\\ud83d\\ude00\\u0000", "\\ud83d\\ude00\\ufffd"),
        ("\\\\u0000\\u0000", "\\\\u0000\\ufffd"),
        ("\\\\\\u0000", "\\\\\\ufffd"),
        ('\\"\\u0000\\n\\u00e9', '\\"\\ufffd\\n\\u00e9'),
    ],
)
def test_queryable_copy_replaces_only_the_escapes_jsonb_rejects(
    escaped: str, queryable: str
) -> None:
    text = '{"envelope_id":"e1","s":"' + escaped + '","n":1e400,"f":1.10}'
    parsed = parse_envelope("e1", text)
    assert parsed.text == text
    # Numbers a float cannot hold, and everything else, stay as received.
    assert (
        parsed.queryable_text == '{"envelope_id":"e1","s":"' + queryable + '","n":1e400,"f":1.10}'
    )
    json.loads(parsed.queryable_text)


def test_strict_decoding_names_the_path_of_a_repeated_key() -> None:
    from recorder.envelope import loads_strict

    with pytest.raises(InvalidEnvelope, match=r"duplicate key: 'payload\.token'"):
        loads_strict('{"payload":{"token":"SECRET","token":"[redacted]"}}')
    with pytest.raises(InvalidEnvelope, match=r"'a\.1\.b'"):
        loads_strict('{"a":[{"b":1},{"b":1,"b":1}]}')
    with pytest.raises(InvalidEnvelope, match=r"duplicate key: 'a'"):
        loads_strict('{"a":1,"a":1}')
    # A repeat before a syntax error: the syntax error is what is reported.
    with pytest.raises(InvalidEnvelope, match="not valid JSON"):
        loads_strict('{"a":{"b":1,"b":2},')
    # The same key in different objects is fine.
    assert loads_strict('{"a":{"k":1},"b":{"k":1},"k":[{"k":1},{"k":2}]}')["k"][1] == {"k": 2}


def test_a_key_path_in_an_error_is_bounded() -> None:
    from recorder.envelope import loads_strict

    key = "k" * 10_000
    with pytest.raises(InvalidEnvelope) as caught:
        loads_strict(f'{{"{key}":1,"{key}":2}}')
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize("key", [1, True, None, 1.5, ("t",)])
def test_mapping_keys_must_be_strings(key: object) -> None:
    with pytest.raises(InvalidEnvelope, match=r"key that is not a string in 'payload\.blocks\.0'"):
        parse_envelope("e1", {"envelope_id": "e1", "payload": {"blocks": [{key: "v"}]}})
    with pytest.raises(InvalidEnvelope, match="at the top level"):
        parse_envelope("e1", {"envelope_id": "e1", key: "v"})
