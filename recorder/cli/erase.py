"""``recorder erase``: the right to erasure, thin over :mod:`recorder.erasure`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from recorder import erasure
from recorder.cli.storage import open_engine
from recorder.erasure_spool import plan_spool
from recorder.errors import ConfigurationError
from recorder.settings import Settings


@click.command("erase")
@click.option("--user", "user_id", metavar="USER_ID", help="The Slack user (U... or W...).")
@click.option("--reason", help="Why: the request's reference; stored with the erasure.")
@click.option("--team", "team_id", metavar="TEAM_ID", help="Only envelopes of this team.")
@click.option("--actor", help="Who asked for it (default: the OS user).")
@click.option(
    "--subjects",
    type=click.Choice(erasure.SUBJECT_ACTIONS),
    default="erase",
    show_default=True,
    help="The user's own envelopes: erase them (tombstones), or leave them.",
)
@click.option(
    "--mentions",
    type=click.Choice(erasure.MENTION_ACTIONS),
    default="scrub",
    show_default=True,
    help="Envelopes that mention the user: replace the mentions, erase them whole, or leave them.",
)
@click.option("--dry-run", is_flag=True, help="Count per kind and channel; change nothing.")
@click.option(
    "--resume",
    is_flag=True,
    help="Finish interrupted erasures and envelopes deferred by holds since released.",
)
@click.option(
    "--spool",
    "spool_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also erase in this spool file (the listener's --spool).",
)
@click.option(
    "--archive",
    "archive_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also erase in this archive directory (recorder prune --archive).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, erasure.MAX_BATCH_SIZE),
    default=erasure.DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Envelopes per transaction.",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.pass_obj
def erase_command(
    settings: Settings,
    user_id: str | None,
    reason: str | None,
    team_id: str | None,
    actor: str | None,
    subjects: str,
    mentions: str,
    dry_run: bool,
    resume: bool,
    spool_path: Path | None,
    archive_dir: Path | None,
    batch_size: int,
    fmt: str,
) -> None:
    """Erase one Slack user's data, keeping the audit trail verifiable.

    The user's own envelopes become tombstones (id, time, non-personal
    columns and the original's digest stay); envelopes that mention them
    have the mentions replaced. Every change is logged for `recorder verify`.
    Envelopes under a legal hold are deferred: `recorder erase --resume`
    (safe to schedule next to `recorder prune`) completes them once released.

    \b
    Example:
      recorder erase --user U0123ABCD --reason "DSR-42" --dry-run
    """
    if resume:
        if user_id or reason or dry_run:
            raise ConfigurationError("--resume takes no --user, --reason or --dry-run")
        with open_engine(settings, must_exist=True) as engine:
            result = erasure.resume(engine, batch_size=batch_size)
        _print_report(result, fmt)
        return
    if not user_id:
        raise ConfigurationError("name the user: --user U123 (or --resume)")
    if dry_run:
        with open_engine(settings, must_exist=True) as engine:
            found = erasure.plan(
                engine, user_id, team_id=team_id, subjects=subjects, mentions=mentions
            )
            spooled = (
                plan_spool(
                    spool_path, user_id, team_id=team_id, subjects=subjects, mentions=mentions
                )
                if spool_path
                else None
            )
        if fmt == "json":
            click.echo(
                json.dumps(
                    {
                        "user_id": user_id,
                        "dry_run": True,
                        "rows": [
                            {
                                "kind": r.kind,
                                "channel_id": r.channel_id,
                                "envelopes": r.envelopes,
                                "held": r.held,
                            }
                            for r in found.rows
                        ],
                        "spooled": spooled,
                    }
                )
            )
        else:
            for line in found.lines():
                click.echo(line)
            if spooled is not None:
                click.echo(f"spool {spool_path}: would change {spooled} envelopes")
        return
    if not reason or not reason.strip():
        raise ConfigurationError("give the reason: --reason TEXT (the request's reference)")
    with open_engine(settings, must_exist=True) as engine:
        result = erasure.erase(
            engine,
            user_id,
            reason=reason,
            team_id=team_id,
            actor=actor,
            subjects=subjects,
            mentions=mentions,
            batch_size=batch_size,
            spool=spool_path,
            archive=archive_dir,
        )
    _print_report(result, fmt)


def _print_report(result: erasure.ErasureReport, fmt: str) -> None:
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "erasure_ids": result.erasure_ids,
                    "status": result.status,
                    "erased": result.erased,
                    "scrubbed": result.scrubbed,
                    "deferred": result.deferred,
                    "deferred_by_hold": result.deferred_by_hold,
                    "gone": result.gone,
                    "spooled": result.spooled,
                    "archived": result.archived,
                    "archived_held": result.archived_held,
                }
            )
        )
    else:
        click.echo(result.summary())
