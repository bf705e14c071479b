"""``recorder archive query|export``: the cold archive, read with DuckDB."""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import json
import sys
from collections.abc import Iterator
from typing import Any

import click

from recorder import audit
from recorder.archive import open_archive
from recorder.archive.reader import connect, query_archive, run_sql
from recorder.cli.options import query_filters

QUERY_FORMATS = ("table", "csv", "jsonl")


@click.group("archive")
def archive_group() -> None:
    """The cold archive `recorder prune --archive DIR` writes (needs the archive extra)."""


@archive_group.command("query")
@click.argument("directory", metavar="DIR")
@click.argument("sql")
@click.option(
    "--format", "fmt", type=click.Choice(QUERY_FORMATS), default="table", show_default=True
)
def archive_query(directory: str, sql: str, fmt: str) -> None:
    """Run one SELECT over every file of the archive in DIR, as the view `envelopes`.

    The view has the columns of `recorder query` (received_at, envelope_id,
    the reporting columns, status, envelope_sha256, envelope_text). DuckDB
    reads only the archive's files and cannot write.

    Example: recorder archive query /srv/archive "SELECT channel_id, count(*) FROM envelopes GROUP BY 1"
    """
    con = connect(open_archive(directory))
    try:
        columns, rows = run_sql(con, sql)
        out = sys.stdout
        if fmt == "csv":
            writer = csv.writer(out, lineterminator="\r\n")
            writer.writerow(columns)
            writer.writerows(_plain(row) for row in rows)
        elif fmt == "jsonl":
            for row in rows:
                out.write(json.dumps(dict(zip(columns, _plain(row), strict=True))) + "\n")
        else:
            _table(columns, rows)
    finally:
        con.close()


def _plain(row: tuple[Any, ...]) -> list[Any]:
    return [
        v.astimezone(dt.timezone.utc).isoformat() if isinstance(v, dt.datetime) else v for v in row
    ]


def _table(columns: list[str], rows: Iterator[tuple[Any, ...]]) -> None:
    shown = [["-" if v is None else str(v) for v in _plain(row)] for row in rows]
    widths = [min(60, max([len(c), *(len(r[i]) for r in shown)])) for i, c in enumerate(columns)]

    def line(cells: list[str]) -> str:
        cut = [c if len(c) <= w else c[: w - 1] + "~" for c, w in zip(cells, widths, strict=True)]
        return "  ".join(c.ljust(w) for c, w in zip(cut, widths, strict=True)).rstrip()

    click.echo(line(columns))
    for row in shown:
        click.echo(line(row))
    click.echo(f"({len(shown)} {'row' if len(shown) == 1 else 'rows'})")


@archive_group.command("export")
@click.argument("directory", metavar="DIR")
@query_filters
@click.option("--limit", type=click.IntRange(min=0), help="At most this many envelopes.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(audit.FORMATS),
    default="jsonl",
    show_default=True,
    help="The formats of `recorder query`; jsonl prints each envelope exactly as received.",
)
def archive_export(
    directory: str,
    team: str | None,
    channel: str | None,
    user: str | None,
    envelope_type: str | None,
    event_type: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    limit: int | None,
    fmt: str,
) -> None:
    """Print archived envelopes, oldest first, with the filters of `recorder query`.

    Example: recorder archive export /srv/archive --channel C0123 --since 2025-01-01 --until 2025-02-01
    """
    spec = audit.QuerySpec(
        team_id=team,
        channel_id=channel,
        user_id=user,
        envelope_type=envelope_type,
        event_type=event_type,
        since=since,
        until=until,
        limit=limit,
    )
    rows = query_archive(open_archive(directory), spec)
    # Read the archive before writing anything: an error prints alone.
    first = next(rows, None)
    out = sys.stdout.buffer
    audit.export(itertools.chain(() if first is None else (first,), rows), fmt, out)
    out.flush()
