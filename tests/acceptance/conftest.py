"""Running the ``recorder`` command in a subprocess, as users run it: shared by every CLI test.

Import the helpers with ``from tests.acceptance.conftest import ...``. The
child's environment never inherits ``RECORDER_*`` or ``SLACK_APP_TOKEN`` from
the test run, so only what a test sets reaches the command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import AnyStr

CONSOLE_SCRIPT = Path(sys.executable).with_name("recorder")
TIMEOUT_SECONDS = 120


def clean_env(url: str | None = None, **extra: str) -> dict[str, str]:
    """This process's environment without the recorder's and Slack's variables, plus ``extra``.

    ``url``, when given, becomes ``RECORDER_DATABASE_URL``.
    """
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RECORDER_", "SLACK_APP_TOKEN"))
    }
    if url is not None:
        env["RECORDER_DATABASE_URL"] = url
    env.update(extra)
    return env


def command(*args: str, script: bool = False) -> list[str]:
    """``python -m recorder ARGS``, or the installed console script with ``script``."""
    prefix = [str(CONSOLE_SCRIPT)] if script else [sys.executable, "-m", "recorder"]
    return [*prefix, *args]


def run_recorder(
    url: str | None,
    *args: str,
    stdin: bytes | None = None,
    script: bool = False,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``recorder ARGS`` with ``RECORDER_DATABASE_URL=url`` (when given); bytes out."""
    environ = clean_env(url, **(env or {}))
    return subprocess.run(
        command(*args, script=script),
        input=stdin,
        capture_output=True,
        env=environ,
        cwd=cwd,
        timeout=TIMEOUT_SECONDS,
    )


def run_text(
    url: str | None, *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """:func:`run_recorder`, with stdout and stderr decoded as UTF-8."""
    result = run_recorder(url, *args, cwd=cwd, env=env)
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


def ok(url: str | None, *args: str, cwd: Path | None = None) -> str:
    """Run the command, assert it succeeded without a traceback, return its stdout."""
    result = run_text(url, *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def _text(value: AnyStr) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def assert_one_line_error(result: subprocess.CompletedProcess[AnyStr], status: int) -> str:
    """Assert the command failed with ``status`` and one ``error:`` line on stderr; return it."""
    stderr = _text(result.stderr)
    assert result.returncode == status, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]
