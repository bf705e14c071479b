"""The ``recorder`` group itself: global options and the settings every subcommand receives."""

from __future__ import annotations

import logging
import sys

import click
from click.core import ParameterSource

from recorder.cli.errors import RecorderContext, one_line_errors
from recorder.masking import protect_handlers
from recorder.settings import Settings


class RecorderGroup(click.Group):
    """A click group whose errors are one line on stderr (see :mod:`recorder.cli.errors`)."""

    context_class = RecorderContext

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # The group's own options are parsed before the root context is
        # entered, so their mistakes need the handler here too.
        with one_line_errors(ctx):
            return super().parse_args(ctx, args)


@click.group(
    cls=RecorderGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "RECORDER"},
)
@click.option(
    "--database-url",
    show_envvar=True,
    metavar="URL",
    help="postgresql://user:pass@host/db or sqlite:///path  [default: sqlite:///recorder.db]",
)
@click.option("-v", "--verbose", is_flag=True, help="Log what the recorder does, on stderr.")
@click.version_option(package_name="envelope-recorder", prog_name="recorder")
@click.pass_context
def main(ctx: click.Context, database_url: str | None, verbose: bool) -> None:
    """SQL-backed audit recorder for Slack Socket Mode envelopes."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        return
    if verbose:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
        )
        protect_handlers()
    if ctx.get_parameter_source("database_url") is ParameterSource.ENVIRONMENT:
        # Let Settings read the variable itself, so its errors name the variable.
        database_url = None
    ctx.obj = Settings.load(database_url=database_url, verbose=verbose)
