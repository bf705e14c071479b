"""Options several subcommands share: times, actors, match fields."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click

from recorder.errors import ConfigurationError, RecorderError
from recorder.policies import parse_keep
from recorder.timespec import InvalidTimeSpec, parse_time


def time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """Click callback: an ISO date or date-time (UTC unless offset), or a duration ago (7d)."""
    if value is None:
        return None
    try:
        return parse_time(value)
    except InvalidTimeSpec as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


class Seconds(click.ParamType[float]):
    """A finite number of seconds from 0 to ``maximum`` (``nan`` and ``inf`` are mistakes)."""

    name = "seconds"

    def __init__(self, maximum: float, *, zero: bool = True) -> None:
        self.maximum = maximum
        self.zero = zero

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float | int):
            number = float(value)
        else:
            try:
                number = float(value)
            except ValueError:
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        low_ok = number >= 0 if self.zero else number > 0
        if not (low_ok and number <= self.maximum):  # also false for nan
            lowest = "0" if self.zero else "more than 0"
            self.fail(f"{value!r} is not from {lowest} to {self.maximum:g} seconds", param, ctx)
        return number


#: Row counts a database takes as a LIMIT (SQLite's and PostgreSQL's are 64-bit).
ROW_COUNT = click.IntRange(0, 2**62)
#: A 32-bit signed integer, as the priority column holds.
INT32 = click.IntRange(-(2**31) + 1, 2**31 - 1)
#: A year of seconds: the longest wait or margin any command has a use for.
YEAR_SECONDS = 365 * 24 * 3600.0


def anchor_digest(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Click callback: each ``--anchor`` is a block digest, 64 hexadecimal digits."""
    for digest in value or ():
        text = digest.strip().lower()
        if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
            raise click.BadParameter(
                f"{digest!r} is not a block digest (64 hexadecimal digits)", ctx, param
            )
    return value


def keep_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """Click callback: a retention period (7y, 12w, 90d, 12h, 30m), at most 100 years."""
    if value is None:
        return None
    try:
        keep: dt.timedelta = parse_keep(value)
    except RecorderError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return keep


def new_file_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """Click callback: a file to write, whose folder must exist."""
    if value is None:
        return None
    folder = Path(value).parent
    if not folder.is_dir():
        raise click.BadParameter(f"folder {str(folder)!r} does not exist", ctx, param)
    return value


def choice_callback(parse: Any) -> Any:
    """A click callback that runs ``parse(value)``, a library ConfigurationError being a usage mistake."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ConfigurationError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None

    return callback


def actor_option(func: Any) -> Any:
    return click.option(
        "--actor",
        metavar="NAME",
        help="Who makes the change, for the change log  [default: the OS user].",
    )(func)


def _match_options(func: Any, *, types: bool) -> Any:
    options = [
        click.option("--team", help="Match this team id only."),
        click.option("--channel", help="Match this channel id only."),
        click.option("--user", help="Match this user id only."),
    ]
    if types:
        options += [
            click.option("--type", "envelope_type", help="Match this envelope type only."),
            click.option("--event-type", help="Match this event type only."),
        ]
    for option in reversed(options):
        func = option(func)
    return func


def with_type_match(func: Any) -> Any:
    """``--team --channel --user --type --event-type``."""
    return _match_options(func, types=True)


def without_type_match(func: Any) -> Any:
    """``--team --channel --user``."""
    return _match_options(func, types=False)


def query_filters(func: Any) -> Any:
    """The filters of ``recorder query``, shared by every command that selects envelopes.

    ``--team --channel --user --type --event-type --since --until``.
    """
    options = [
        click.option("--team", help="Team id (T...)."),
        click.option("--channel", help="Channel id (C...)."),
        click.option("--user", help="User id (U...)."),
        click.option(
            "--type", "envelope_type", help="Envelope type: events_api, slash_commands, ..."
        ),
        click.option(
            "--event-type", help="Event type, slash command, or interactive payload type."
        ),
        click.option(
            "--since",
            callback=time_option,
            metavar="TIME",
            help="Received at or after: 2026-05-01, ISO time, 7d.",
        ),
        click.option(
            "--until",
            callback=time_option,
            metavar="TIME",
            help="Received before: 2026-05-02, ISO time, 24h.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func
