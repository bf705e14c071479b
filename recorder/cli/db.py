"""``recorder db ...``: schema migrations and least-privilege grants."""

from __future__ import annotations

import click

from recorder import db as db_api
from recorder import roles
from recorder.cli.storage import open_engine, require_existing_database
from recorder.engine import mask_url
from recorder.settings import Settings


@click.group("db")
def db_group() -> None:
    """Schema migrations."""


def _known_revision(ctx: click.Context, param: click.Parameter, value: str) -> str:
    known = db_api.revisions()
    if value != "head" and value not in known:
        raise click.BadParameter(
            f"{value!r} is not a revision; use head or one of {', '.join(known)}", ctx, param
        )
    return value


@db_group.command("upgrade")
@click.option(
    "--revision",
    default="head",
    show_default=True,
    callback=_known_revision,
    help="Target revision.",
)
@click.pass_obj
def db_upgrade(settings: Settings, revision: str) -> None:
    """Create or upgrade the schema (idempotent); print the revision.

    \b
    Example:
      recorder --database-url postgresql://owner@db.internal/recorder db upgrade
    """
    db_api.upgrade(settings.database_url, revision)
    current = db_api.current_revision(settings.database_url)
    click.echo(f"{mask_url(settings.database_url)}: at revision {current}")


@db_group.command("current")
@click.pass_obj
def db_current(settings: Settings) -> None:
    """Print the schema revision of the database (``none`` when empty) and the newest known.

    \b
    Example:
      recorder db current
    """
    require_existing_database(settings)
    current = db_api.current_revision(settings.database_url)
    head = db_api.head_revision()
    state = "up to date" if current == head else f"newest is {head}"
    click.echo(f"{current or 'none'} ({state})")


@db_group.command("grant")
@click.option("--writer", metavar="ROLE", help="The bots' role: insert and processing state only.")
@click.option("--reader", metavar="ROLE", help="Auditors' role: select only.")
@click.option("--pruner", metavar="ROLE", help="`recorder prune`'s role: logged deletions only.")
@click.option("--sealer", metavar="ROLE", help="`recorder seal`'s role: append to the chain.")
@click.option(
    "--eraser", metavar="ROLE", help="`recorder erase`'s role: the erasure functions only."
)
@click.option("--schema", default="public", show_default=True, help="Schema of the tables.")
@click.option("--print-sql", is_flag=True, help="Print the SQL instead of running it.")
@click.pass_obj
def db_grant(
    settings: Settings,
    writer: str | None,
    reader: str | None,
    pruner: str | None,
    sealer: str | None,
    eraser: str | None,
    schema: str,
    print_sql: bool,
) -> None:
    """Give existing PostgreSQL roles least privilege on the recorder's tables.

    Run as the tables' owner, after `recorder db upgrade`. Each named role
    first loses every privilege on the recorder's tables, then gets its own,
    so running it again is harmless. Create the roles (with their passwords)
    yourself first.

    \b
    Example:
      recorder db grant --writer recorder_bot --reader auditor --print-sql
    """
    names = roles.RoleNames(
        writer=writer, reader=reader, pruner=pruner, sealer=sealer, eraser=eraser
    )
    if print_sql:
        click.echo(roles.render_sql(roles.grant_statements(names, schema=schema)), nl=False)
        return
    with open_engine(settings, migrate_sqlite=False) as engine:
        ran = roles.grant(engine, names, schema=schema)
    granted = ", ".join(f"{part} {name}" for part, name in names.assigned().items())
    statements = sum(1 for s in ran if not s.startswith("--"))
    click.echo(f"granted {granted} ({statements} statements)")
