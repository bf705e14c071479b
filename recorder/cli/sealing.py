"""``recorder seal`` and ``recorder verify``: tamper evidence over the stored envelopes."""

from __future__ import annotations

import datetime as dt
import json
import sys

import click

from recorder import seal
from recorder.cli.errors import EXIT_ERROR
from recorder.cli.storage import open_engine
from recorder.settings import Settings


@click.command("seal")
@click.option(
    "--margin",
    "margin_seconds",
    type=click.FloatRange(min=0),
    default=seal.DEFAULT_MARGIN.total_seconds(),
    show_default=True,
    metavar="SECONDS",
    help="Seal envelopes received at least this long ago (rows still being written wait).",
)
@click.option(
    "--block-size",
    type=click.IntRange(1, seal.MAX_BLOCK_SIZE),
    default=seal.DEFAULT_BLOCK_SIZE,
    show_default=True,
    help="Envelopes per sealed block.",
)
@click.option(
    "--adopt-late",
    is_flag=True,
    help="Also seal rows `recorder verify` reports as inserted, once you know they are genuine.",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.pass_obj
def seal_command(
    settings: Settings, margin_seconds: float, block_size: int, adopt_late: bool, fmt: str
) -> None:
    """Append sealed blocks to the hash chain over the stored envelopes.

    Incremental and safe while bots write; schedule it (every few minutes)
    and publish the printed digest somewhere the database's administrators
    cannot rewrite, for `recorder verify --anchor`.
    """
    with open_engine(settings) as engine:
        report = seal.seal(
            engine,
            margin=dt.timedelta(seconds=margin_seconds),
            block_size=block_size,
            adopt_late=adopt_late,
        )
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "sealed": report.sealed,
                    "blocks": [seal.block_description(b) for b in report.blocks],
                    "latest": seal.block_description(report.latest) if report.latest else None,
                }
            )
        )
    else:
        click.echo(report.summary())


@click.command("verify")
@click.option(
    "--anchor",
    "anchors",
    multiple=True,
    metavar="DIGEST",
    help="A digest published earlier; it must still be in the chain (repeatable).",
)
@click.option(
    "--latest",
    is_flag=True,
    help="Print only the latest block digest (after a passing verification), for anchoring.",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.pass_obj
def verify_command(settings: Settings, anchors: tuple[str, ...], latest: bool, fmt: str) -> None:
    """Recompute the seal chain and check every envelope against it.

    Names every envelope modified, deleted other than by a logged prune, or
    inserted into a sealed range; exit status 1 if anything was found.
    """
    with open_engine(settings, must_exist=True) as engine:
        report = seal.verify(engine, anchors=anchors)
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "ok": report.ok,
                    "blocks": report.blocks,
                    "sealed": report.sealed,
                    "pruned": report.pruned,
                    "unsealed": report.unsealed,
                    "latest_digest": report.latest_digest,
                    "findings": [
                        {
                            "kind": f.kind,
                            "envelope_id": f.envelope_id,
                            "block_no": f.block_no,
                            "detail": f.detail,
                        }
                        for f in report.findings
                    ],
                }
            )
        )
    elif latest and report.ok:
        click.echo(report.latest_digest or "none")
    else:
        for line in seal.verify_lines(report):
            click.echo(line)
    if not report.ok:
        if latest and fmt != "json":
            click.echo(f"verification failed: {len(report.findings)} problems", err=True)
        sys.exit(EXIT_ERROR)
