"""Fixtures for real backends: PostgreSQL, SQLite, Redis.

PostgreSQL is found through ``RECORDER_TEST_DATABASE_URL``, else a
testcontainers container when a Docker engine answers, else 127.0.0.1:5432.
A test that needs it fails loudly when none answers; nothing is skipped.

Each PostgreSQL test gets its own database cloned from a migrated template
(``CREATE DATABASE ... TEMPLATE``): isolated, and far faster than migrating.
"""

from __future__ import annotations

import itertools
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from recorder import db

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# Before any test module imports it: failed asserts in the shipped suite show values.
pytest.register_assert_rewrite("recorder.testing.conformance", "recorder.testing.recovery")


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database, where test databases are made."""
    url = os.environ.get("RECORDER_TEST_DATABASE_URL")
    container = None
    if not url and _docker_answers():
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:16-alpine", driver=None)
        container.start()
        url = container.get_connection_url()
    url = url or DEFAULT_PG_URL
    try:
        psycopg.connect(_libpq(url), connect_timeout=5).close()
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {make_url(url).render_as_string(hide_password=True)}: "
            f"{exc}. Set RECORDER_TEST_DATABASE_URL or start a server.",
            pytrace=False,
        )
    try:
        yield url
    finally:
        if container is not None:
            container.stop()


def _libpq(url: str) -> str:
    """The URL as libpq understands it (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _database_url(server_url: str, name: str) -> str:
    return (
        make_url(server_url)
        .set(drivername="postgresql", database=name)
        .render_as_string(hide_password=False)
    )


def _admin(server_url: str, *statements: str) -> None:
    with psycopg.connect(_libpq(server_url), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@pytest.fixture(scope="session")
def pg_template(pg_server_url: str) -> Iterator[str]:
    """Name of a database migrated to head, cloned by every ``pg_url``."""
    name = f"recorder_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    _admin(pg_server_url, f'CREATE DATABASE "{name}"')
    db.upgrade(_database_url(pg_server_url, name))
    try:
        yield name
    finally:
        _admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_counter = itertools.count()


@pytest.fixture
def pg_empty_url(pg_server_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database with no schema at all."""
    name = f"recorder_e_{os.getpid()}_{next(_counter)}"
    _admin(pg_server_url, f'CREATE DATABASE "{name}"')
    try:
        yield _database_url(pg_server_url, name)
    finally:
        _admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server_url: str, pg_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database at the current schema, for this test alone."""
    name = f"recorder_t_{os.getpid()}_{next(_counter)}"
    _admin(pg_server_url, f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    try:
        yield _database_url(pg_server_url, name)
    finally:
        _admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file at the current schema."""
    url = f"sqlite:///{tmp_path / 'recorder.db'}"
    db.upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture(scope="session")
def redis_server_url() -> str:
    url = os.environ.get("RECORDER_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is not reachable at {url}: {exc}. Set RECORDER_TEST_REDIS_URL or start a server.",
            pytrace=False,
        )
    return url


@pytest.fixture
def redis_namespace(redis_server_url: str) -> Iterator[str]:
    """A key prefix for this test alone, removed afterwards."""
    namespace = f"recorder-test-{uuid.uuid4().hex[:12]}"
    yield namespace
    client = redis.Redis.from_url(redis_server_url)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def closed_port() -> int:
    """A local TCP port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
