"""Redaction in every adapter: the stored copy is masked, the caller's envelope is not."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from recorder.adapter import RecordResult
from recorder.adapters.memory import MemoryEventBuffer
from recorder.adapters.redis import RedisEventBuffer
from recorder.adapters.sql import SQLEventBuffer
from recorder.envelope import REDACTED, Redaction

TOKEN = "verification-token-123"
RESPONSE_URL = "https://hooks.slack.com/commands/T1/99/secret-part"


def slash(envelope_id: str) -> dict[str, Any]:
    return {
        "envelope_id": envelope_id,
        "type": "slash_commands",
        "payload": {
            "token": TOKEN,
            "team_id": "T1",
            "channel_id": "C1",
            "user_id": "U1",
            "command": "/deploy",
            "text": "prod",
            "response_url": RESPONSE_URL,
        },
    }


@pytest.fixture(params=["memory", "redis", "sqlite", "postgresql"])
def make_buffer(request: pytest.FixtureRequest) -> Iterator[Any]:
    made: list[Any] = []

    def make(**options: Any) -> Any:
        if request.param == "memory":
            buffer: Any = MemoryEventBuffer(**options)
        elif request.param == "redis":
            url = request.getfixturevalue("redis_server_url")
            namespace = request.getfixturevalue("redis_namespace")
            buffer = RedisEventBuffer(url, namespace=f"{namespace}-{len(made)}", **options)
        else:
            name = "sqlite_url" if request.param == "sqlite" else "pg_url"
            buffer = SQLEventBuffer(request.getfixturevalue(name), **options)
        made.append(buffer)
        return buffer

    yield make
    for buffer in made:
        buffer.close()


def test_the_stored_copy_is_masked_and_the_callers_envelope_is_not(make_buffer: Any) -> None:
    buffer = make_buffer()
    given = slash("e1")
    before = copy.deepcopy(given)
    assert buffer.record("e1", given) is RecordResult.NEW
    assert given == before
    [stored] = buffer.pending()
    assert stored["payload"]["token"] == REDACTED
    assert stored["payload"]["response_url"] == REDACTED
    assert stored["payload"]["text"] == "prod"
    # a retransmission of the same envelope is still a duplicate
    assert buffer.record("e1", json.dumps(slash("e1"))) is RecordResult.DUPLICATE


def test_redaction_can_be_turned_off_or_configured(
    make_buffer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert make_buffer(redaction=None).record("e1", slash("e1")) is RecordResult.NEW
    plain = make_buffer(redaction=Redaction.none())
    plain.record("e2", slash("e2"))
    assert plain.pending()[-1]["payload"]["token"] == TOKEN

    monkeypatch.setenv("RECORDER_REDACT", "drop:payload.text")
    from_env = make_buffer()
    from_env.record("e3", slash("e3"))
    stored = from_env.pending()[-1]["payload"]
    assert "text" not in stored
    assert stored["token"] == TOKEN  # RECORDER_REDACT replaced the defaults


def test_sql_text_and_digest_cover_the_redacted_copy(sqlite_url: str) -> None:
    buffer = SQLEventBuffer(sqlite_url)
    text = json.dumps(slash("e1"), indent=2)
    buffer.record("e1", text)
    with buffer.engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT envelope_text, envelope_sha256, envelope FROM envelopes")
        ).one()
    assert TOKEN not in row.envelope_text
    assert RESPONSE_URL not in row.envelope_text
    assert TOKEN not in row.envelope
    assert buffer.parse("e1", text).sha256 == row.envelope_sha256
    buffer.close()


def test_a_slack_handler_receives_the_original_while_the_archive_is_masked(
    sqlite_url: str, tmp_path: Path
) -> None:
    from recorder.testing import SocketModeSimulator
    from tests.integration.slack_bots import Calls, RecordingBot, recording_handler

    calls = Calls()
    with (
        SocketModeSimulator(redeliver_after=None, seed=5) as sim,
        SQLEventBuffer(sqlite_url) as buffer,
    ):
        command = sim.envelopes.slash_command("/deploy", "prod")
        with RecordingBot(
            "builtin", sim, buffer, recording_handler(calls), spool_path=tmp_path / "spool.db"
        ):
            sim.wait_for_connections(1)
            sim.send(command)
            calls.wait_for(1)
            sim.wait_for_acks(1, timeout=15)
        handled = calls.requests[0].payload
        assert handled["token"] == command["payload"]["token"]
        assert handled["response_url"] == command["payload"]["response_url"]
        with buffer.engine.connect() as conn:
            stored = json.loads(
                conn.execute(sa.text("SELECT envelope_text FROM envelopes")).scalar_one()
            )
    assert stored["payload"]["token"] == REDACTED
    assert stored["payload"]["response_url"] == REDACTED
    assert stored["payload"]["command"] == "/deploy"
