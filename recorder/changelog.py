"""The change log: who changed which retention policy or legal hold, when, from what to what.

Each change writes its row in the transaction that makes the change, so the
log and the rules never disagree.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection, Engine

from recorder import statements
from recorder.engine import read_only, storage_errors


def log_change(
    conn: Connection,
    *,
    at: dt.datetime,
    actor: str,
    action: str,
    kind: str,
    name: str,
    details: dict[str, Any],
) -> None:
    """Write one change log row, inside the caller's transaction."""
    conn.execute(
        statements.insert_change(
            at=at, actor=actor, action=action, kind=kind, name=name, details=details
        )
    )


@dataclass(frozen=True, slots=True)
class ChangeLogEntry:
    id: int
    at: dt.datetime
    actor: str
    action: str
    object_kind: str
    object_name: str
    details: dict[str, Any] | None


def read_change_log(engine: Engine, *, limit: int | None = None) -> list[ChangeLogEntry]:
    """Changes to policies and holds, oldest first (the newest ``limit`` when given)."""
    with storage_errors("reading the change log"), read_only(engine) as conn:
        rows = conn.execute(statements.select_change_log(limit)).all()
    return [ChangeLogEntry(**r._mapping) for r in reversed(rows)]
