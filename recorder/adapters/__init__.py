"""The included adapters: memory, SQL (PostgreSQL, SQLite) and Redis.

``RedisEventBuffer`` loads on first use, so this package imports without the
``redis`` extra installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recorder.adapters.memory import MemoryEventBuffer
from recorder.adapters.sql import SQLEventBuffer

if TYPE_CHECKING:
    from recorder.adapters.redis import RedisEventBuffer

__all__ = ["MemoryEventBuffer", "RedisEventBuffer", "SQLEventBuffer", "open_buffer"]


def open_buffer(database_url: str | None = None) -> SQLEventBuffer:
    """An SQLEventBuffer on ``database_url``, or on the configured database when ``None``.

    The embedded SQLite database gets its schema on the spot; PostgreSQL is
    expected to be migrated already (``recorder db upgrade``).
    """
    from recorder.settings import Settings

    settings = Settings.load(database_url=database_url)
    return SQLEventBuffer(settings.database_url, upgrade=settings.is_sqlite)


def __getattr__(name: str) -> Any:
    if name == "RedisEventBuffer":
        from recorder.adapters.redis import RedisEventBuffer

        return RedisEventBuffer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
