"""Attack: smuggle a secret past redaction with a repeated JSON key, on every entry path.

``{"payload": {"token": "SECRET", "token": "[redacted]"}}`` decodes (last
value wins) to an object that looks redacted already, so redaction changes
nothing and the exact text, secret included, would be stored. Each test
sends it the way an attacker (or a buggy proxy) would, checks that nothing
holding the secret was stored anywhere, and that the next good envelope with
the same id is still NEW. Dict input with keys that are not strings is
refused on the same paths (``json.dumps`` would coerce ``1``/``True``/``None``).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from recorder import InvalidEnvelope, RecordResult
from recorder.adapter import EventBufferAdapter
from recorder.adapters.memory import MemoryEventBuffer
from recorder.adapters.redis import RedisEventBuffer
from recorder.adapters.sql import SQLEventBuffer
from recorder.slack.spool import Spool
from recorder.testing import SocketModeSimulator
from tests.integration.slack_bots import Calls, RecordingBot, recording_handler

SECRET = "xoxb-SMUGGLED-SECRET"
ATTACK_ID = "attack-1"


def attack_text(envelope_id: str = ATTACK_ID) -> str:
    # Written by hand: json.dumps can never produce a repeated key.
    return (
        f'{{"envelope_id":"{envelope_id}","type":"events_api","accepts_response_payload":false,'
        f'"payload":{{"token":"{SECRET}","token":"[redacted]","team_id":"T1",'
        f'"event_id":"Ev-{envelope_id}","event":{{"type":"message","text":"hi"}}}}}}'
    )


def good_envelope(envelope_id: str = ATTACK_ID) -> dict[str, Any]:
    return {
        "envelope_id": envelope_id,
        "type": "events_api",
        "accepts_response_payload": False,
        "payload": {
            "token": "legacy-token",
            "team_id": "T1",
            "event_id": f"Ev-{envelope_id}",
            "event": {"type": "message", "text": "hi"},
        },
    }


NON_STRING_KEYS: dict[str, dict[Any, Any]] = {
    "int": {**good_envelope(), "payload": {1: "one"}},
    "bool": {**good_envelope(), True: "yes"},
    "none": {**good_envelope(), "payload": {"blocks": [{None: "x"}]}},
    # json.dumps would write {"1": ..., "1": ...}: a repeated key made by coercion.
    "collides": {**good_envelope(), "payload": {"1": "a", 1: "b"}},
}


class Backend:
    """An adapter under attack, and a way to read what its backend really holds."""

    def __init__(self, buffer: EventBufferAdapter, redis_url: str | None = None) -> None:
        self.buffer = buffer
        self.redis_url = redis_url

    def stored_texts(self) -> list[str]:
        """Every envelope text the backend holds, read from the backend itself."""
        buffer = self.buffer
        if isinstance(buffer, SQLEventBuffer):
            return sql_texts(buffer)
        if isinstance(buffer, RedisEventBuffer):
            assert self.redis_url is not None
            client = redis.Redis.from_url(self.redis_url)
            try:
                texts: list[str] = []
                for key in client.scan_iter(match=f"{buffer.namespace}:*"):
                    # types-redis declares Redis.type without annotations
                    if client.type(key) == b"hash":  # type: ignore[no-untyped-call]
                        texts.extend(v.decode() for v in client.hgetall(key).values())
                return texts
            finally:
                client.close()
        return [json.dumps(envelope) for envelope in buffer.pending()]


def sql_texts(buffer: SQLEventBuffer) -> list[str]:
    """``envelope_text`` and the queryable copy of every row."""
    with buffer.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT envelope_text, CAST(envelope AS TEXT) FROM envelopes")
        ).all()
    return [text for row in rows for text in row if text is not None]


@pytest.fixture(params=["memory", "sqlite", "postgresql", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    adapter: EventBufferAdapter
    redis_url = None
    if request.param == "memory":
        adapter = MemoryEventBuffer()
    elif request.param == "sqlite":
        adapter = SQLEventBuffer(request.getfixturevalue("sqlite_url"))
    elif request.param == "postgresql":
        adapter = SQLEventBuffer(request.getfixturevalue("pg_url"))
    else:
        redis_url = request.getfixturevalue("redis_server_url")
        adapter = RedisEventBuffer(redis_url, namespace=request.getfixturevalue("redis_namespace"))
    with adapter:
        yield Backend(adapter, redis_url)


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_repeated_key_is_refused_and_the_secret_never_stored(
    backend: Backend, as_bytes: bool
) -> None:
    buffer = backend.buffer
    text = attack_text()
    with pytest.raises(InvalidEnvelope, match=r"duplicate key: 'payload\.token'"):
        buffer.record(ATTACK_ID, text.encode() if as_bytes else text)
    assert not buffer.seen(ATTACK_ID)
    assert buffer.pending() == []
    assert not any(SECRET in stored for stored in backend.stored_texts())

    # Nothing was stored, so the same envelope sent properly is new.
    assert buffer.record(ATTACK_ID, good_envelope()) is RecordResult.NEW
    texts = backend.stored_texts()
    assert texts
    assert not any(SECRET in stored for stored in texts)
    assert buffer.pending()[0]["payload"]["token"] == "[redacted]"


@pytest.mark.parametrize("case", sorted(NON_STRING_KEYS))
def test_dict_with_non_string_keys_is_refused_not_coerced(backend: Backend, case: str) -> None:
    buffer = backend.buffer
    with pytest.raises(InvalidEnvelope, match="key that is not a string"):
        buffer.record(ATTACK_ID, NON_STRING_KEYS[case])
    assert not buffer.seen(ATTACK_ID)
    assert backend.stored_texts() == []
    assert buffer.record(ATTACK_ID, good_envelope()) is RecordResult.NEW


def test_repeated_key_deep_in_a_list_is_named_by_its_path(backend: Backend) -> None:
    buffer = backend.buffer
    text = (
        '{"envelope_id":"deep","type":"events_api","payload":{"event":{"blocks":'
        '[{"type":"a"},{"type":"b","text":"x","text":"y"}]}}}'
    )
    with pytest.raises(InvalidEnvelope, match=r"'payload\.event\.blocks\.1\.text'"):
        buffer.record("deep", text)
    assert not buffer.seen("deep")


def test_recorder_import_refuses_the_line_and_keeps_the_others(
    database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    lines = [json.dumps(good_envelope("before")), attack_text(), json.dumps(good_envelope())]
    path.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    env["RECORDER_DATABASE_URL"] = database_url
    result = subprocess.run(
        [sys.executable, "-m", "recorder", "import", str(path)],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    first_line = (result.stdout.decode().splitlines() or [""])[0]
    assert first_line == "imported: 2 new, 0 duplicate, 1 rejected", result.stderr
    assert result.stderr.decode().startswith(
        "line 2: envelope has a duplicate key: 'payload.token'"
    )
    with SQLEventBuffer(database_url) as buffer:
        texts = sql_texts(buffer)
        # The good envelope under the attack's id (the third line) is stored, redacted.
        assert buffer.seen(ATTACK_ID)
    assert len(texts) >= 2
    assert not any(SECRET in text for text in texts)


def test_spool_refuses_the_repeated_key(tmp_path: Path) -> None:
    # What enters the spool is parsed by the target buffer's parser first.
    spool, target = Spool(tmp_path / "spool.db"), MemoryEventBuffer()
    try:
        with pytest.raises(InvalidEnvelope, match="duplicate key"):
            spool.record(target.parse(ATTACK_ID, attack_text()))
        assert spool.depth() == 0
        parsed = target.parse(ATTACK_ID, json.dumps(good_envelope()))
        assert spool.record(parsed) is RecordResult.NEW
    finally:
        spool.close()
    assert SECRET.encode() not in (tmp_path / "spool.db").read_bytes()


@pytest.mark.parametrize("kind", ["builtin", "aiohttp"])
def test_slack_client_frame_with_repeated_key_is_not_acked_handled_or_stored(
    kind: str, sqlite_url: str, tmp_path: Path
) -> None:
    calls = Calls()
    with (
        SocketModeSimulator(redeliver_after=None, seed=5) as sim,
        SQLEventBuffer(sqlite_url) as buffer,
    ):
        with RecordingBot(
            kind, sim, buffer, recording_handler(calls), spool_path=tmp_path / "spool.db"
        ) as bot:
            sim.wait_for_connections(1)
            # The real client parses the frame itself (last value wins) and hands
            # the listener both the dict and the raw text.
            sim.send_frame(attack_text())
            deadline = time.monotonic() + 10
            while bot.listener.stats.outcomes["rejected"] < 1:
                assert time.monotonic() < deadline, "the frame was never refused"
                time.sleep(0.02)
            # The next good envelope, same id: recorded, acked and handled.
            sim.send(good_envelope())
            sim.wait_for_acks(1)
            calls.wait_for(1)
        # The bot is stopped (handlers waited for): a wrongly handled attack frame is counted.
        acked = collections.Counter(ack.envelope_id for ack in sim.acks)
        texts = sql_texts(buffer)
    assert acked == {ATTACK_ID: 1}
    assert len(calls) == 1
    assert len(texts) == 2  # envelope_text and the queryable copy of the good one
    assert not any(SECRET in text for text in texts)
    assert (
        not (tmp_path / "spool.db").exists()
        or SECRET.encode() not in (tmp_path / "spool.db").read_bytes()
    )
