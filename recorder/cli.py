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
import itertools
import json
import logging
import os
import re
import stat
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO, NoReturn

import click
from click.core import ParameterSource
from sqlalchemy.engine import Engine

from recorder import audit, importer, report, retention, stats
from recorder import db as db_api
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine, database_url, mask_url
from recorder.errors import ConfigurationError, RecorderError, StorageUnavailable
from recorder.masking import mask_secrets, protect_handlers
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
    text = mask_secrets(redact(text))
    # The engine's parse: the password runs to the last "@" of the authority.
    password = database_url(settings.database_url).password if settings is not None else None
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
        protect_handlers()
    if ctx.get_parameter_source("database_url") is ParameterSource.ENVIRONMENT:
        # Let Settings read the variable itself, so its errors name the variable.
        database_url = None
    ctx.obj = Settings.load(database_url=database_url, verbose=verbose)


# -- helpers shared by subcommands


@contextmanager
def open_engine(
    settings: Settings, *, migrate_sqlite: bool = True, must_exist: bool = False
) -> Iterator[Engine]:
    """An engine for the configured database, disposed of afterwards.

    The embedded SQLite database is brought to the current schema on first
    use (``migrate_sqlite``), so ``recorder import`` works on a fresh machine
    with no set-up. PostgreSQL is never migrated implicitly: run
    ``recorder db upgrade`` (a missing schema is a SchemaMissing error saying so).
    Commands that only read pass ``must_exist``: a mistyped SQLite path is
    then an error instead of a new, empty database.
    """
    if must_exist:
        _require_sqlite_file(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        if migrate_sqlite and engine.dialect.name == "sqlite":
            ensure_sqlite_schema(engine)
        yield engine
    finally:
        engine.dispose()


def _require_sqlite_file(url: str) -> None:
    parsed = database_url(url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return
    if not Path(path).exists():
        raise ConfigurationError(
            f"no database at {path}: record something first (recorder import, recorder demo), "
            "or check --database-url / RECORDER_DATABASE_URL"
        )


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


# `recorder db grant`, `recorder seal`, `recorder verify` live in their own module.
from recorder import security_cli  # noqa: E402, F401

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
    with open_engine(settings, must_exist=True) as engine:
        rows = iter(audit.query_envelopes(engine, spec))
        # Reach the database before writing anything, so that a failure
        # prints its error alone rather than after a table header.
        first = next(rows, None)
        audit.export(itertools.chain(() if first is None else (first,), rows), fmt, out)
        out.flush()


# -- recorder retention ..., recorder hold ..., recorder prune


def _actor_option(func: Any) -> Any:
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


def _with_type_match(func: Any) -> Any:
    return _match_options(func, types=True)


def _without_type_match(func: Any) -> Any:
    return _match_options(func, types=False)


def _format_keep(keep: dt.timedelta) -> str:
    seconds = int(keep.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _describe_match(fields: dict[str, str | None]) -> str:
    shown = [f"{k}={v}" for k, v in fields.items() if v is not None]
    return ", ".join(shown) if shown else "everything"


@main.group("retention")
def retention_group() -> None:
    """Retention policies: how long matching envelopes are kept."""


@retention_group.command("set")
@click.argument("name")
@click.option(
    "--keep", required=True, metavar="PERIOD", help="90d, 12h, 30m; a plain number is days."
)
@_with_type_match
@click.option(
    "--priority",
    type=int,
    default=0,
    show_default=True,
    help="Among matching policies the highest priority decides (ties: first name).",
)
@_actor_option
@click.pass_obj
def retention_set(
    settings: Settings,
    name: str,
    keep: str,
    team: str | None,
    channel: str | None,
    user: str | None,
    envelope_type: str | None,
    event_type: str | None,
    priority: int,
    actor: str | None,
) -> None:
    """Create or replace the retention policy NAME."""
    period = retention.parse_keep(keep)
    with open_engine(settings) as engine:
        existed = any(p.name == name for p in retention.list_policies(engine))
        policy = retention.set_policy(
            engine,
            name,
            keep=period,
            team_id=team,
            channel_id=channel,
            user_id=user,
            envelope_type=envelope_type,
            event_type=event_type,
            priority=priority,
            actor=actor,
        )
    click.echo(
        f"{'updated' if existed else 'created'} policy {policy.name}: keep "
        f"{_format_keep(policy.keep)} of {_describe_match(policy.match())}, "
        f"priority {policy.priority}"
    )


@retention_group.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_obj
def retention_list(settings: Settings, fmt: str) -> None:
    """List policies, the one that decides first."""
    with open_engine(settings, must_exist=True) as engine:
        policies = retention.list_policies(engine)
    if fmt == "json":
        click.echo(json.dumps([p.describe() for p in policies], indent=1))
        return
    if not policies:
        click.echo("no retention policies: every envelope is kept")
        return
    for p in policies:
        click.echo(
            f"{p.name}\tkeep {_format_keep(p.keep)}\tpriority {p.priority}\t"
            f"{_describe_match(p.match())}"
        )


@retention_group.command("remove")
@click.argument("name")
@_actor_option
@click.pass_obj
def retention_remove(settings: Settings, name: str, actor: str | None) -> None:
    """Remove the retention policy NAME."""
    with open_engine(settings) as engine:
        retention.remove_policy(engine, name, actor=actor)
    click.echo(f"removed policy {name}")


@retention_group.command("log")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.pass_obj
def retention_log(settings: Settings, limit: int) -> None:
    """Show the latest changes to policies and holds, and the latest prune runs."""
    with open_engine(settings, must_exist=True) as engine:
        changes = retention.read_change_log(engine, limit=limit)
        runs = retention.read_prune_log(engine, limit=limit)
    click.echo("changes:")
    for c in changes:
        click.echo(
            f"  {c.at.isoformat()}  {c.actor}  {c.action} {c.object_kind} {c.object_name}  "
            f"{json.dumps(c.details, sort_keys=True)}"
        )
    click.echo("prune runs:")
    for r in runs:
        click.echo(
            f"  #{r.id} {r.started_at.isoformat()}  {r.status}{' (dry run)' if r.dry_run else ''}"
            f"  deleted {r.deleted_total}  held {r.held_count}  skipped {r.skipped_count}"
            f"  by {r.actor}@{r.host}{'  error: ' + r.error if r.error else ''}"
        )


@main.group("hold")
def hold_group() -> None:
    """Legal holds: envelopes a hold covers are never pruned."""


@hold_group.command("add")
@click.argument("name")
@click.option("--reason", required=True, help="Why (a case or ticket reference).")
@_without_type_match
@click.option(
    "--since", callback=_time_option, metavar="TIME", help="Hold envelopes received at or after."
)
@click.option(
    "--until", callback=_time_option, metavar="TIME", help="Hold envelopes received before."
)
@_actor_option
@click.pass_obj
def hold_add(
    settings: Settings,
    name: str,
    reason: str,
    team: str | None,
    channel: str | None,
    user: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    actor: str | None,
) -> None:
    """Place the legal hold NAME."""
    with open_engine(settings) as engine:
        hold = retention.add_hold(
            engine,
            name,
            reason=reason,
            team_id=team,
            channel_id=channel,
            user_id=user,
            since=since,
            until=until,
            actor=actor,
        )
    click.echo(f"hold {hold.name} placed by {hold.created_by}: {_describe_hold(hold)}")


def _describe_hold(hold: retention.LegalHold) -> str:
    text = _describe_match(
        {"team_id": hold.team_id, "channel_id": hold.channel_id, "user_id": hold.user_id}
    )
    if hold.since:
        text += f" from {hold.since.isoformat()}"
    if hold.until:
        text += f" before {hold.until.isoformat()}"
    return text


@hold_group.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_obj
def hold_list(settings: Settings, fmt: str) -> None:
    """List legal holds, released ones included (with their release time)."""
    with open_engine(settings, must_exist=True) as engine:
        holds = retention.list_holds(engine)
    if fmt == "json":
        click.echo(json.dumps([h.describe() for h in holds], indent=1))
        return
    if not holds:
        click.echo("no legal holds")
    for h in holds:
        state = (
            "in force"
            if h.in_force
            else f"released {h.released_at.isoformat() if h.released_at else ''} by {h.released_by}"
        )
        click.echo(f"{h.name}\t{state}\t{_describe_hold(h)}\t{h.reason}")


@hold_group.command("release")
@click.argument("name")
@_actor_option
@click.pass_obj
def hold_release(settings: Settings, name: str, actor: str | None) -> None:
    """Release the legal hold NAME (its row stays, with the release time)."""
    with open_engine(settings) as engine:
        hold = retention.release_hold(engine, name, actor=actor)
    click.echo(
        f"released hold {hold.name} at {hold.released_at.isoformat() if hold.released_at else ''}"
    )


@main.command("prune")
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, retention.MAX_BATCH_SIZE),
    default=retention.DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Envelopes per transaction.",
)
@click.option(
    "--max-seconds",
    type=click.FloatRange(min=0, min_open=True),
    help="Start no new batch after this long; the next run carries on.",
)
@_actor_option
@click.pass_obj
def prune_command(
    settings: Settings,
    dry_run: bool,
    batch_size: int,
    max_seconds: float | None,
    actor: str | None,
) -> None:
    """Delete expired envelopes no legal hold covers, in batches.

    One run at a time: when another is in progress this one says so and
    exits with status 0, doing nothing. Every run is logged (see
    `recorder retention log`).
    """
    with open_engine(settings, must_exist=True) as engine, ExitStack() as stack:
        bar: Any = None
        shown = 0

        def on_progress(progress: retention.PruneProgress) -> None:
            nonlocal bar, shown
            if bar is None:
                bar = stack.enter_context(
                    click.progressbar(
                        length=max(progress.expected, 1), label="pruning", file=sys.stderr
                    )
                )
            bar.update(progress.deleted - shown)
            shown = progress.deleted

        result = retention.prune(
            engine,
            dry_run=dry_run,
            batch_size=batch_size,
            max_seconds=max_seconds,
            actor=actor,
            on_progress=on_progress if stderr_is_terminal() else None,
        )
    if result.locked_out:
        click.echo(f"prune run #{result.run_id}: {result.summary()}", err=True)
        return
    for name, count in result.deleted.items():
        cutoff = result.cutoffs[name].isoformat()
        click.echo(f"  {name}: {count} (received before {cutoff})")
    click.echo(f"prune run #{result.run_id}: {result.summary()}")


# -- recorder stats, recorder report


@main.command("stats")
@click.option(
    "--by",
    type=click.Choice(list(stats.DIMENSIONS)),
    default="type",
    show_default=True,
    help="Count per day by envelope type, event type, channel or user.",
)
@click.option(
    "--since",
    callback=_time_option,
    metavar="TIME",
    help="Received at or after  [default: 30 days ago].",
)
@click.option("--until", callback=_time_option, metavar="TIME", help="Received before.")
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
    """Envelopes per UTC day, by type, event type, channel or user."""
    if since is None:
        since = (until or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(days=30)
    with open_engine(settings, must_exist=True) as engine:
        rows = stats.daily_counts(engine, by=by, since=since, until=until)
    stats.write_stats(rows, fmt, sys.stdout, by=by)


@main.command("report")
@click.option(
    "--html",
    "html_path",
    required=True,
    type=click.Path(dir_okay=False, writable=True),
    metavar="FILE",
    help="Write the page here.",
)
@click.option(
    "--since",
    callback=_time_option,
    metavar="TIME",
    help="Received at or after  [default: 30 days ago].",
)
@click.option("--until", callback=_time_option, metavar="TIME", help="Received before.")
@click.pass_obj
def report_command(
    settings: Settings, html_path: str, since: dt.datetime | None, until: dt.datetime | None
) -> None:
    """Write a self-contained HTML report (inline CSS and SVG; works offline)."""
    if since is None:
        since = (until or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(days=30)
    with open_engine(settings, must_exist=True) as engine:
        data = report.write_report(engine, html_path, since=since, until=until)
    click.echo(f"wrote {html_path}: {data.envelopes} envelopes, {data.retried} retries")


# -- Slack: recorder listen, recorder demo (the slack extra)


@main.command("listen")
@click.option(
    "--app-token",
    envvar="SLACK_APP_TOKEN",
    show_envvar=True,
    metavar="XAPP",
    help="The app-level token (xapp-...) of the archiving app.",
)
@click.option(
    "--on-storage-error",
    type=click.Choice(["spool", "nack", "raise"]),
    default="spool",
    show_default=True,
    help="When the database does not answer: spool locally and ack, or leave unacked.",
)
@click.option(
    "--spool-path",
    default="recorder-spool.db",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Local SQLite spool for envelopes received while the database is away.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics on this port (the metrics extra).",
)
@click.option("--slack-api-url", hidden=True, help="Web API base URL (tests, simulators).")
@click.pass_obj
def listen_command(
    settings: Settings,
    app_token: str | None,
    on_storage_error: str,
    spool_path: str,
    metrics_port: int | None,
    slack_api_url: str | None,
) -> None:
    """Record every envelope a Slack app receives, until Ctrl-C or SIGTERM.

    For an app dedicated to archiving: each envelope is stored before it is
    acked, and nothing else is done with it.
    """
    from recorder.slack.archive import listen

    stats = listen(
        settings.database_url,
        app_token,
        on_storage_error=on_storage_error,  # type: ignore[arg-type]
        spool_path=spool_path,
        api_url=slack_api_url,
        metrics_port=metrics_port,
        on_ready=lambda: click.echo(
            f"connected; recording into {settings.masked_database_url}; stop with Ctrl-C",
            err=True,
        ),
    )
    click.echo(
        f"stopped: {stats.received} frames, {stats.outcomes['new']} recorded, "
        f"{stats.outcomes['spooled']} spooled, {stats.outcomes['duplicate']} duplicates",
        err=True,
    )


@main.command("demo")
@click.pass_obj
def demo_command(settings: Settings) -> None:
    """Play a simulated Slack stream into the database and show what was recorded."""
    from recorder.slack.demo import render, run_demo

    click.echo("starting a local Socket Mode simulator and a recording bot ...")
    result = run_demo(settings.database_url)
    for line in render(result, settings.masked_database_url):
        click.echo(line)
