"""Retention policies: how long records that match are kept.

Policies live in the database, so every instance and every scheduler shares
them. The rules:

* **Which policy decides.** For each record, among the policies whose match
  fields all equal the record's columns (a field left unset matches
  anything), the one with the highest ``priority`` decides. Ties go to the
  policy whose name sorts first (Python string order, i.e. by code point),
  so the outcome never depends on the database's collation or row order.
* **Unmatched records are kept**, however old.
* **A policy with an archive directory** (``archive_dir``) has what it
  expires archived before it is deleted, never deleted unarchived (see
  :func:`recorder.prune.prune` for where, and the database-side guarantee).

Legal holds (:mod:`recorder.holds`) override every policy; pruning
(:mod:`recorder.prune`) applies both. Every change to a policy writes a
``change_log`` row (:mod:`recorder.changelog`) in the same transaction.

The small checks every retention module shares (names, actors, the clock)
live here too, beside the error they raise.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy.engine import Engine

from recorder import statements
from recorder.changelog import log_change
from recorder.engine import read_only, storage_errors
from recorder.errors import ConfigurationError, RecorderError
from recorder.timespec import DurationTooLong, parse_duration

UTC = dt.timezone.utc
MAX_NAME_LENGTH = 200
MAX_ARCHIVE_DIR_LENGTH = 4096
#: The longest retention period a policy may have. Longer is "forever" in
#: practice, and keeping forever is what no policy at all means.
MAX_KEEP = dt.timedelta(days=100 * 365)
_KEEP_UNITS = "ywdhm"

POLICY = "retention_policy"


class RetentionError(RecorderError, ValueError):
    """A policy or hold request cannot be carried out (unknown name, bad value)."""


def parse_keep(text: str) -> dt.timedelta:
    """A retention period: ``7y``, ``12w``, ``90d``, ``12h``, ``30m``; a plain number means days.

    A year is 365 days. At most :data:`MAX_KEEP` (100 years).

    Raises
    ------
    RetentionError
        Not a whole, positive number of years, weeks, days, hours or minutes,
        or longer than 100 years.
    """
    stripped = text.strip().lower()
    if stripped and stripped[-1] not in _KEEP_UNITS and not stripped.isdigit():
        raise RetentionError(
            f"{text!r} is not a retention period; use e.g. 7y, 12w, 90d, 12h, 30m or 90"
        )
    try:
        keep = parse_duration(stripped, default_unit="d")
    except DurationTooLong:
        keep = dt.timedelta.max
    except ConfigurationError as exc:
        raise RetentionError(
            f"{text!r} is not a retention period; use e.g. 7y, 12w, 90d, 12h, 30m or 90"
        ) from exc
    check_keep(keep, shown=repr(text))
    return keep


def check_keep(keep: dt.timedelta, *, shown: str | None = None) -> None:
    """Refuse a period that is not positive or is longer than :data:`MAX_KEEP`."""
    shown = shown or f"{keep.total_seconds():.0f} seconds"
    if keep <= dt.timedelta(0):
        raise RetentionError(f"retention period {shown} must be more than zero")
    if keep > MAX_KEEP:
        raise RetentionError(
            f"retention period {shown} is longer than the maximum of 100y "
            f"({MAX_KEEP.days}d); to keep matching envelopes forever, have no policy match "
            "them (unmatched envelopes are kept)"
        )


def cutoff(started_at: dt.datetime, keep: dt.timedelta) -> dt.datetime:
    """``started_at - keep``, for any stored period: one beyond the calendar means nothing expires.

    A policy written before periods were bounded, or straight into the table,
    must not stop pruning for every other policy.
    """
    try:
        return started_at - keep
    except OverflowError:
        return dt.datetime.min.replace(tzinfo=UTC)


def default_actor() -> str:
    """The OS user running this process: who a change or a prune run is attributed to."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def resolve_now(now: dt.datetime | None) -> dt.datetime:
    """``now`` in UTC, or the current time; a naive ``now`` is refused."""
    if now is None:
        return dt.datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise RetentionError(f"a {kind} name must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise RetentionError(
            f"a {kind} name must be printable and at most {MAX_NAME_LENGTH} characters"
        )
    return name


def check_archive_dir(value: str | os.PathLike[str] | None) -> str | None:
    """A policy's archive directory: an absolute path, or None (no archiving required).

    Absolute because the policy is shared by every host and scheduler: a
    relative path would mean a different directory for each working directory.
    """
    if value is None:
        return None
    text = os.fspath(value)
    if not isinstance(text, str) or not text.strip():
        raise RetentionError("an archive directory must be a non-empty path or unset")
    if len(text) > MAX_ARCHIVE_DIR_LENGTH or not text.isprintable():
        raise RetentionError(
            f"an archive directory must be printable and at most {MAX_ARCHIVE_DIR_LENGTH} characters"
        )
    if not PurePosixPath(text).is_absolute():
        raise RetentionError(
            f"archive directory {text!r} must be an absolute path: every host and scheduler "
            "that prunes reads it from the policy"
        )
    return text


