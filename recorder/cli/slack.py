"""``recorder listen`` and ``recorder demo`` (the slack extra, imported when run)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from recorder.cli.errors import EXIT_ERROR
from recorder.engine import DEFAULT_DATABASE_URL, database_url
from recorder.settings import (
    DEFAULT_ON_STORAGE_ERROR,
    DEFAULT_SPOOL_PATH,
    ENV_DATABASE_URL,
    ENV_ON_STORAGE_ERROR,
    ENV_SPOOL_PATH,
    STORAGE_ERROR_POLICIES,
    OnStorageError,
    Settings,
)


@click.command("listen")
@click.option(
    "--app-token",
    envvar="SLACK_APP_TOKEN",
    show_envvar=True,
    metavar="XAPP",
    help="The app-level token (xapp-...) of the archiving app.",
)
@click.option(
    "--on-storage-error",
    type=click.Choice(STORAGE_ERROR_POLICIES),
    help="When the database does not answer: spool locally and ack, leave unacked, or stop. "
    f"[env var: {ENV_ON_STORAGE_ERROR}; default: {DEFAULT_ON_STORAGE_ERROR}]",
)
@click.option(
    "--spool-path",
    type=click.Path(dir_okay=False),
    help="Local SQLite spool for envelopes received while the database is away. "
    f"[env var: {ENV_SPOOL_PATH}; default: {DEFAULT_SPOOL_PATH}]",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics on this port (the metrics extra).",
)
@click.option("--slack-api-url", hidden=True, help="Web API base URL (tests, simulators).")
@click.pass_obj
def listen_command(
    settings: Settings,
    app_token: str | None,
    on_storage_error: OnStorageError | None,
    spool_path: str | None,
    metrics_port: int | None,
    slack_api_url: str | None,
) -> None:
    """Record every envelope a Slack app receives, until Ctrl-C or SIGTERM.

    For an app dedicated to archiving: each envelope is stored before it is
    acked, and nothing else is done with it.

    \b
    Example:
      SLACK_APP_TOKEN=xapp-... recorder listen --metrics-port 9108
    """
    from recorder.slack.archive import listen

    stats = listen(
        settings.database_url,
        app_token,
        # The option wins, else the group's Settings (RECORDER_* or the default).
        on_storage_error=on_storage_error or settings.on_storage_error,
        spool_path=spool_path or settings.spool_path,
        api_url=slack_api_url,
        metrics_port=metrics_port,
        on_ready=lambda: click.echo(
            f"connected; recording into {settings.masked_database_url}; stop with Ctrl-C",
            err=True,
        ),
    )
    click.echo(
        f"stopped: {stats.received} frames, {stats.outcomes['new']} recorded, "
        f"{stats.outcomes['spooled']} spooled, {stats.outcomes['duplicate']} duplicates",
        err=True,
    )


@click.command("demo")
@click.option(
    "--http",
    "over_http",
    is_flag=True,
    help="Play signed HTTP requests (Events API, commands, actions, with Slack's retries) "
    "into a slack_bolt app with RecorderMiddleware, instead of Socket Mode.",
)
@click.pass_obj
def demo_command(settings: Settings, over_http: bool) -> None:
    """Play a simulated Slack stream into the database and show what was recorded.

    \b
    Example:
      recorder demo && recorder query --type slash_commands
    """
    if over_http:
        from recorder.slack.http_demo import render_http, run_http_demo

        click.echo("starting a slack_bolt app over local HTTP and a fake Slack that signs ...")
        report = run_http_demo(settings.database_url)
        for line in render_http(report, settings.masked_database_url):
            click.echo(line)
        return
    from recorder.slack.demo import render, run_demo

    click.echo("starting a local Socket Mode simulator and a recording bot ...")
    result = run_demo(settings.database_url)
    for line in render(result, settings.masked_database_url, follow_up_command(settings)):
        click.echo(line)
    if not result.exactly_once:
        sys.exit(EXIT_ERROR)


def follow_up_command(settings: Settings) -> str:
    """How to run ``recorder`` again as this process was run, for the suggested commands.

    ``.venv/bin/recorder`` stays ``.venv/bin/recorder`` (the README's set-up,
    no venv activated); the database is repeated when it was not the default
    and has no password to print.
    """
    program = Path(sys.argv[0])
    command = str(program) if program.name == "recorder" else f"{sys.executable} -m recorder"
    url = settings.database_url
    explicit = url != DEFAULT_DATABASE_URL and os.environ.get(ENV_DATABASE_URL) != url
    if explicit and database_url(url).password is None:
        command += f" --database-url {shlex.quote(url)}"
    return command
