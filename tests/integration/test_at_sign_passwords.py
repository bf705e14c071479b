"""Attack: read a database password with an unencoded "@" out of errors, logs and the CLI.

``postgresql://bot:Sup3r@S3cretPW@db/x`` used to print as
``bot:***@S3cretPW@db/x``: the masking stopped at the first "@", and the
URL parser made ``S3cretPW@db`` the host name, which the driver then put in
its own error message. Every output a password could reach is checked for
both halves.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback

import pytest

from recorder import masking
from recorder.adapters.sql import SQLEventBuffer
from recorder.errors import StorageUnavailable
from tests.conftest import closed_port

HALVES = ("Sup3r", "S3cretPW")
PASSWORD = "@".join(HALVES)


def url_to_nowhere() -> str:
    return f"postgresql://bot:{PASSWORD}@127.0.0.1:{closed_port()}/recorder"


def assert_no_password(text: str) -> None:
    for half in HALVES:
        assert half not in text, text


def run_cli(*args: str, env_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    if env_url is not None:
        env["RECORDER_DATABASE_URL"] = env_url
    return subprocess.run(
        [sys.executable, "-m", "recorder", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_exceptions_never_show_either_half() -> None:
    buffer = SQLEventBuffer(url_to_nowhere())
    try:
        with pytest.raises(StorageUnavailable) as raised:
            buffer.record("e1", {"type": "events_api"})
        assert_no_password("".join(traceback.format_exception(raised.value)))
        assert_no_password(repr(buffer.engine))
        assert_no_password(str(buffer.engine.url))
        # The host is the real one: the driver failed to connect to it, not to
        # resolve "S3cretPW@127.0.0.1".
        assert buffer.engine.url.host == "127.0.0.1"
    finally:
        buffer.close()


@pytest.mark.parametrize(
    "args",
    [["verify"], ["-v", "seal"], ["query"], ["db", "current"]],
    ids=["verify", "verbose-seal", "query", "db-current"],
)
def test_cli_errors_and_logs_never_show_either_half(args: list[str]) -> None:
    url = url_to_nowhere()
    for result in (
        run_cli(*args, env_url=url),
        run_cli("--database-url", url, *args),
    ):
        assert result.returncode != 0
        assert_no_password(result.stdout + result.stderr)
        assert "bot:***@127.0.0.1" in result.stderr, result.stderr


def test_log_records_never_show_either_half(caplog: pytest.LogCaptureFixture) -> None:
    url = url_to_nowhere()
    logger = logging.getLogger("recorder.slack")
    masking.protect_recorder_loggers()
    with caplog.at_level(logging.INFO, logger="recorder"):
        logger.warning("database %s unavailable", url)
        buffer = SQLEventBuffer(url)
        try:
            buffer.record("e1", {"type": "events_api"})
        except StorageUnavailable:
            logger.exception("recording failed for %s", url)
        finally:
            buffer.close()
    assert len(caplog.records) == 2
    formatter = logging.Formatter()
    for record in caplog.records:
        assert_no_password(formatter.format(record))
    assert "bot:***@127.0.0.1" in caplog.records[0].getMessage()


def test_help_text_keeps_its_example_url() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "postgresql://user:pass@host/db" in result.stdout
