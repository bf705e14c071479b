"""How an HTTP request maps to the envelope it is recorded as (recorder.http.envelope_of)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from recorder.envelope import Redaction, extract_columns, parse_envelope
from recorder.errors import InvalidEnvelope
from recorder.http import HttpEnvelope, Passthrough, envelope_of, header_map
from recorder.testing.envelopes import EnvelopeFactory
from recorder.testing.slack_http import http_body

FACTORY = EnvelopeFactory(seed=3)
HEADERS = {"x-slack-request-timestamp": "1700000000", "x-slack-signature": "v0=abc"}


def mapped(body: str, headers: dict[str, str] | None = None) -> HttpEnvelope:
    result = envelope_of(headers if headers is not None else HEADERS, body)
    assert isinstance(result, HttpEnvelope)
    return result


def test_an_event_is_keyed_by_its_event_id_and_keeps_the_body_byte_for_byte() -> None:
    socket_mode = FACTORY.message("héllo  spaced")
    # Slack's own spacing and key order, not ours: the body is spliced in as sent.
    body = json.dumps(socket_mode["payload"], indent=1, ensure_ascii=False)
    envelope = mapped(body)
    assert envelope.envelope_id == socket_mode["payload"]["event_id"]
    assert envelope.envelope_type == "events_api"
    assert body in envelope.text
    stored = parse_envelope(envelope.envelope_id, envelope.text, redaction=Redaction.none())
    assert stored.text == envelope.text
    assert stored.data["payload"] == socket_mode["payload"]
    assert stored.data["retry_attempt"] == 0
    assert stored.data["retry_reason"] == ""
    assert stored.data["http"] == {"request_timestamp": "1700000000"}
    assert "v0=abc" not in envelope.text


def test_columns_match_the_socket_mode_envelope_of_the_same_delivery() -> None:
    for socket_mode in (
        FACTORY.message("hi"),
        FACTORY.reaction_added(),
        FACTORY.slash_command("/deploy", "now"),
        FACTORY.block_actions(),
        FACTORY.view_submission(),
    ):
        body, _ = http_body(socket_mode)
        envelope = mapped(body)
        assert envelope.envelope_type == socket_mode["type"]
        assert extract_columns(envelope.frame) == extract_columns(socket_mode)
        assert json.loads(envelope.text)["payload"] == socket_mode["payload"]


def test_retry_headers_fill_retry_attempt_and_reason() -> None:
    body, _ = http_body(FACTORY.message())
    headers = {**HEADERS, "x-slack-retry-num": "2", "x-slack-retry-reason": "http_timeout"}
    columns = extract_columns(mapped(body, headers).frame)
    assert (columns["retry_attempt"], columns["retry_reason"]) == (2, "http_timeout")
    garbage = {**HEADERS, "x-slack-retry-num": "two"}
    assert extract_columns(mapped(body, garbage).frame)["retry_attempt"] == 0


def test_commands_and_interactions_are_keyed_by_the_signed_delivery() -> None:
    body, _ = http_body(FACTORY.slash_command())
    first = mapped(body)
    assert first.envelope_id.startswith("slash_commands:")
    assert mapped(body).envelope_id == first.envelope_id  # the same delivery again
    later = mapped(body, {**HEADERS, "x-slack-request-timestamp": "1700000001"})
    assert later.envelope_id != first.envelope_id  # another delivery
    action_body, _ = http_body(FACTORY.block_actions())
    assert mapped(action_body).envelope_id.startswith("interactive:")
    assert len(first.envelope_id) <= 255


def test_default_redaction_masks_the_secrets_of_every_kind() -> None:
    for socket_mode in (FACTORY.message(), FACTORY.slash_command(), FACTORY.block_actions()):
        body, _ = http_body(socket_mode)
        envelope = mapped(body)
        stored = parse_envelope(envelope.envelope_id, envelope.text, redaction=Redaction.default())
        assert "simulated-verification-token" not in stored.text
        assert "hooks.slack.com" not in stored.text


def test_handshakes_are_answered_not_recorded() -> None:
    challenge = envelope_of(HEADERS, json.dumps({"type": "url_verification", "challenge": "c1"}))
    assert challenge == Passthrough("url_verification", body="c1")
    assert isinstance(envelope_of(HEADERS, "ssl_check=1&token=x"), Passthrough)
    assert isinstance(envelope_of(HEADERS, json.dumps({"type": "app_rate_limited"})), Passthrough)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (json.dumps({"type": "event_callback", "event": {}}), "no event_id"),
        (json.dumps({"type": "event_callback", "event_id": ""}), "no event_id"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not JSON or a form"),
        ("command=%2Fa&command=%2Fb", "duplicate form field"),
        (urlencode({"payload": "[1]"}), "must be a JSON object"),
        (urlencode({"payload": "{nope"}), "not valid JSON"),
        ("user=U1&text=hi", "not a Slack event"),
        ("a=1&&b", "not JSON or a form"),
        ("&".join(f"f{i}=1" for i in range(300)), "not JSON or a form"),
    ],
)
def test_what_is_not_a_slack_request_is_refused_clearly(body: str, message: str) -> None:
    with pytest.raises(InvalidEnvelope, match=message):
        envelope_of(HEADERS, body)


def test_header_map_takes_every_framework_shape() -> None:
    expected = {"x-slack-signature": "v0=1", "content-type": "application/json"}
    assert header_map({"X-Slack-Signature": "v0=1", "Content-Type": "application/json"}) == expected
    assert header_map({"x-slack-signature": ["v0=1"], "content-type": ["application/json"]}) == (
        expected
    )
    pairs = [("X-Slack-Signature", "v0=1"), ("Content-Type", "application/json")]
    assert header_map(pairs) == expected
    # The first of repeated headers wins, as Bolt reads them.
    assert header_map([("X-Slack-Signature", "v0=1"), ("x-slack-signature", "v0=2")]) == {
        "x-slack-signature": "v0=1"
    }
