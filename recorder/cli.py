"""The ``recorder`` command: a thin layer over the library API.

How to add a subcommand (keep the edit small and additive):

* write one function per subcommand, decorated ``@main.command()`` (or
  ``@db.command()``, or a new ``@main.group()`` for a family such as
  ``recorder retention ...``), in a section of its own below;
* take the settings with ``@click.pass_obj`` (a :class:`~recorder.settings.Settings`)
  and open storage with :func:`open_engine` or :func:`open_buffer`;
* call the library and print; raise a :class:`~recorder.errors.RecorderError`
  for anything the user must fix. :class:`RecorderGroup` turns it into one
  ``error:`` line (plus its ``caused by:`` chain) and exit status 1, with
  database passwords masked. Click usage errors get the same one-line form
  and exit status 2.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import re
import stat
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any, BinaryIO, NoReturn

import click
from click.core import ParameterSource
from sqlalchemy.engine import Engine, make_url

from recorder import audit, importer
from recorder import db as db_api
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine, mask_url
from recorder.errors import RecorderError, StorageUnavailable
from recorder.settings import ENV_DATABASE_URL, Settings
from recorder.timespec import InvalidTimeSpec, parse_time

EXIT_ERROR = 1
EXIT_USAGE = 2

# scheme://user:password@host -> scheme://user:***@host, in any message text.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#@\s]*:)[^@\s/]*@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it masked."""
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else ""


# SQLAlchemy prefixes the driver's message with its class: "(psycopg.OperationalError) ..."
_WRAPPED_PREFIX = re.compile(r"^\([\w.]+\) ")


def error_lines(exc: BaseException, settings: Settings | None = None) -> list[str]:
    """``error: ...`` then one ``  caused by: ...`` line per exception in the chain.

    A cause whose text was already shown (SQLAlchemy repeats its driver's
    message) is left out. Passwords are masked, and a storage failure names the
    database it could not use.
    """
    headline = _first_line(str(exc)) or type(exc).__name__
    if settings is not None and isinstance(exc, StorageUnavailable):
        headline += f" (database {settings.masked_database_url})"
    lines = [f"error: {headline}"]
    shown = [headline]
    cause = _cause_of(exc)
    while cause is not None:
        message = _WRAPPED_PREFIX.sub("", _first_line(str(cause)))
        if message and not any(message in text for text in shown):
            lines.append(f"  caused by: {type(cause).__name__}: {message}")
            shown.append(message)
        cause = _cause_of(cause)
    return [_mask(line, settings) for line in lines]


def _cause_of(exc: BaseException) -> BaseException | None:
    return exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def _mask(text: str, settings: Settings | None) -> str:
    text = redact(text)
    password = make_url(settings.database_url).password if settings is not None else None
    if password and len(str(password)) >= 4:
        text = text.replace(str(password), "***")
    return text


def _fail(lines: Sequence[str], status: int) -> NoReturn:
    for line in lines:
        click.echo(line, err=True)
    sys.exit(status)


class _Failed(Exception):
    """A RecorderError already rendered with the settings it happened under."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(lines[0])
        self.lines = lines


class RecorderGroup(click.Group):
    """A click group whose errors are one line on stderr, never a traceback."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except _Failed as exc:
            _fail(exc.lines, EXIT_ERROR)
        except RecorderError as exc:
            _fail(error_lines(exc), EXIT_ERROR)
        except click.ClickException as exc:
            _fail([f"error: {redact(exc.format_message())}"], exc.exit_code)
        except click.Abort:
            _fail(["error: aborted"], EXIT_ERROR)
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RecorderError as exc:
            settings = ctx.obj if isinstance(ctx.obj, Settings) else None
            raise _Failed(error_lines(exc, settings)) from exc


@click.group(cls=RecorderGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    envvar=ENV_DATABASE_URL,
    show_envvar=True,
    metavar="URL",
    help="postgresql://user:pass@host/db or sqlite:///path  [default: sqlite:///recorder.db]",
)
@click.option("-v", "--verbose", is_flag=True, help="Log what the recorder does, on stderr.")
@click.version_option(package_name="envelope-recorder", prog_name="recorder")
@click.pass_context
def main(ctx: click.Context, database_url: str | None, verbose: bool) -> None:
    """SQL-backed audit recorder for Slack Socket Mode envelopes."""
    if verbose:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
        )
    if ctx.get_parameter_source("database_url") is ParameterSource.ENVIRONMENT:
        # Let Settings read the variable itself, so its errors name the variable.
        database_url = None
    ctx.obj = Settings.load(database_url=database_url, verbose=verbose)


# -- helpers shared by subcommands


