"""``recorder spool``: inspect and resolve envelopes quarantined in a listener's spool file.

A spooled row the database refused on drain stays in the spool file with its
reason (see ``docs/slack.md``, "Quarantined rows"); these commands list it,
put it back in line for the next drain, or drop it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from recorder.errors import ConfigurationError

if TYPE_CHECKING:
    from recorder.slack.spool import Spool

SPOOL_OPTION = click.option(
    "--spool-path",
    default="recorder-spool.db",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The listener's spool file.",
)


def _open(path: str) -> Spool:
    """The spool file (the slack extra, imported only when a command runs)."""
    if not Path(path).exists():
        raise ConfigurationError(f"no spool file at {path}")
    from recorder.slack.spool import Spool

    return Spool(path)


@click.group("spool")
def spool_group() -> None:
    """The local spool: envelopes quarantined because the database refused them."""


@spool_group.command("list")
@SPOOL_OPTION
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--show-envelope", is_flag=True, help="Print each envelope's text too (JSON).")
def spool_list(spool_path: str, fmt: str, show_envelope: bool) -> None:
    """List quarantined envelopes, oldest first, with the reason.

    \b
    Example:
      recorder spool list --show-envelope
    """
    spool = _open(spool_path)
    try:
        held = spool.quarantined()
    finally:
        spool.close()
    if fmt == "json":
        for item in held:
            row = {
                "envelope_id": item.envelope_id,
                "reason": item.reason,
                "quarantined_at": item.quarantined_at.isoformat(),
                "status": item.stored.status,
                "bytes": len(item.stored.envelope_text.encode("utf-8")),
            }
            if show_envelope:
                row["envelope"] = item.stored.envelope_text
            click.echo(json.dumps(row))
        return
    if not held:
        click.echo(f"no quarantined envelopes in {spool_path}")
        return
    for item in held:
        size = len(item.stored.envelope_text.encode("utf-8"))
        click.echo(
            f"{item.envelope_id}  {item.quarantined_at:%Y-%m-%d %H:%M:%S}  "
            f"{item.stored.status}  {size:,} bytes  {item.reason}"
        )


@spool_group.command("retry")
@SPOOL_OPTION
@click.argument("envelope_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Retry every quarantined envelope.")
def spool_retry(spool_path: str, envelope_ids: tuple[str, ...], every: bool) -> None:
    """Put quarantined envelopes back in line for the next drain (after fixing the cause).

    \b
    Example:
      recorder spool retry --all
    """
    count = _resolve(spool_path, envelope_ids, every, drop=False)
    click.echo(f"{count} envelopes back in line for the next drain")


@spool_group.command("drop")
@SPOOL_OPTION
@click.argument("envelope_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Drop every quarantined envelope.")
def spool_drop(spool_path: str, envelope_ids: tuple[str, ...], every: bool) -> None:
    """Delete quarantined envelopes from the spool for good (list --show-envelope keeps a copy).

    \b
    Example:
      recorder spool drop ENVELOPE_ID
    """
    count = _resolve(spool_path, envelope_ids, every, drop=True)
    click.echo(f"{count} quarantined envelopes dropped")


def _resolve(path: str, envelope_ids: tuple[str, ...], every: bool, *, drop: bool) -> int:
    if bool(envelope_ids) == every:
        raise click.UsageError("name the envelope ids, or pass --all (not both)")
    spool = _open(path)
    try:
        ids = None if every else list(envelope_ids)
        return spool.drop(ids) if drop else spool.retry(ids)
    finally:
        spool.close()
