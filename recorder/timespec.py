"""Times and durations as people type them: ``2026-05-01``, ``2026-05-01T12:00+02:00``, ``7d``.

Pure functions, shared by ``recorder query``, retention and holds. Every
result is a timezone-aware UTC datetime; a time without an offset is UTC.
And the one spelling of a time that digests use (:func:`timestamp_text`).
"""

from __future__ import annotations

import datetime as dt
import re

from recorder.errors import ConfigurationError

UTC = dt.timezone.utc

_DURATION = re.compile(r"^\s*(?P<amount>\d+)\s*(?P<unit>[a-zA-Z]*)\s*$")
_UNITS: dict[str, dt.timedelta] = {
    "y": dt.timedelta(days=365),
    "w": dt.timedelta(weeks=1),
    "d": dt.timedelta(days=1),
    "h": dt.timedelta(hours=1),
    "m": dt.timedelta(minutes=1),
    "s": dt.timedelta(seconds=1),
}


class InvalidTimeSpec(ConfigurationError, ValueError):
    """A time or duration could not be understood; the message shows what is accepted."""


class DurationTooLong(InvalidTimeSpec):
    """A well-formed duration longer than any time span the recorder handles."""


def parse_duration(text: str, *, default_unit: str = "d") -> dt.timedelta:
    """``90d``, ``24h``, ``30m``, ``45s``, ``2w``, ``1y`` (365 days); a plain number is in ``default_unit``.

    Raises
    ------
    InvalidTimeSpec
        Not a whole, positive amount with a known unit, or longer than a
        timedelta can hold.
    """
    match = _DURATION.match(text)
    unit = (match.group("unit") or default_unit).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise InvalidTimeSpec(
            f"{text!r} is not a duration; use a whole number with y, w, d, h, m or s (e.g. 7d, 24h)"
        )
    amount = int(match.group("amount"))
    if amount <= 0:
        raise InvalidTimeSpec(f"{text!r} is not a duration; it must be more than zero")
    try:
        return amount * _UNITS[unit]
    except OverflowError:
        raise DurationTooLong(f"{text!r} is too long a duration") from None


def parse_time(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """A point in time: an ISO 8601 date or date-time, or a duration meaning that long ago.

    ``2026-05-01`` is midnight UTC; ``2026-05-01T12:30`` and
    ``2026-05-01 12:30:00`` are UTC; ``...Z`` and ``...+02:00`` keep their
    offset; ``7d`` is seven days before ``now``.

    Raises
    ------
    InvalidTimeSpec
        The text is none of these, or the time is outside the years 1-9999
        (in UTC), which is as far as the recorder's times go.
    """
    stripped = text.strip()
    if _DURATION.match(stripped) and not stripped.isdigit():
        try:
            ago = parse_duration(stripped)
        except InvalidTimeSpec:
            pass
        else:
            try:
                return (now or dt.datetime.now(UTC)).astimezone(UTC) - ago
            except OverflowError:
                raise InvalidTimeSpec(
                    f"{text!r} ago is before the year 1; use a shorter duration or a date"
                ) from None
    iso = stripped[:-1] + "+00:00" if stripped.endswith(("Z", "z")) else stripped
    try:
        if len(iso) == 10:
            parsed = dt.datetime.combine(dt.date.fromisoformat(iso), dt.time())
        else:
            parsed = dt.datetime.fromisoformat(iso)
    except ValueError:
        raise InvalidTimeSpec(
            f"{text!r} is not a time; use an ISO date or date-time (2026-05-01, "
            "2026-05-01T12:00:00Z) or a duration ago (7d, 24h, 30m)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidTimeSpec(
            f"{text!r} is outside the years 1-9999 in UTC, which is as far as times go here"
        ) from None


def timestamp_text(value: dt.datetime) -> str:
    """A time as the digests spell it (seal blocks, sealed logs): UTC, microseconds, ``Z``."""
    value = value.astimezone(UTC)
    if value.year < 1000:  # strftime does not pad the year; keep its spelling
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # isoformat spells the same thing several times faster than strftime
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
