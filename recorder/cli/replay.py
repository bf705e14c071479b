"""``recorder replay``: run a handler again over recorded envelopes (see :mod:`recorder.replaying`)."""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import Any

import click

from recorder import audit, replaying
from recorder.audit import AuditRow, QuerySpec
from recorder.cli.errors import EXIT_ERROR
from recorder.cli.options import ROW_COUNT, actor_option, query_filters
from recorder.cli.storage import open_engine
from recorder.errors import ConfigurationError
from recorder.settings import Settings


def _handler_option(ctx: click.Context, param: click.Parameter, value: str) -> Any:
    # module:function is looked up from the working directory too, as `python -m` would.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return value, replaying.load_handler(value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@click.command("replay")
@click.option(
    "--handler",
    required=True,
    metavar="MODULE:FUNCTION",
    callback=_handler_option,
    help="Called with each stored envelope (a dict), oldest first.",
)
@query_filters
@click.option("--limit", type=ROW_COUNT, help="At most this many envelopes (over a resumed run).")
@click.option("--dry-run", is_flag=True, help="List what would be replayed; call nothing.")
@actor_option
@click.pass_obj
def replay_command(
    settings: Settings,
    handler: tuple[str, replaying.Handler],
    team: str | None,
    channel: str | None,
    user: str | None,
    envelope_type: str | None,
    event_type: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    limit: int | None,
    dry_run: bool,
    actor: str | None,
) -> None:
    """Call a handler once per matching recorded envelope, oldest first.

    The filters are `recorder query`'s. Replay only reads: the stored
    envelopes, their state and live dedupe are never changed. Every run is
    logged (replay_runs, replayed_envelopes); a run that was interrupted is
    resumed by the next replay with the same handler and filters, skipping
    what it already replayed. Exit status 1 if the handler raised for any
    envelope (each is named on stderr).

    \b
    Example:
      recorder replay --handler mybot.handlers:on_envelope --type slash_commands --since 7d
    """
    name, function = handler
    spec = QuerySpec(
        team_id=team,
        channel_id=channel,
        user_id=user,
        envelope_type=envelope_type,
        event_type=event_type,
        since=since,
        until=until,
        limit=limit,
    )

    def on_envelope(row: AuditRow, error: str | None) -> None:
        if error is not None:
            click.echo(f"failed {row.envelope_id}: {error}", err=True)

    with open_engine(settings, must_exist=True) as engine:
        report = replaying.replay(
            engine,
            function,
            spec,
            handler_name=name,
            dry_run=dry_run,
            actor=actor,
            on_envelope=on_envelope,
        )
    if dry_run:
        audit.export(report.would_replay, "table", sys.stdout.buffer)
        sys.stdout.flush()
    click.echo(report.summary())
    if report.failed:
        sys.exit(EXIT_ERROR)
