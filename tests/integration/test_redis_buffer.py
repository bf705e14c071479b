"""RedisEventBuffer beyond the shared contract, on a real Redis server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy.engine import make_url

from recorder.adapter import RecordResult
from recorder.adapters import RedisEventBuffer
from recorder.errors import ConfigurationError, MissingDependency, StorageUnavailable
from recorder.testing import TcpProxy
from recorder.testing.conformance import events_api_envelope

pytestmark = pytest.mark.redis


@pytest.fixture
def client(redis_server_url: str) -> Iterator[redis.Redis[bytes]]:
    client = redis.Redis.from_url(redis_server_url)
    yield client
    client.close()


def _namespace_keys(client: redis.Redis[bytes], namespace: str) -> list[bytes]:
    return sorted(client.scan_iter(match=f"{namespace}:*", count=1000))


def test_envelope_text_is_stored_exactly_with_server_time(
    redis_server_url: str, redis_namespace: str, client: redis.Redis[bytes]
) -> None:
    text = '{ "envelope_id":"t-1",  "type": "hello",\n "s": "héllo ✓ \\u00e9", "n": 1.50 }'
    with RedisEventBuffer(redis_server_url, namespace=redis_namespace) as buffer:
        assert buffer.record("t-1", text) is RecordResult.NEW
        stored = client.hgetall(f"{redis_namespace}:env:t-1")
    assert stored[b"text"] == text.encode("utf-8")
    seconds, micros = client.time()
    server_ms = seconds * 1000 + micros // 1000
    assert 0 <= server_ms - int(stored[b"recorded_at"]) < 10_000


def test_every_key_expires(
    redis_server_url: str, redis_namespace: str, client: redis.Redis[bytes]
) -> None:
    with RedisEventBuffer(redis_server_url, namespace=redis_namespace, ttl_seconds=30) as buffer:
        buffer.record("env-1", events_api_envelope("env-1", event_id="Ev1"))
    keys = _namespace_keys(client, redis_namespace)
    prefix = redis_namespace.encode()
    assert keys == sorted(
        prefix + suffix for suffix in (b":clock", b":env:env-1", b":evt:Ev1", b":pending")
    )
    for key in keys:
        assert 0 < client.pttl(key) <= 30_000, key
    assert client.get(f"{redis_namespace}:evt:Ev1") == b"env-1"


def test_an_idle_namespace_leaves_nothing_behind(
    redis_server_url: str, redis_namespace: str, client: redis.Redis[bytes]
) -> None:
    with RedisEventBuffer(redis_server_url, namespace=redis_namespace, ttl_seconds=0.1) as buffer:
        for n in range(3):
            buffer.record(f"env-{n}", events_api_envelope(f"env-{n}"))
        buffer.complete("env-0")
    time.sleep(0.25)
    assert _namespace_keys(client, redis_namespace) == []


def test_pending_set_stays_bounded_when_envelopes_expire_uncompleted(
    redis_server_url: str, redis_namespace: str, client: redis.Redis[bytes]
) -> None:
    # Redis keeps time itself, so the window is real time: 2 s leaves the new
    # ids unexpired through the checks however loaded the machine is.
    with RedisEventBuffer(redis_server_url, namespace=redis_namespace, ttl_seconds=2) as buffer:
        for n in range(20):
            buffer.record(f"old-{n}", events_api_envelope(f"old-{n}"))
        assert client.zcard(f"{redis_namespace}:pending") == 20
        time.sleep(2.2)
        # Each record forgets up to 8 expired ids, oldest first.
        for n in range(3):
            buffer.record(f"new-{n}", events_api_envelope(f"new-{n}"))
        assert client.zcard(f"{redis_namespace}:pending") == 3
        assert [e["envelope_id"] for e in buffer.pending()] == ["new-0", "new-1", "new-2"]


def test_pending_drops_expired_ids(
    redis_server_url: str, redis_namespace: str, client: redis.Redis[bytes]
) -> None:
    with RedisEventBuffer(redis_server_url, namespace=redis_namespace, ttl_seconds=0.05) as buffer:
        for n in range(5):
            buffer.record(f"env-{n}", events_api_envelope(f"env-{n}"))
        time.sleep(0.15)
        assert buffer.pending() == []
    assert client.zcard(f"{redis_namespace}:pending") == 0


def test_instances_sharing_a_namespace_share_the_window_and_others_do_not(
    redis_server_url: str, redis_namespace: str
) -> None:
    envelope = events_api_envelope("env-1")
    first = RedisEventBuffer(redis_server_url, namespace=redis_namespace)
    second = RedisEventBuffer(redis_server_url, namespace=redis_namespace)
    elsewhere = RedisEventBuffer(redis_server_url, namespace=f"{redis_namespace}:other")
    try:
        assert first.record("env-1", envelope) is RecordResult.NEW
        assert second.record("env-1", envelope) is RecordResult.DUPLICATE
        assert elsewhere.record("env-1", envelope) is RecordResult.NEW
        second.complete("env-1")
        assert first.pending() == []
        assert elsewhere.pending() == [envelope]
    finally:
        for buffer in (first, second, elsewhere):
            buffer.close()


def test_server_going_away_raises_and_the_same_buffer_recovers(
    redis_server_url: str, redis_namespace: str
) -> None:
    target = make_url(redis_server_url)
    with TcpProxy(target.host or "127.0.0.1", target.port or 6379) as proxy:
        buffer = RedisEventBuffer(proxy.url_for(redis_server_url), namespace=redis_namespace)
        assert buffer.record("before", events_api_envelope("before")) is RecordResult.NEW
        proxy.cut()
        with pytest.raises(StorageUnavailable) as raised:
            buffer.record("during", events_api_envelope("during"))
        assert isinstance(raised.value.__cause__, redis.RedisError)
        with pytest.raises(StorageUnavailable):
            buffer.pending()
        proxy.restore()
        assert buffer.record("before", events_api_envelope("before")) is RecordResult.DUPLICATE
        assert buffer.record("during", events_api_envelope("during")) is RecordResult.NEW
        buffer.close()


def test_server_that_never_answers_fails_fast() -> None:
    # A listening socket nobody accepts on: connecting succeeds, no reply ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        buffer = RedisEventBuffer(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            buffer.record("env-1", events_api_envelope("env-1"))
        assert time.monotonic() - started < 5
        buffer.close()


def test_callers_client_is_used_and_left_open(redis_server_url: str, redis_namespace: str) -> None:
    client = redis.Redis.from_url(redis_server_url, decode_responses=True)
    envelope = events_api_envelope("env-1", text="décodé ✓")
    buffer = RedisEventBuffer(namespace=redis_namespace, client=client)
    assert buffer.record("env-1", envelope) is RecordResult.NEW
    assert buffer.pending() == [envelope]
    buffer.close()
    assert client.ping()
    client.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "redis://127.0.0.1/0", "namespace": ""}, "namespace"),
        ({"url": "redis://127.0.0.1/0", "ttl_seconds": 0}, "ttl_seconds"),
        ({"url": "redis://127.0.0.1/0", "ttl_seconds": "300"}, "ttl_seconds"),
        ({}, "url or a client"),
        ({"url": "http://127.0.0.1/0"}, "Redis URL"),
    ],
)
def test_bad_settings_are_configuration_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RedisEventBuffer(**kwargs)  # type: ignore[arg-type]


def test_missing_redis_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingDependency) as raised:
        RedisEventBuffer("redis://127.0.0.1/0")
    assert (raised.value.package, raised.value.extra) == ("redis", "redis")
    assert "envelope-recorder[redis]" in str(raised.value)


def test_adapters_package_imports_without_redis() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from recorder.adapters import MemoryEventBuffer, SQLEventBuffer\n"
        "from recorder.errors import MissingDependency\n"
        "from recorder.adapters import RedisEventBuffer\n"
        "try:\n"
        "    RedisEventBuffer('redis://127.0.0.1/0')\n"
        "except MissingDependency as exc:\n"
        "    print('missing', exc.extra)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "missing redis"
