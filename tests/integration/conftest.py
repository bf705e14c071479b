"""Fixtures for the least-privilege role tests on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from recorder.engine import create_engine
from recorder.roles import RoleNames, grant

PARTS = ("writer", "reader", "pruner", "sealer", "eraser")

ConnectAs = Callable[[str], Engine]


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def roles(pg_url: str) -> Iterator[dict[str, str]]:
    """LOGIN roles, one per part, with unique names, granted their parts, dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    names = {part: f"rec_{part}_{suffix}" for part in PARTS}
    with psycopg.connect(_libpq(pg_url), autocommit=True) as conn:
        for name in names.values():
            conn.execute(f'CREATE ROLE "{name}" LOGIN')
    try:
        yield names
    finally:
        with psycopg.connect(_libpq(pg_url), autocommit=True) as conn:
            for name in names.values():
                conn.execute(f'DROP OWNED BY "{name}"')
                conn.execute(f'DROP ROLE "{name}"')


@pytest.fixture
def owner(pg_url: str, roles: dict[str, str]) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    grant(engine, RoleNames(**roles))
    yield engine
    engine.dispose()


@pytest.fixture
def connect_as(pg_url: str) -> Iterator[ConnectAs]:
    engines: list[Engine] = []

    def make(role: str) -> Engine:
        engine = create_engine(make_url(pg_url).set(username=role))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


def denied(engine: Engine, statement: str, **params: object) -> str:
    """Run ``statement`` and return the database's refusal (failing if it was allowed)."""
    with pytest.raises(sa.exc.ProgrammingError) as info, engine.begin() as conn:
        conn.execute(sa.text(statement), params)
    assert isinstance(info.value.orig, psycopg.errors.InsufficientPrivilege)
    return str(info.value.orig)