@contextmanager
def open_engine(settings: Settings, *, migrate_sqlite: bool = True) -> Iterator[Engine]:
    """An engine for the configured database, disposed of afterwards.

    The embedded SQLite database is brought to the current schema on first
    use (``migrate_sqlite``), so ``recorder import`` works on a fresh machine
    with no set-up. PostgreSQL is never migrated implicitly: run
    ``recorder db upgrade`` (a missing schema is a SchemaMissing error saying so).
    """
    engine = create_engine(settings.database_url)
    try:
        if migrate_sqlite and engine.dialect.name == "sqlite":
            ensure_sqlite_schema(engine)
        yield engine
    finally:
        engine.dispose()


def ensure_sqlite_schema(engine: Engine) -> None:
    """Upgrade an SQLite database that is not at the newest revision."""
    if db_api.current_revision(engine) != db_api.head_revision():
        db_api.upgrade(engine)


def stderr_is_terminal() -> bool:
    stream: IO[str] = sys.stderr
    return stream.isatty()


# -- recorder db ...


@main.group()
def db() -> None:
    """Schema migrations."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.pass_obj
def db_upgrade(settings: Settings, revision: str) -> None:
    """Create or upgrade the schema (idempotent); print the revision."""
    db_api.upgrade(settings.database_url, revision)
    current = db_api.current_revision(settings.database_url)
    click.echo(f"{mask_url(settings.database_url)}: at revision {current}")


@db.command("current")
@click.pass_obj
def db_current(settings: Settings) -> None:
    """Print the schema revision of the database (``none`` when empty) and the newest known."""
    current = db_api.current_revision(settings.database_url)
    head = db_api.head_revision()
    state = "up to date" if current == head else f"newest is {head}"
    click.echo(f"{current or 'none'} ({state})")


# -- recorder import


@main.command("import")
@click.argument("file", type=click.File("rb"), metavar="FILE|-")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=importer.DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Envelopes per transaction.",
)
@click.pass_obj
def import_command(settings: Settings, file: BinaryIO, batch_size: int) -> None:
    """Record the envelopes in FILE (JSON Lines; - reads stdin).

    Each line's exact text is stored. Envelopes already recorded (same
    envelope_id, or a retry with a known event_id) count as duplicates. A
    malformed line is reported as `line N: reason` and skipped; the others
    are still recorded. Exit status 1 if any line was rejected.

    The embedded SQLite database is created and migrated on first use;
    PostgreSQL needs `recorder db upgrade` first.
    """

    def on_error(line_no: int, reason: str) -> None:
        click.echo(f"line {line_no}: {reason}", err=True)

    with (
        open_engine(settings) as engine,
        SQLEventBuffer(engine, max_envelope_bytes=settings.max_envelope_bytes) as buffer,
    ):
        size = _file_size(file)
        if not stderr_is_terminal():
            report = importer.import_envelopes(
                buffer, file, batch_size=batch_size, on_error=on_error
            )
        elif size is not None:
            with click.progressbar(length=size, label="importing", file=sys.stderr) as bar:
                report = importer.import_envelopes(
                    buffer, file, batch_size=batch_size, on_progress=bar.update, on_error=on_error
                )
        else:
            # A pipe has no size: count lines instead.
            with click.progressbar(file, label="importing", file=sys.stderr) as lines:
                report = importer.import_envelopes(
                    buffer, lines, batch_size=batch_size, on_error=on_error
                )
    click.echo(report.summary())
    if report.rejected:
        sys.exit(EXIT_ERROR)


def _file_size(file: BinaryIO) -> int | None:
    try:
        status = os.fstat(file.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) else None


# -- recorder query


def _time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """Click callback: an ISO date or date-time (UTC unless offset), or a duration ago (7d)."""
    if value is None:
        return None
    try:
        return parse_time(value)
    except InvalidTimeSpec as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@main.command("query")
@click.option("--team", help="Team id (T...).")
@click.option("--channel", help="Channel id (C...).")
@click.option("--user", help="User id (U...).")
@click.option("--type", "envelope_type", help="Envelope type: events_api, slash_commands, ...")
@click.option("--event-type", help="Event type, slash command, or interactive payload type.")
@click.option(
    "--since",
    callback=_time_option,
    metavar="TIME",
    help="Received at or after: 2026-05-01, ISO time, 7d.",
)
@click.option(
    "--until",
    callback=_time_option,
    metavar="TIME",
    help="Received before: 2026-05-02, ISO time, 24h.",
)
@click.option("--limit", type=click.IntRange(min=0), help="At most this many envelopes.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(audit.FORMATS),
    default="table",
    show_default=True,
    help="jsonl prints each envelope exactly as received.",
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
    """Print recorded envelopes, oldest first, streaming (constant memory)."""
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
    with open_engine(settings) as engine:
        audit.export(audit.query_envelopes(engine, spec), fmt, out)
        out.flush()
