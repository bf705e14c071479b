"""``recorder stats`` and ``recorder report``: counts and the HTML report."""

from __future__ import annotations

import datetime as dt
import sys

import click

from recorder import report, stats
from recorder.cli.options import new_file_option, time_option
from recorder.cli.storage import open_engine
from recorder.settings import Settings


@click.command("stats")
@click.option(
    "--by",
    type=click.Choice(list(stats.DIMENSIONS)),
    default="type",
    show_default=True,
    help="Count per day by envelope type, event type, channel or user.",
)
@click.option(
    "--since",
    callback=time_option,
    metavar="TIME",
    help="Received at or after  [default: 30 days ago].",
)
@click.option("--until", callback=time_option, metavar="TIME", help="Received before.")
@click.option(
    "--format", "fmt", type=click.Choice(stats.FORMATS), default="table", show_default=True
)
@click.pass_obj
def stats_command(
    settings: Settings,
    by: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    fmt: str,
) -> None:
    """Envelopes per UTC day, by type, event type, channel or user.

    \b
    Example:
      recorder stats --by channel --since 7d --format csv
    """
    if since is None:
        since = (until or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(days=30)
    with open_engine(settings, must_exist=True) as engine:
        rows = stats.daily_counts(engine, by=by, since=since, until=until)
    stats.write_stats(rows, fmt, sys.stdout, by=by)


@click.command("report")
@click.option(
    "--html",
    "html_path",
    required=True,
    type=click.Path(dir_okay=False, writable=True),
    callback=new_file_option,
    metavar="FILE",
    help="Write the page here.",
)
@click.option(
    "--since",
    callback=time_option,
    metavar="TIME",
    help="Received at or after  [default: 30 days ago].",
)
@click.option("--until", callback=time_option, metavar="TIME", help="Received before.")
@click.pass_obj
def report_command(
    settings: Settings, html_path: str, since: dt.datetime | None, until: dt.datetime | None
) -> None:
    """Write a self-contained HTML report (inline CSS and SVG; works offline).

    \b
    Example:
      recorder report --html report.html --since 30d
    """
    if since is None:
        since = (until or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(days=30)
    with open_engine(settings, must_exist=True) as engine:
        data = report.write_report(engine, html_path, since=since, until=until)
    click.echo(f"wrote {html_path}: {data.envelopes} envelopes, {data.retried} retries")
