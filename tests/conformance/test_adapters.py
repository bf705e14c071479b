"""The shipped conformance suite, run on every included adapter and backend."""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from recorder.adapters import MemoryEventBuffer, RedisEventBuffer, SQLEventBuffer
from recorder.testing.conformance import (
    AdapterConformance,
    CrossProcessConformance,
    TTLConformance,
)
from recorder.testing.recovery import RecoveryConformance
from tests.conftest import closed_port

REDIS_TTL_SECONDS = 0.5


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeWallClock:
    """A UTC wall clock (what SQLEventBuffer takes) that moves only when told to."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class TestMemoryEventBuffer(AdapterConformance, TTLConformance, RecoveryConformance):
    @pytest.fixture
    def buffer(self) -> Iterator[MemoryEventBuffer]:
        buffer = MemoryEventBuffer()
        yield buffer
        buffer.close()

    @pytest.fixture
    def unavailable_buffer(self) -> MemoryEventBuffer:
        # A memory buffer has no server to lose; a closed one is its storage gone.
        buffer = MemoryEventBuffer()
        buffer.close()
        return buffer

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def ttl_buffer(self, clock: FakeClock) -> MemoryEventBuffer:
        return MemoryEventBuffer(ttl_seconds=60, clock=clock)

    @pytest.fixture
    def let_ttl_pass(self, clock: FakeClock) -> Callable[[], None]:
        return functools.partial(clock.advance, 60)

    @pytest.fixture
    def recoverable_buffer(self, clock: FakeClock) -> Iterator[MemoryEventBuffer]:
        buffer = MemoryEventBuffer(ttl_seconds=3600, clock=clock)
        yield buffer
        buffer.close()

    @pytest.fixture
    def advance_clock(self, clock: FakeClock) -> Callable[[float], None]:
        return clock.advance


@pytest.mark.redis
class TestRedisEventBuffer(AdapterConformance, TTLConformance, CrossProcessConformance):
    @pytest.fixture
    def buffer(self, redis_server_url: str, redis_namespace: str) -> Iterator[RedisEventBuffer]:
        buffer = RedisEventBuffer(redis_server_url, namespace=redis_namespace)
        yield buffer
        buffer.close()

    @pytest.fixture
    def buffer_factory(
        self, redis_server_url: str, redis_namespace: str
    ) -> Callable[[], RedisEventBuffer]:
        return functools.partial(RedisEventBuffer, redis_server_url, namespace=redis_namespace)

    @pytest.fixture
    def unavailable_buffer(self) -> Iterator[RedisEventBuffer]:
        buffer = RedisEventBuffer(f"redis://127.0.0.1:{closed_port()}/0")
        yield buffer
        buffer.close()

    @pytest.fixture
    def ttl_buffer(self, redis_server_url: str, redis_namespace: str) -> Iterator[RedisEventBuffer]:
        buffer = RedisEventBuffer(
            redis_server_url, namespace=redis_namespace, ttl_seconds=REDIS_TTL_SECONDS
        )
        yield buffer
        buffer.close()

    @pytest.fixture
    def let_ttl_pass(self) -> Callable[[], None]:
        # Redis keeps time itself (PX expiry, TIME in the scripts): only real time passes it.
        return functools.partial(time.sleep, REDIS_TTL_SECONDS + 0.2)


class SQLRecovery(RecoveryConformance):
    """RecoveryConformance fixtures for SQLEventBuffer: a fake wall clock."""

    @pytest.fixture
    def wall_clock(self) -> FakeWallClock:
        return FakeWallClock()

    @pytest.fixture
    def advance_clock(self, wall_clock: FakeWallClock) -> Callable[[float], None]:
        return wall_clock.advance


class TestSQLiteEventBuffer(AdapterConformance, CrossProcessConformance, SQLRecovery):
    @pytest.fixture
    def recoverable_buffer(
        self, sqlite_url: str, wall_clock: FakeWallClock
    ) -> Iterator[SQLEventBuffer]:
        buffer = SQLEventBuffer(sqlite_url, clock=wall_clock)
        yield buffer
        buffer.close()

    @pytest.fixture
    def buffer(self, sqlite_url: str) -> Iterator[SQLEventBuffer]:
        buffer = SQLEventBuffer(sqlite_url)
        yield buffer
        buffer.close()

    @pytest.fixture
    def buffer_factory(self, sqlite_url: str) -> Callable[[], SQLEventBuffer]:
        return functools.partial(SQLEventBuffer, sqlite_url)

    @pytest.fixture
    def unavailable_buffer(self, tmp_path: Path) -> Iterator[SQLEventBuffer]:
        # SQLite cannot open a file in a directory that does not exist.
        buffer = SQLEventBuffer(
            f"sqlite:///{tmp_path / 'no-such-directory' / 'recorder.db'}", upgrade=False
        )
        yield buffer
        buffer.close()


@pytest.mark.postgres
class TestPostgreSQLEventBuffer(AdapterConformance, CrossProcessConformance, SQLRecovery):
    @pytest.fixture
    def recoverable_buffer(
        self, pg_url: str, wall_clock: FakeWallClock
    ) -> Iterator[SQLEventBuffer]:
        buffer = SQLEventBuffer(pg_url, clock=wall_clock)
        yield buffer
        buffer.close()

    @pytest.fixture
    def buffer(self, pg_url: str) -> Iterator[SQLEventBuffer]:
        buffer = SQLEventBuffer(pg_url)
        yield buffer
        buffer.close()

    @pytest.fixture
    def buffer_factory(self, pg_url: str) -> Callable[[], SQLEventBuffer]:
        return functools.partial(SQLEventBuffer, pg_url)

    @pytest.fixture
    def unavailable_buffer(self) -> Iterator[SQLEventBuffer]:
        buffer = SQLEventBuffer(f"postgresql://postgres@127.0.0.1:{closed_port()}/x")
        yield buffer
        buffer.close()
