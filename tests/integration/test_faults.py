"""TcpProxy, the fault injector other tests rely on, against real servers."""

from __future__ import annotations

import socket
import threading
import time

import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from recorder.testing import TcpProxy
from tests.conftest import closed_port


def _pg_target(url: str) -> tuple[str, int]:
    parsed = make_url(url)
    return parsed.host or "127.0.0.1", parsed.port or 5432


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def test_forwards_postgresql_then_cut_refuses_and_restore_reopens_same_port(
    pg_server_url: str,
) -> None:
    with TcpProxy(*_pg_target(pg_server_url)) as proxy:
        url = _libpq(proxy.url_for(pg_server_url))
        conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        assert proxy.live_connections == 1
        port = proxy.port

        started = time.monotonic()
        proxy.cut()
        assert proxy.is_cut
        assert proxy.live_connections == 0
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=5)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy.address, timeout=5).close()
        # Refused at once, not after a connect timeout.
        assert time.monotonic() - started < 4

        proxy.restore()
        assert not proxy.is_cut
        assert proxy.port == port
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as again:
            assert again.execute("SELECT 'back'").fetchone() == ("back",)
        assert proxy.accepted == 2


def test_url_for_keeps_credentials_path_and_query() -> None:
    with TcpProxy("127.0.0.1", 5432) as proxy:
        assert (
            proxy.url_for("postgresql+psycopg://u:p%40ss@db.example:6543/app?sslmode=disable")
            == f"postgresql+psycopg://u:p%40ss@127.0.0.1:{proxy.port}/app?sslmode=disable"
        )
        assert proxy.url_for("redis://localhost/3") == f"redis://127.0.0.1:{proxy.port}/3"


def test_redis_through_proxy_goes_away_and_comes_back(
    redis_server_url: str, redis_namespace: str
) -> None:
    target = make_url(redis_server_url)
    with TcpProxy(target.host or "127.0.0.1", target.port or 6379) as proxy:
        client = redis.Redis.from_url(proxy.url_for(redis_server_url), socket_timeout=5)
        key = f"{redis_namespace}:k"
        assert client.set(key, "v")
        proxy.cut()
        with pytest.raises(redis.ConnectionError):
            client.get(key)
        proxy.restore()
        assert client.get(key) == b"v"
        client.close()


def test_cut_and_restore_are_idempotent_and_close_is_final() -> None:
    proxy = TcpProxy("127.0.0.1", 9)
    proxy.cut()
    proxy.cut()
    proxy.restore()
    proxy.restore()
    assert not proxy.is_cut
    proxy.close()
    assert proxy.is_cut
    with pytest.raises(RuntimeError, match="closed"):
        proxy.restore()


def test_target_down_is_seen_as_a_closed_connection() -> None:
    with TcpProxy("127.0.0.1", closed_port()) as proxy:
        # The proxy accepts, fails to reach the target, and resets the client;
        # on a busy machine the reset can land while connect() is returning.
        try:
            with socket.create_connection(proxy.address, timeout=5) as sock:
                data = sock.recv(1)
        except ConnectionResetError:
            data = b""
        assert data == b""


def test_large_pipeline_flows_both_ways_at_once(
    redis_server_url: str, redis_namespace: str
) -> None:
    """Requests still going out while replies come back: no deadlock in the proxy."""
    target = make_url(redis_server_url)
    value = b"v" * 8192
    with TcpProxy(target.host or "127.0.0.1", target.port or 6379) as proxy:
        client = redis.Redis.from_url(proxy.url_for(redis_server_url), socket_timeout=30)
        pipe = client.pipeline(transaction=False)
        for i in range(1500):
            pipe.set(f"{redis_namespace}:{i}", value)
            pipe.get(f"{redis_namespace}:{i}")
        replies = pipe.execute()
        assert replies[1::2] == [value] * 1500
        client.close()


def test_half_close_is_passed_on_and_nothing_in_flight_is_lost() -> None:
    """A client that stops sending still gets the whole reply (orderly shutdown)."""
    payload = bytes(range(256)) * 4096  # 1 MiB
    with socket.create_server(("127.0.0.1", 0)) as server:

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                received = b""
                while chunk := conn.recv(65536):
                    received += chunk
                conn.sendall(received[::-1])

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with TcpProxy("127.0.0.1", server.getsockname()[1]) as proxy:
            sock = socket.create_connection(proxy.address, timeout=30)
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
            sock.close()
        thread.join(timeout=30)
    assert reply == payload[::-1]


def test_close_leaves_no_proxy_threads_behind(pg_server_url: str) -> None:
    def proxy_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("TcpProxy")]

    before = len(proxy_threads())
    proxy = TcpProxy(*_pg_target(pg_server_url))
    connections = [
        psycopg.connect(_libpq(proxy.url_for(pg_server_url)), connect_timeout=5) for _ in range(3)
    ]
    assert len(proxy_threads()) == before + 1 + 2 * 3
    connections[0].close()
    proxy.close()
    for conn in connections[1:]:
        conn.close()
    # The first link ends on its own (orderly close); its last thread may still
    # be returning from the callback that removed it.
    deadline = time.monotonic() + 10
    while len(proxy_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(proxy_threads()) == before
    assert proxy.live_connections == 0
