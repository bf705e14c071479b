"""``recorder import`` and ``recorder query``: envelopes in and out."""

from __future__ import annotations

import datetime as dt
import functools
import io
import itertools
import os
import stat
import sys
from typing import BinaryIO

import click

from recorder import audit, importer
from recorder.adapters.sql import SQLEventBuffer
from recorder.cli.errors import EXIT_ERROR
from recorder.cli.options import ROW_COUNT, query_filters
from recorder.cli.storage import open_engine, stderr_is_terminal
from recorder.settings import Settings


@click.command("import")
@click.argument("file", type=click.File("rb"), metavar="FILE|-")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=importer.DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Envelopes per transaction.",
)
@click.option(
    "--pending",
    is_flag=True,
    help="Store the envelopes pending, so bots on this database dispatch them (a backfill of "
    "work). By default an import is an archive: stored as already handled.",
)
@click.option(
    "--received-at",
    type=click.Choice(importer.RECEIVED_AT_CHOICES),
    default="now",
    show_default=True,
    help="For plain envelopes: the import's time, or payload.event_time where present "
    "(a backfill lands on its own days). Archive records keep their own time.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Processes that parse, redact and hash the lines  [default: the number of CPUs]. "
    "1 parses in the importing process.",
)
@click.pass_obj
def import_command(
    settings: Settings,
    file: BinaryIO,
    batch_size: int,
    pending: bool,
    received_at: str,
    jobs: int | None,
) -> None:
    """Record the envelopes in FILE (JSON Lines; - reads stdin).

    A line is an envelope, whose exact text is stored, or an archive record
    from `recorder query --format archive`, stored with its own text,
    received_at and digest (checked). Imported envelopes are stored as
    already handled, so no bot's recovery runs handlers on them; --pending
    opts in. Envelopes already recorded (same envelope_id, or a retry with a
    known event_id, or repeated earlier in FILE) count as duplicates: the
    first line wins. A malformed line is reported as `line N: reason` and
    skipped; the others are still recorded. Exit status 1 if any line was
    rejected.

    Worker processes (--jobs) parse, redact and hash the lines; this process
    writes their batches in file order (COPY on PostgreSQL), reading only a
    few batches ahead, so memory stays flat on any size of file.

    The embedded SQLite database is created and migrated on first use;
    PostgreSQL needs `recorder db upgrade` first.

    \b
    Example:
      recorder query --format archive > archive.jsonl
      recorder --database-url sqlite:///copy.db import archive.jsonl
    """

    def on_error(line_no: int, reason: str) -> None:
        click.echo(f"line {line_no}: {reason}", err=True)

    # On a terminal the progress bar owns the last line of stderr: rejected
    # lines are shown after it finishes rather than written over it.
    bar_shown = stderr_is_terminal()
    run = functools.partial(
        importer.import_envelopes,
        batch_size=batch_size,
        on_error=None if bar_shown else on_error,
        pending=pending,
        received_at=received_at,  # type: ignore[arg-type]  # one of the Choice's values
        jobs=jobs or _cpus(),
    )
    with (
        open_engine(settings) as engine,
        SQLEventBuffer(engine, max_envelope_bytes=settings.max_envelope_bytes) as buffer,
    ):
        size = _file_size(file)
        if not stderr_is_terminal():
            report = run(buffer, file)
        elif size is not None:
            with click.progressbar(length=size, label="importing", file=sys.stderr) as bar:
                report = run(buffer, file, on_progress=bar.update)
        else:
            # A pipe has no size: count lines instead.
            with click.progressbar(file, label="importing", file=sys.stderr) as lines:
                report = run(buffer, lines)
    if bar_shown:
        for line_no, reason in report.errors:
            on_error(line_no, reason)
        if report.rejected > len(report.errors):
            click.echo(f"... and {report.rejected - len(report.errors):,} more", err=True)
    click.echo(report.summary())
    if report.rejected:
        sys.exit(EXIT_ERROR)


def _cpus() -> int:
    """Cores this process may run on (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def _file_size(file: BinaryIO) -> int | None:
    try:
        status = os.fstat(file.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) else None


@click.command("query")
@query_filters
@click.option("--limit", type=ROW_COUNT, help="At most this many envelopes.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(audit.FORMATS),
    default="table",
    show_default=True,
    help="jsonl prints each envelope exactly as received; archive adds received_at and "
    "the digest, for `recorder import`.",
)
@click.pass_obj
def query_command(
    settings: Settings,
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
    """Print recorded envelopes, oldest first, streaming (constant memory).

    \b
    Example:
      recorder query --channel C0123ABCD --since 7d --format csv > week.csv
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
    out = sys.stdout.buffer
    with open_engine(settings, must_exist=True) as engine:
        rows = iter(audit.query_envelopes(engine, spec))
        # Reach the database before writing anything, so that a failure
        # prints its error alone rather than after a table header.
        first = next(rows, None)
        audit.export(itertools.chain(() if first is None else (first,), rows), fmt, out)
        out.flush()
