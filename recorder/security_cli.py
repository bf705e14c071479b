"""The security subcommands: ``recorder db grant``, ``recorder seal``, ``recorder verify``.

Registered on the ``recorder`` group by importing this module from
:mod:`recorder.cli`; each command is thin over :mod:`recorder.roles` and
:mod:`recorder.seal` and :mod:`recorder.verify`.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import TextIO

import click

from recorder import roles, seal, verify
from recorder.cli import EXIT_ERROR, db, main, open_engine
from recorder.settings import Settings


@db.command("grant")
@click.option("--writer", metavar="ROLE", help="The bots' role: insert and processing state only.")
@click.option("--reader", metavar="ROLE", help="Auditors' role: select only.")
@click.option("--pruner", metavar="ROLE", help="`recorder prune`'s role: logged deletions only.")
@click.option("--sealer", metavar="ROLE", help="`recorder seal`'s role: append to the chain.")
@click.option("--schema", default="public", show_default=True, help="Schema of the tables.")
@click.option("--print-sql", is_flag=True, help="Print the SQL instead of running it.")
@click.pass_obj
def db_grant(
    settings: Settings,
    writer: str | None,
    reader: str | None,
    pruner: str | None,
    sealer: str | None,
    schema: str,
    print_sql: bool,
) -> None:
    """Give existing PostgreSQL roles least privilege on the recorder's tables.

    Run as the tables' owner, after `recorder db upgrade`. Each named role
    first loses every privilege on the recorder's tables, then gets its own,
    so running it again is harmless. Create the roles (with their passwords)
    yourself first.
    """
    names = roles.RoleNames(writer=writer, reader=reader, pruner=pruner, sealer=sealer)
    if print_sql:
        click.echo(roles.render_sql(roles.grant_statements(names, schema=schema)), nl=False)
        return
    with open_engine(settings, migrate_sqlite=False) as engine:
        ran = roles.grant(engine, names, schema=schema)
    granted = ", ".join(f"{part} {name}" for part, name in names.assigned().items())
    statements = sum(1 for s in ran if not s.startswith("--"))
    click.echo(f"granted {granted} ({statements} statements)")


@main.command("seal")
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
    """
    adopt = list(adopt_ids)
    if adopt_file is not None:
        adopt.extend(line.strip() for line in adopt_file if line.strip())
    with open_engine(settings) as engine:
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


@main.command("verify")
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
        report = verify.verify(engine, anchors=anchors)
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
        for line in verify.verify_lines(report):
            click.echo(line)
    if not report.ok:
        if latest and fmt != "json":
            click.echo(f"verification failed: {len(report.findings)} problems", err=True)
        sys.exit(EXIT_ERROR)
