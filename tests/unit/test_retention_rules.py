"""Retention periods and the choice of the deciding policy: pure functions."""

from __future__ import annotations

import datetime as dt

import pytest

from recorder.holds import LegalHold
from recorder.policies import RetentionError, RetentionPolicy, deciding_policy, parse_keep


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", dt.timedelta(days=90)),
        ("12h", dt.timedelta(hours=12)),
        ("30m", dt.timedelta(minutes=30)),
        ("7", dt.timedelta(days=7)),
        (" 2D ", dt.timedelta(days=2)),
        ("2w", dt.timedelta(weeks=2)),
        ("7y", dt.timedelta(days=7 * 365)),
        ("100y", dt.timedelta(days=36500)),
        ("36500", dt.timedelta(days=36500)),
    ],
)
def test_parse_keep(text: str, expected: dt.timedelta) -> None:
    assert parse_keep(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "0", "0d", "-1d", "1.5d", "10x", "10s", "d", "forever", "101y", "36501d", "99999999999d"],
)
def test_parse_keep_refuses(text: str) -> None:
    with pytest.raises(RetentionError, match="retention period"):
        parse_keep(text)


def policy(
    name: str,
    priority: int = 0,
    *,
    team_id: str | None = None,
    channel_id: str | None = None,
    user_id: str | None = None,
    envelope_type: str | None = None,
    event_type: str | None = None,
) -> RetentionPolicy:
    return RetentionPolicy(
        name=name,
        keep=dt.timedelta(days=1),
        priority=priority,
        team_id=team_id,
        channel_id=channel_id,
        user_id=user_id,
        envelope_type=envelope_type,
        event_type=event_type,
    )


def deciding_name(policies: list[RetentionPolicy], columns: dict[str, str]) -> str:
    decided = deciding_policy(policies, columns)
    assert decided is not None
    return decided.name


def test_highest_priority_then_name_decides() -> None:
    policies = [
        policy("z-any"),
        policy("b-chan", 5, channel_id="C1"),
        policy("a-chan", 5, channel_id="C1"),
        policy("user", 9, user_id="U1"),
    ]
    assert deciding_name(policies, {"channel_id": "C1", "user_id": "U2"}) == "a-chan"
    assert deciding_name(policies, {"channel_id": "C1", "user_id": "U1"}) == "user"
    assert deciding_name(policies, {"channel_id": "C2"}) == "z-any"
    assert deciding_policy(policies[1:], {"channel_id": "C2"}) is None


def test_every_match_field_must_agree() -> None:
    p = policy("p", team_id="T1", envelope_type="events_api", event_type="message")
    assert p.matches({"team_id": "T1", "envelope_type": "events_api", "event_type": "message"})
    assert not p.matches({"team_id": "T1", "envelope_type": "events_api", "event_type": None})


def test_hold_covers_its_window_while_in_force() -> None:
    t = dt.datetime(2026, 1, 10, tzinfo=dt.timezone.utc)
    hold = LegalHold(name="h", reason="r", channel_id="C1", since=t, until=t + dt.timedelta(days=1))
    assert hold.covers({"channel_id": "C1"}, t)
    assert not hold.covers({"channel_id": "C1"}, t + dt.timedelta(days=1))
    assert not hold.covers({"channel_id": "C2"}, t)
    released = LegalHold(name="h", reason="r", released_at=t)
    assert not released.covers({}, t)
