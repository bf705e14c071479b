"""recorder.testing.ManualClock: both clocks move together, and only when told to."""

from __future__ import annotations

import datetime as dt

import pytest

from recorder.testing import ManualClock

START = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def test_the_clocks_stand_still_until_advanced() -> None:
    clock = ManualClock(START)
    assert clock.now() == clock() == START
    assert clock.monotonic() == 0.0
    clock.advance(61.5)
    assert clock.now() == START + dt.timedelta(seconds=61.5)
    assert clock.monotonic() == 61.5


def test_a_clock_never_goes_back_and_is_timezone_aware() -> None:
    clock = ManualClock(START)
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="timezone-aware"):
        ManualClock(dt.datetime(2026, 3, 1))
    assert ManualClock().now().tzinfo is not None
