"""``recorder retention ...``, ``recorder hold ...`` and ``recorder prune``."""

from __future__ import annotations

import datetime as dt
import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from recorder import retention
from recorder.cli.options import (
    INT32,
    YEAR_SECONDS,
    Seconds,
    actor_option,
    keep_option,
    time_option,
    with_type_match,
    without_type_match,
)
from recorder.cli.output import table_lines
from recorder.cli.storage import open_engine, stderr_is_terminal
from recorder.settings import Settings


def _format_keep(keep: dt.timedelta) -> str:
    seconds = int(keep.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _describe_match(fields: dict[str, str | None]) -> str:
    shown = [f"{k}={v}" for k, v in fields.items() if v is not None]
    return ", ".join(shown) if shown else "everything"


@click.group("retention")
def retention_group() -> None:
    """Retention policies: how long matching envelopes are kept."""


@retention_group.command("set")
@click.argument("name")
@click.option(
    "--keep",
    required=True,
    metavar="PERIOD",
    callback=keep_option,
    help="7y, 12w, 90d, 12h, 30m; a plain number is days; a year is 365 days; at most 100y.",
)
@with_type_match
@click.option(
    "--priority",
    type=INT32,
    default=0,
    show_default=True,
    help="Among matching policies the highest priority decides (ties: first name).",
)
@click.option(
    "--archive",
    "archive_dir",
    metavar="DIR",
    help="Archive what this policy expires to DIR (stored as an absolute path) before "
    "deleting it; `recorder prune` then archives it by default, and never deletes it "
    "unarchived. Needs the archive extra where prune runs.",
)
@actor_option
@click.pass_obj
def retention_set(
    settings: Settings,
    name: str,
    keep: dt.timedelta,
    team: str | None,
    channel: str | None,
    user: str | None,
    envelope_type: str | None,
    event_type: str | None,
    priority: int,
    archive_dir: str | None,
    actor: str | None,
) -> None:
    """Create or replace the retention policy NAME.

    With --archive DIR, every envelope the policy expires is written to the
    Parquet archive in DIR before it is deleted (a relative DIR is taken
    from the current directory and stored absolute). `recorder prune
    --archive OTHER` or RECORDER_ARCHIVE_DIR archive to OTHER instead; no
    prune deletes them unarchived, and the database-side prune functions
    (pg_cron) leave them alone.

    \b
    Example:
      recorder retention set dms --keep 30d --channel D0123ABCD --priority 10
      recorder retention set default --keep 90d --archive /srv/recorder-archive
    """
    period = keep
    if archive_dir is not None and archive_dir.strip():
        archive_dir = str(Path(archive_dir).expanduser().absolute())
    with open_engine(settings) as engine:
        previous = [p for p in retention.list_policies(engine) if p.name == name]
        existed = bool(previous)
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
            archive_dir=archive_dir,
            actor=actor,
        )
    click.echo(
        f"{'updated' if existed else 'created'} policy {policy.name}: keep "
        f"{_format_keep(policy.keep)} of {_describe_match(policy.match())}, "
        f"priority {policy.priority}"
        + (f", archived to {policy.archive_dir}" if policy.archive_dir else "")
    )
    was = previous[0].archive_dir if previous else None
    if was and not policy.archive_dir:
        # set replaces every field: re-running it to change --keep alone
        # drops the archive requirement, which must not pass unnoticed.
        click.echo(
            f"warning: policy {name} no longer archives what it expires (it archived to "
            f"{was}); pass --archive {was} to keep that",
            err=True,
        )


@retention_group.command("list")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_obj
def retention_list(settings: Settings, fmt: str) -> None:
    """List policies, the one that decides first.

    \b
    Example:
      recorder retention list --format json
    """
    with open_engine(settings, must_exist=True) as engine:
        policies = retention.list_policies(engine)
    if fmt == "json":
        click.echo(json.dumps([p.describe() for p in policies], indent=1))
        return
    if not policies:
        click.echo("no retention policies: every envelope is kept")
        return
    rows = [
        (
            p.name,
            _format_keep(p.keep),
            str(p.priority),
            _describe_match(p.match()),
            p.archive_dir or "-",
        )
        for p in policies
    ]
    for line in table_lines(("NAME", "KEEP", "PRIORITY", "MATCH", "ARCHIVE"), rows):
        click.echo(line)


@retention_group.command("remove")
@click.argument("name")
@actor_option
@click.pass_obj
def retention_remove(settings: Settings, name: str, actor: str | None) -> None:
    """Remove the retention policy NAME.

    \b
    Example:
      recorder retention remove dms --actor alice
    """
    with open_engine(settings) as engine:
        retention.remove_policy(engine, name, actor=actor)
    click.echo(f"removed policy {name}")