def check_value(field_name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise RetentionError(f"{field_name} must be a non-empty string or unset")
    return value


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long records that match are kept. Unset match fields match anything."""

    name: str
    keep: dt.timedelta
    team_id: str | None = None
    channel_id: str | None = None
    user_id: str | None = None
    envelope_type: str | None = None
    event_type: str | None = None
    priority: int = 0
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    archive_dir: str | None = None
    """When set, what this policy expires is archived before it is deleted (here, unless
    the prune names another archive directory), and never deleted unarchived."""

    def match(self) -> statements.Match:
        """The match fields, by column name."""
        return {name: getattr(self, name) for name in statements.POLICY_MATCH_COLUMNS}

    def matches(self, columns: Mapping[str, Any]) -> bool:
        """Whether a record with these reporting columns matches this policy."""
        return all(v is None or columns.get(k) == v for k, v in self.match().items())

    def precedence(self) -> tuple[int, str]:
        """Sort key: the policy that decides comes first."""
        return (-self.priority, self.name)

    def describe(self) -> dict[str, Any]:
        """JSON-ready fields, as the change log and ``recorder retention list`` show them."""
        return {
            "name": self.name,
            "keep_seconds": int(self.keep.total_seconds()),
            **{k: v for k, v in self.match().items() if v is not None},
            "priority": self.priority,
            **({"archive_dir": self.archive_dir} if self.archive_dir is not None else {}),
        }


def deciding_policy(
    policies: Sequence[RetentionPolicy], columns: Mapping[str, Any]
) -> RetentionPolicy | None:
    """The policy that decides a record's retention, or None when none matches (kept)."""
    for policy in sorted(policies, key=RetentionPolicy.precedence):
        if policy.matches(columns):
            return policy
    return None


def _policy_from_row(row: Any) -> RetentionPolicy:
    return RetentionPolicy(
        name=row.name,
        keep=_stored_keep(row.keep_seconds),
        team_id=row.team_id,
        channel_id=row.channel_id,
        user_id=row.user_id,
        envelope_type=row.envelope_type,
        event_type=row.event_type,
        priority=row.priority,
        created_at=row.created_at,
        updated_at=row.updated_at,
        archive_dir=row.archive_dir,
    )


def set_policy(
    engine: Engine,
    name: str,
    *,
    keep: dt.timedelta | str,
    team_id: str | None = None,
    channel_id: str | None = None,
    user_id: str | None = None,
    envelope_type: str | None = None,
    event_type: str | None = None,
    priority: int = 0,
    archive_dir: str | os.PathLike[str] | None = None,
    actor: str | None = None,
    now: dt.datetime | None = None,
) -> RetentionPolicy:
    """Create the policy ``name``, or replace every field of the existing one.

    With ``archive_dir`` (an absolute path), what the policy expires is
    archived there before it is deleted, and never deleted unarchived.

    Raises
    ------
    RetentionError
        A bad name, period, match value or archive directory.
    StorageUnavailable
        The database failed; nothing changed.
    """
    check_name("policy", name)
    period = parse_keep(keep) if isinstance(keep, str) else keep
    if period.total_seconds() < 1:
        raise RetentionError("a retention period must be at least one second")
    check_keep(period)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise RetentionError("priority must be a whole number")
    if not -(2**31) < priority < 2**31:
        raise RetentionError("priority must fit in 32 bits")
    match = {
        "team_id": check_value("team_id", team_id),
        "channel_id": check_value("channel_id", channel_id),
        "user_id": check_value("user_id", user_id),
        "envelope_type": check_value("envelope_type", envelope_type),
        "event_type": check_value("event_type", event_type),
    }
    archive = check_archive_dir(archive_dir)
    at = resolve_now(now)
    actor = actor or default_actor()
    values = {
        "keep_seconds": int(period.total_seconds()),
        **match,
        "priority": priority,
        "archive_dir": archive,
    }
    with storage_errors(f"setting retention policy {name}"), engine.begin() as conn:
        existing = conn.execute(statements.select_policy_for_update(name)).first()
        if existing is None:
            conn.execute(
                statements.insert_policy(
                    {"name": name, "created_at": at, "updated_at": at, **values}
                )
            )
            before = None
            created_at = at
        else:
            conn.execute(statements.update_policy(name, {"updated_at": at, **values}))
            before = _policy_from_row(existing).describe()
            created_at = existing.created_at
        policy = RetentionPolicy(
            name=name,
            keep=period,
            priority=priority,
            created_at=created_at,
            updated_at=at,
            archive_dir=archive,
            **match,
        )
        log_change(
            conn,
            at=at,
            actor=actor,
            action="create" if before is None else "update",
            kind=POLICY,
            name=name,
            details={"before": before, "after": policy.describe()},
        )
    return policy


def list_policies(engine: Engine) -> list[RetentionPolicy]:
    """Every policy, the one that decides first (highest priority, then name)."""
    with storage_errors("listing retention policies"), read_only(engine) as conn:
        rows = conn.execute(statements.select_policies()).all()
    return sorted((_policy_from_row(r) for r in rows), key=RetentionPolicy.precedence)


def remove_policy(
    engine: Engine, name: str, *, actor: str | None = None, now: dt.datetime | None = None
) -> RetentionPolicy:
    """Delete the policy ``name``; records it decided fall to the next matching policy.

    Raises
    ------
    RetentionError
        No policy has that name.
    """
    at = resolve_now(now)
    with storage_errors(f"removing retention policy {name}"), engine.begin() as conn:
        row = conn.execute(statements.delete_policy(name)).first()
        if row is None:
            raise RetentionError(f"no retention policy is named {name!r}")
        policy = _policy_from_row(row)
        log_change(
            conn,
            at=at,
            actor=actor or default_actor(),
            action="remove",
            kind=POLICY,
            name=name,
            details={"before": policy.describe()},
        )
    return policy


def _stored_keep(seconds: int) -> dt.timedelta:
    # A period beyond what a timedelta holds still reads (as the longest one).
    try:
        return dt.timedelta(seconds=seconds)
    except OverflowError:
        return dt.timedelta.max
