"""recorder.http.HttpRecorder on real databases: verify, record, decide; attacked as an attacker would."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa

from recorder.adapters.sql import SQLEventBuffer
from recorder.errors import ConfigurationError, StorageUnavailable
from recorder.http import HttpRecorder
from recorder.schema import envelopes
from recorder.slack.recording import Outcome
from recorder.testing.envelopes import EnvelopeFactory
from recorder.testing.slack_http import SlackHttpSender, http_body

SECRET = "test-signing-secret-0123456789"
SLACK = SlackHttpSender("http://unused.invalid/", SECRET, factory=EnvelopeFactory(seed=8))


@pytest.fixture
def buffer(database_url: str) -> Iterator[SQLEventBuffer]:
    with SQLEventBuffer(database_url) as sql_buffer:
        yield sql_buffer


@pytest.fixture
def http(buffer: SQLEventBuffer, tmp_path: Path) -> Iterator[HttpRecorder]:
    with HttpRecorder(buffer, signing_secret=SECRET, spool_path=tmp_path / "spool.db") as rec:
        yield rec


def signed(envelope: dict[str, object], **extra: str) -> tuple[str, dict[str, str]]:
    body, content_type = http_body(envelope)
    return body, {**SLACK.signed_headers(body, content_type), **extra}


def all_text(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return "\n".join(
            "\t".join(str(value) for value in row) for row in conn.execute(sa.select(envelopes))
        )


def count(buffer: SQLEventBuffer) -> int:
    with buffer.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(envelopes)).scalar_one())


def test_an_event_and_its_retries_dispatch_once(http: HttpRecorder, buffer: SQLEventBuffer) -> None:
    event = SLACK.factory.message("once")
    body, headers = signed(event)
    first = http.decide(headers, body.encode())
    assert (first.dispatch, first.status, first.outcome) == (True, 200, Outcome.NEW)
    http.finish(first)
    for attempt in (1, 2, 3):
        _, retry = signed(event, **{"X-Slack-Retry-Num": str(attempt)})
        decision = http.decide(retry, body)
        assert (decision.dispatch, decision.status) == (False, 200)
        assert decision.outcome is Outcome.DUPLICATE
    http.close()
    assert count(buffer) == 1
    assert buffer.pending() == []


def test_refusals_store_nothing(http: HttpRecorder, buffer: SQLEventBuffer) -> None:
    body, headers = signed(SLACK.factory.message())
    stale = SLACK.signed_headers(body, timestamp=int(time.time()) - 301)
    refused: list[tuple[dict[str, str], str | bytes]] = [
        ({}, body),
        ({**headers, "X-Slack-Signature": "v0=" + "0" * 64}, body),
        (headers, body + " "),
        (stale, body),
        ({**headers, "X-Slack-Request-Timestamp": "-1"}, body),
        ({**headers, "X-Slack-Request-Timestamp": "1e9"}, body),
        (headers, body.encode() + b"\xff"),
    ]
    for bad_headers, bad_body in refused:
        decision = http.decide(bad_headers, bad_body)
        assert (decision.dispatch, decision.status) == (False, 401)
    assert count(buffer) == 0


def test_a_verified_request_that_cannot_be_recorded_is_answered_400_and_not_retried(
    buffer: SQLEventBuffer, tmp_path: Path
) -> None:
    small = SQLEventBuffer(buffer.engine, max_envelope_bytes=2000)
    with HttpRecorder(small, signing_secret=SECRET, spool_path=tmp_path / "s.db") as http:
        for body in [
            SLACK.factory.message("x" * 3000),  # over the size limit
        ]:
            text, headers = signed(body)
            decision = http.decide(headers, text)
            assert (decision.dispatch, decision.status) == (False, 400)
            assert dict(decision.headers) == {"X-Slack-No-Retry": "1"}
        event_id = SLACK.factory.event_id()
        repeated_keys = [
            # Two event ids: which one would a retry be compared with?
            f'{{"type":"event_callback","event_id":"{event_id}","event_id":"Ev2","event":{{}}}}',
            f'{{"type":"event_callback","event_id":"{event_id}","event":{{"user":"U1","user":"U2"}}}}',
        ]
        for text in repeated_keys:
            decision = http.decide(SLACK.signed_headers(text), text)
            assert (decision.dispatch, decision.status) == (False, 400), text
            assert "duplicate key" in decision.reason
        payload = '{"type":"block_actions","user":{"id":"U1"},"user":{"id":"U2"}}'
        form = urlencode({"payload": payload})
        decision = http.decide(
            SLACK.signed_headers(form, "application/x-www-form-urlencoded"), form
        )
        assert (decision.dispatch, decision.status) == (False, 400)
        form = "command=%2Fa&command=%2Fb&text=1"
        decision = http.decide(
            SLACK.signed_headers(form, "application/x-www-form-urlencoded"), form
        )
        assert (decision.dispatch, decision.status) == (False, 400)
        assert "duplicate form field" in decision.reason
    assert count(buffer) == 0


def test_url_verification_is_answered_with_its_challenge(
    http: HttpRecorder, buffer: SQLEventBuffer
) -> None:
    body = json.dumps({"token": "t", "challenge": "3eZbrw1aB", "type": "url_verification"})
    decision = http.decide(SLACK.signed_headers(body), body)
    assert (decision.dispatch, decision.status, decision.body) == (False, 200, "3eZbrw1aB")
    assert count(buffer) == 0


def test_decide_needs_the_signing_secret(buffer: SQLEventBuffer, tmp_path: Path) -> None:
    with HttpRecorder(buffer, spool_path=tmp_path / "s.db") as http:
        body, headers = signed(SLACK.factory.message())
        with pytest.raises(ConfigurationError, match="signing_secret"):
            http.decide(headers, body)
    with pytest.raises(ConfigurationError, match="signing_secret"):
        HttpRecorder(buffer, signing_secret=" ")


def test_no_secret_reaches_the_database_or_the_spool(
    buffer: SQLEventBuffer, tmp_path: Path
) -> None:
    """Signing secret, signature, verification token, response URLs: none is stored."""
    kinds = [SLACK.factory.message(), SLACK.factory.slash_command(), SLACK.factory.block_actions()]
    signatures = []
    with HttpRecorder(buffer, signing_secret=SECRET, spool_path=tmp_path / "s.db") as http:
        for envelope in kinds:
            body, headers = signed(envelope)
            signatures.append(headers["X-Slack-Signature"])
            assert http.decide(headers, body).dispatch
    # The same requests while the database is away go to the spool.
    away = SQLEventBuffer("postgresql://postgres@127.0.0.1:9/nowhere")
    spool = tmp_path / "outage.db"
    with HttpRecorder(away, signing_secret=SECRET, spool_path=spool) as http:
        for envelope in kinds:
            body, headers = signed(envelope)
            signatures.append(headers["X-Slack-Signature"])
            assert http.decide(headers, body).outcome is Outcome.SPOOLED
    away.close()
    with sqlite3.connect(spool) as conn:
        spooled = "\n".join(str(row) for row in conn.execute("SELECT * FROM envelopes"))
    assert spooled.count("slash_commands") >= 1
    stored = all_text(buffer.engine)
    assert stored.count("[redacted]") >= 3
    for text in (stored, spooled):
        for secret in (SECRET, "simulated-verification-token", "hooks.slack.com", *signatures):
            assert secret not in text
        assert "v0=" not in text


def test_raise_policy_lets_the_storage_error_out_and_dispatches_nothing(tmp_path: Path) -> None:
    away = SQLEventBuffer("postgresql://postgres@127.0.0.1:9/nowhere")
    with HttpRecorder(
        away, signing_secret=SECRET, on_storage_error="raise", spool_path=tmp_path / "s.db"
    ) as http:
        body, headers = signed(SLACK.factory.message())
        with pytest.raises(StorageUnavailable):
            http.decide(headers, body)
    away.close()
    assert not (tmp_path / "s.db").exists()


def test_no_buffer_means_the_configured_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'configured.db'}"
    monkeypatch.setenv("RECORDER_DATABASE_URL", url)
    with HttpRecorder(signing_secret=SECRET, spool_path=tmp_path / "s.db") as http:
        body, headers = signed(SLACK.factory.message())
        assert http.decide(headers, body).dispatch
        http.buffer.close()
    with SQLEventBuffer(url) as configured:
        assert count(configured) == 1