@retention_group.command("log")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.pass_obj
def retention_log(settings: Settings, limit: int) -> None:
    """Show the latest changes to policies and holds, and the latest prune runs.

    \b
    Example:
      recorder retention log --limit 10
    """
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
            f"  {'would delete' if r.dry_run else 'deleted'} {r.deleted_total}"
            f"  held {r.held_count}  skipped {r.skipped_count}"
            f"  by {r.actor}@{r.host}{'  error: ' + r.error if r.error else ''}"
        )


@click.group("hold")
def hold_group() -> None:
    """Legal holds: envelopes a hold covers are never pruned."""


@hold_group.command("add")
@click.argument("name")
@click.option("--reason", required=True, help="Why (a case or ticket reference).")
@without_type_match
@click.option(
    "--since", callback=time_option, metavar="TIME", help="Hold envelopes received at or after."
)
@click.option(
    "--until", callback=time_option, metavar="TIME", help="Hold envelopes received before."
)
@actor_option
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
    """Place the legal hold NAME.

    \b
    Example:
      recorder hold add case-1 --reason "preservation notice" --channel C0123ABCD --since 2026-01-01
    """
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
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_obj
def hold_list(settings: Settings, fmt: str) -> None:
    """List legal holds, released ones included (with their release time).

    \b
    Example:
      recorder hold list --format json
    """
    with open_engine(settings, must_exist=True) as engine:
        holds = retention.list_holds(engine)
    if fmt == "json":
        click.echo(json.dumps([h.describe() for h in holds], indent=1))
        return
    if not holds:
        click.echo("no legal holds")
        return
    rows = [
        (
            h.name,
            "in force"
            if h.in_force
            else f"released {h.released_at.isoformat() if h.released_at else ''} by {h.released_by}",
            _describe_hold(h),
            h.reason,
        )
        for h in holds
    ]
    for line in table_lines(("NAME", "STATE", "COVERS", "REASON"), rows):
        click.echo(line)


@hold_group.command("release")
@click.argument("name")
@actor_option
@click.pass_obj
def hold_release(settings: Settings, name: str, actor: str | None) -> None:
    """Release the legal hold NAME (its row stays, with the release time).

    \b
    Example:
      recorder hold release case-1 --actor legal
    """
    with open_engine(settings) as engine:
        hold = retention.release_hold(engine, name, actor=actor)
    click.echo(
        f"released hold {hold.name} at {hold.released_at.isoformat() if hold.released_at else ''}"
    )


@click.command("prune")
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
    type=Seconds(YEAR_SECONDS, zero=False),
    help="Start no new batch after this long; the next run carries on.",
)
@click.option(
    "--archive",
    "archive_dir",
    metavar="DIR",
    envvar="RECORDER_ARCHIVE_DIR",
    show_envvar=True,
    help="Write each envelope to a Parquet file in DIR (fsynced, in the manifest) before "
    "deleting it, whatever the policies say; overrides each policy's own --archive "
    "directory. Needs the archive extra.",
)
@click.option(
    "--archive-file-rows",
    type=click.IntRange(1, 10_000_000),
    default=100_000,
    show_default=True,
    help="At most this many envelopes per archive file.",
)
@click.option(
    "--archive-partition",
    type=click.Choice(["month", "day"]),
    default="month",
    show_default=True,
    help="Archive files never span two UTC months (days) of received_at.",
)
@actor_option
@click.pass_obj
def prune_command(
    settings: Settings,
    dry_run: bool,
    batch_size: int,
    max_seconds: float | None,
    archive_dir: str | None,
    archive_file_rows: int,
    archive_partition: str,
    actor: str | None,
) -> None:
    """Delete expired envelopes no legal hold covers, in batches.

    One run at a time: when another is in progress this one says so and
    exits with status 0, doing nothing. Every run is logged (see
    `recorder retention log`).

    With --archive DIR (or RECORDER_ARCHIVE_DIR), nothing is deleted before
    it is in a complete, fsynced Parquet file recorded in the archive
    manifest; a run that was interrupted is finished by the next one.
    Without either, the envelopes of a policy set with `retention set
    --archive DIR` are archived to its DIR, and only those. Precedence:
    --archive, then RECORDER_ARCHIVE_DIR, then the policy's directory. A
    policy with an archive directory is never pruned unarchived: when the
    archive cannot be written (the extra is missing) the run fails before
    deleting anything.

    Example: recorder prune --max-seconds 3000 --archive /srv/recorder-archive
    """
    from recorder.archive import ArchiveOptions

    # No directory here: each policy's own (retention set --archive), if any.
    archive = ArchiveOptions(
        archive_dir or None, file_rows=archive_file_rows, partition=archive_partition
    )
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
            archive=archive,
        )
    if result.locked_out:
        click.echo(f"prune run #{result.run_id}: {result.summary()}", err=True)
        return
    for name, count in result.deleted.items():
        cutoff = result.cutoffs[name].isoformat()
        click.echo(f"  {name}: {count} (received before {cutoff})")
    click.echo(f"prune run #{result.run_id}: {result.summary()}")
