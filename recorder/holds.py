"""Legal holds: records a hold in force covers are never pruned.

A hold covers a record when its team, channel and user fields (unset
matches anything) equal the record's and ``since <= received_at < until``
(either bound may be open). Holds are checked inside every prune statement,
so a hold placed during a run protects its records from the next batch on.
Released holds keep their row, with the release time and who released it.
Every change writes a ``change_log`` row in the same transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from recorder import statements
from recorder.changelog import log_change
from recorder.engine import read_only, storage_errors
from recorder.policies import (
    UTC,
    RetentionError,
    check_name,
    check_value,
    default_actor,
    resolve_now,
)
from recorder.schema import legal_holds

HOLD = "legal_hold"


@dataclass(frozen=True, slots=True)
class LegalHold:
    """Records a hold covers are never pruned while it is in force."""

    name: str
    reason: str
    team_id: str | None = None
    channel_id: str | None = None
    user_id: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    created_at: dt.datetime | None = None
    created_by: str | None = None
    released_at: dt.datetime | None = None
    released_by: str | None = None

    @property
    def in_force(self) -> bool:
        return self.released_at is None

    def covers(self, columns: Mapping[str, Any], received_at: dt.datetime) -> bool:
        """Whether this hold, if in force, covers a record."""
        return (
            self.in_force
            and all(
                getattr(self, k) is None or columns.get(k) == getattr(self, k)
                for k in statements.HOLD_MATCH_COLUMNS
            )
            and (self.since is None or received_at >= self.since)
            and (self.until is None or received_at < self.until)
        )

    def describe(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        return {
            k: (v.isoformat() if isinstance(v, dt.datetime) else v)
            for k, v in fields.items()
            if v is not None
        }


def _hold_from_row(row: Any) -> LegalHold:
    return LegalHold(**{c.name: getattr(row, c.name) for c in legal_holds.c})


def add_hold(
    engine: Engine,
    name: str,
    *,
    reason: str,
    team_id: str | None = None,
    channel_id: str | None = None,
    user_id: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    actor: str | None = None,
    now: dt.datetime | None = None,
) -> LegalHold:
    """Place a legal hold. With no match fields and no bounds it holds every record.

    Raises
    ------
    RetentionError
        The name is taken (released holds keep theirs), the reason is empty,
        or ``since`` is not before ``until``.
    """
    check_name("hold", name)
    if not isinstance(reason, str) or not reason.strip():
        raise RetentionError("a legal hold needs a reason")
    for label, bound in (("since", since), ("until", until)):
        if bound is not None and bound.tzinfo is None:
            raise RetentionError(f"{label} must be timezone-aware")
    if since is not None and until is not None and since >= until:
        raise RetentionError("since must be before until")
    at = resolve_now(now)
    hold = LegalHold(
        name=name,
        reason=reason,
        team_id=check_value("team_id", team_id),
        channel_id=check_value("channel_id", channel_id),
        user_id=check_value("user_id", user_id),
        since=since.astimezone(UTC) if since else None,
        until=until.astimezone(UTC) if until else None,
        created_at=at,
        created_by=actor or default_actor(),
    )
    with storage_errors(f"adding legal hold {name}"), engine.begin() as conn:
        existing = conn.execute(statements.select_hold_released_at(name)).first()
        if existing is not None:
            state = "in force" if existing.released_at is None else "released"
            raise RetentionError(f"a legal hold named {name!r} already exists ({state})")
        conn.execute(statements.insert_hold(dataclasses.asdict(hold)))
        log_change(
            conn,
            at=at,
            actor=hold.created_by or "",
            action="add",
            kind=HOLD,
            name=name,
            details=hold.describe(),
        )
    return hold


def list_holds(engine: Engine, *, include_released: bool = True) -> list[LegalHold]:
    """Holds in order of creation; released ones too unless ``include_released`` is false."""
    stmt = statements.select_holds(include_released=include_released)
    with storage_errors("listing legal holds"), read_only(engine) as conn:
        return [_hold_from_row(r) for r in conn.execute(stmt).all()]


def release_hold(
    engine: Engine, name: str, *, actor: str | None = None, now: dt.datetime | None = None
) -> LegalHold:
    """Release a hold: its records are subject to retention again. The row stays.

    Raises
    ------
    RetentionError
        No hold has that name, or it is already released.
    """
    at = resolve_now(now)
    actor = actor or default_actor()
    with storage_errors(f"releasing legal hold {name}"), engine.begin() as conn:
        row = conn.execute(statements.select_hold_for_update(name)).first()
        if row is None:
            raise RetentionError(f"no legal hold is named {name!r}")
        if row.released_at is not None:
            raise RetentionError(
                f"legal hold {name!r} was already released at {row.released_at.isoformat()}"
            )
        conn.execute(statements.release_hold(name, at=at, actor=actor))
        log_change(
            conn,
            at=at,
            actor=actor,
            action="release",
            kind=HOLD,
            name=name,
            details={"released_at": at.isoformat()},
        )
    return dataclasses.replace(_hold_from_row(row), released_at=at, released_by=actor)
