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

__all__ = ["MemoryEventBuffer", "RedisEventBuffer", "SQLEventBuffer"]


def __getattr__(name: str) -> Any:
    if name == "RedisEventBuffer":
        from recorder.adapters.redis import RedisEventBuffer

        return RedisEventBuffer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
