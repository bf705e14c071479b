"""``recorder seal`` and ``recorder verify``: tamper evidence over the stored envelopes."""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any, TextIO

import click
from sqlalchemy.engine import Engine

from recorder import seal, verify
from recorder.archive.verify import ArchiveVerifyReport, verify_archive
from recorder.cli.errors import EXIT_ERROR
from recorder.cli.options import YEAR_SECONDS, Seconds, anchor_digest
from recorder.cli.storage import open_engine
from recorder.settings import Settings
from recorder.wording import counted


@click.command("seal")
@click.option(
    "--margin",
    "margin_seconds",
    type=Seconds(YEAR_SECONDS),
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
    "adopt_ids",
    multiple=True,
    metavar="ENVELOPE_ID",
    help="Also seal this row `recorder verify` reports as INSERTED behind the sealed range, "
    "once you know it is genuine (repeatable).",
)
@click.option(
    "--adopt-late-from",
    "adopt_file",
    type=click.File("r"),
    metavar="FILE",
    help="Adopt the envelope ids listed in FILE, one per line (`-` for stdin).",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.pass_obj
def seal_command(
    settings: Settings,
    margin_seconds: float,
    block_size: int,
    adopt_ids: tuple[str, ...],
    adopt_file: TextIO | None,
    fmt: str,
) -> None:
    """Append sealed blocks to the hash chain over the stored envelopes.

    Incremental and safe while bots write; schedule it (every few minutes)
    and publish the printed digest somewhere the database's administrators
    cannot rewrite, for `recorder verify --anchor`. A row dated inside the
    range already sealed is never sealed unless named with --adopt-late.

    \b
    Example:
      recorder seal --format json
    """
    adopt = list(adopt_ids)
    if adopt_file is not None:
        adopt.extend(line.strip() for line in adopt_file if line.strip())
    with open_engine(settings, must_exist=True) as engine:
        report = seal.seal(
            engine,
            margin=dt.timedelta(seconds=margin_seconds),
            block_size=block_size,
            adopt_late=adopt,
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
    callback=anchor_digest,
    metavar="DIGEST",
    help="A digest published earlier; it must still be in the chain (repeatable).",
)
@click.option(
    "--latest",
    is_flag=True,
    help="Print only the latest block digest (after a passing verification), for anchoring.",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option(
    "--archive",
    "archive_dir",
    metavar="DIR",
    help="Also check the archive in DIR: every file as the manifest recorded it, every "
    "envelope an archiving prune removed present with its sealed digest.",
)
@click.pass_obj
def verify_command(
    settings: Settings, anchors: tuple[str, ...], latest: bool, fmt: str, archive_dir: str | None
) -> None:
    """Recompute the seal chain and check every envelope against it.

    Names every envelope modified, deleted other than by a logged prune, or
    inserted into a sealed range; with --archive DIR, every archive file
    missing, altered or unknown to the manifest, and every archived envelope
    whose text does not match its digest or that is missing. Exit status 1
    if anything was found.

    Example: recorder verify --archive /srv/recorder-archive
    """
    archived = None
    with open_engine(settings, must_exist=True) as engine:
        report = verify.verify(engine, anchors=anchors)
        if archive_dir is not None:
            archived = _verify_archive(engine, archive_dir)
    failed = not report.ok or (archived is not None and not archived.ok)
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "ok": report.ok,
                    "blocks": report.blocks,
                    "sealed": report.sealed,
                    "pruned": report.pruned,
                    "erased": report.erased,
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
                    **({} if archived is None else {"archive": _archive_json(archived)}),
                }
            )
        )
    elif latest and not failed:
        click.echo(report.latest_digest or "none")
    else:
        for line in verify.verify_lines(report):
            click.echo(line)
        if archived is not None:
            for finding in archived.findings:
                click.echo(finding.line())
            click.echo(archived.summary())
    if failed:
        if latest and fmt != "json":
            problems = len(report.findings) + (len(archived.findings) if archived else 0)
            click.echo(f"verification failed: {counted(problems, 'problem')}", err=True)
        sys.exit(EXIT_ERROR)


def _verify_archive(engine: Engine, directory: str) -> ArchiveVerifyReport:
    return verify_archive(engine, directory)


def _archive_json(report: ArchiveVerifyReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "archive_id": report.archive_id,
        "files": report.files,
        "envelopes": report.envelopes,
        "pruned": report.pruned,
        "still_live": report.still_live,
        "findings": [
            {"kind": f.kind, "subject": f.subject, "detail": f.detail} for f in report.findings
        ],
    }
