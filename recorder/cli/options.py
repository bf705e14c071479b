"""Options several subcommands share: times, actors, match fields."""

from __future__ import annotations

from typing import Any

import click

from recorder.timespec import InvalidTimeSpec, parse_time


def time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """Click callback: an ISO date or date-time (UTC unless offset), or a duration ago (7d)."""
    if value is None:
        return None
    try:
        return parse_time(value)
    except InvalidTimeSpec as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


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
