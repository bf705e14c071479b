"""The ``recorder`` group itself: global options and the settings every subcommand receives."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
from click.core import ParameterSource

from recorder.cli.errors import RecorderContext, one_line_errors
from recorder.errors import ConfigurationError
from recorder.masking import protect_handlers
from recorder.settings import Settings

DATABASE_URL_HELP = (
    "postgresql://user:pass@host/db or sqlite:///path  [default: sqlite:///recorder.db]"
)


class RecorderGroup(click.Group):
    """The ``recorder`` group: one-line errors, and ``--database-url`` on every subcommand."""

    context_class = RecorderContext

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # The group's own options are parsed before the root context is
        # entered, so their mistakes need the handler here too.
        with one_line_errors(ctx):
            _refuse_non_utf8(args)
            return super().parse_args(ctx, args)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        for leaf in _leaves(cmd):
            if not any(p.name == "database_url" for p in leaf.params):
                leaf.params.append(_subcommand_database_url())
        super().add_command(cmd, name)


def _refuse_non_utf8(args: list[str]) -> None:
    """Arguments that were not UTF-8 on the command line arrive with surrogate escapes."""
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise click.UsageError(f"argument '{shown}' is not valid UTF-8") from None


def _leaves(cmd: click.Command) -> list[click.Command]:
    if isinstance(cmd, click.Group):
        return [leaf for sub in cmd.commands.values() for leaf in _leaves(sub)]
    return [cmd]


def _subcommand_database_url() -> click.Option:
    """``recorder query --database-url URL`` means ``recorder --database-url URL query``."""
    return click.Option(
        ["--database-url"],
        metavar="URL",
        expose_value=False,
        allow_from_autoenv=False,
        callback=_use_database_url,
        help="As before the subcommand: " + DATABASE_URL_HELP,
    )


def _use_database_url(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    root = ctx.find_root()
    verbose = root.obj.verbose if isinstance(root.obj, Settings) else False
    root.obj = ctx.obj = load_settings(ctx, database_url=value, verbose=verbose)


def load_settings(ctx: click.Context, **values: Any) -> Settings:
    """:meth:`Settings.load`, its mistakes being usage mistakes (exit status 2)."""
    try:
        return Settings.load(**values)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc), ctx) from exc


@click.group(
    cls=RecorderGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "RECORDER"},
)
@click.option("--database-url", show_envvar=True, metavar="URL", help=DATABASE_URL_HELP)
@click.option("-v", "--verbose", is_flag=True, help="Log what the recorder does, on stderr.")
@click.version_option(package_name="envelope-recorder", prog_name="recorder")
@click.pass_context
def main(ctx: click.Context, database_url: str | None, verbose: bool) -> None:
    """SQL-backed audit recorder for Slack Socket Mode envelopes.

    \b
    Example:
      recorder demo && recorder query --type slash_commands
    """
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
    ctx.obj = load_settings(ctx, database_url=database_url, verbose=verbose)
