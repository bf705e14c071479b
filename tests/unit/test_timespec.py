from __future__ import annotations

import datetime as dt

import pytest

from recorder.errors import ConfigurationError
from recorder.timespec import InvalidTimeSpec, parse_duration, parse_time

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 5, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", dt.timedelta(days=90)),
        ("90", dt.timedelta(days=90)),
        ("24h", dt.timedelta(hours=24)),
        ("30m", dt.timedelta(minutes=30)),
        ("45s", dt.timedelta(seconds=45)),
        ("2w", dt.timedelta(weeks=2)),
        (" 7D ", dt.timedelta(days=7)),
    ],
)
def test_durations(text: str, expected: dt.timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "d", "7x", "-3d", "0d", "1.5h", "seven days"])
def test_bad_durations_say_what_is_accepted(text: str) -> None:
    with pytest.raises(InvalidTimeSpec, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-05-01", dt.datetime(2026, 5, 1, tzinfo=UTC)),
        ("2026-05-01T12:30", dt.datetime(2026, 5, 1, 12, 30, tzinfo=UTC)),
        ("2026-05-01 12:30:15", dt.datetime(2026, 5, 1, 12, 30, 15, tzinfo=UTC)),
        ("2026-05-01T12:30:00Z", dt.datetime(2026, 5, 1, 12, 30, tzinfo=UTC)),
        ("2026-05-01T12:30:00+02:00", dt.datetime(2026, 5, 1, 10, 30, tzinfo=UTC)),
        ("7d", NOW - dt.timedelta(days=7)),
        ("24h", NOW - dt.timedelta(hours=24)),
        ("30m", NOW - dt.timedelta(minutes=30)),
    ],
)
def test_times(text: str, expected: dt.datetime) -> None:
    parsed = parse_time(text, now=NOW)
    assert parsed == expected
    assert parsed.tzinfo == UTC


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "2026", "05/01/2026", ""])
def test_bad_times_are_configuration_errors(text: str) -> None:
    with pytest.raises(ConfigurationError, match="is not a time"):
        parse_time(text, now=NOW)
