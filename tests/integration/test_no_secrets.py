"""No secrets in errors: failures show neither passwords nor envelope contents, whole chain included."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback

import pytest
from sqlalchemy.engine import make_url

from recorder.adapters.sql import SQLEventBuffer
from recorder.errors import RecorderError, SchemaMissing, StorageUnavailable
from tests.conftest import closed_port

PASSWORD = "Pw-0f-the-bot-9876"
SECRET_TEXT = "the-patient-name-is-secret"


def full_text(exc: BaseException) -> str:
    """Everything a log line or a traceback could show: every exception in the chain."""
    return "".join(traceback.format_exception(exc))


def test_connection_failures_never_show_the_password() -> None:
    urls = [
        f"postgresql://bot:{PASSWORD}@127.0.0.1:{closed_port()}/recorder",
        f"postgresql://bot@127.0.0.1:{closed_port()}/recorder?password={PASSWORD}",
    ]
    for url in urls:
        buffer = SQLEventBuffer(url)
        with pytest.raises(StorageUnavailable) as info:
            buffer.record("e1", {"type": "x"})
        assert PASSWORD not in full_text(info.value)
        assert PASSWORD not in repr(buffer.engine)
        buffer.close()


def test_failed_statements_never_show_envelope_contents(
    pg_empty_url: str, tmp_path: object
) -> None:
    envelope = {"type": "events_api", "payload": {"event": {"text": SECRET_TEXT}}}
    for url in (pg_empty_url, f"sqlite:///{tmp_path}/empty.db"):
        buffer = SQLEventBuffer(url, redaction=None, upgrade=False)
        with pytest.raises(SchemaMissing) as info:
            buffer.record("e1", envelope)
        text = full_text(info.value)
        assert SECRET_TEXT not in text, text
        buffer.close()


def test_cli_errors_mask_the_password(tmp_path: object) -> None:
    url = f"postgresql://bot:{PASSWORD}@127.0.0.1:{closed_port()}/recorder"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    for args in (["verify"], ["-v", "seal"], ["--database-url", url, "verify"]):
        result = subprocess.run(
            [sys.executable, "-m", "recorder", *args],
            capture_output=True,
            text=True,
            env={**env, "RECORDER_DATABASE_URL": url},
            timeout=60,
        )
        assert result.returncode == 1
        assert PASSWORD not in result.stdout + result.stderr
        masked = make_url(url).render_as_string(hide_password=True)
        assert result.stderr.startswith("error: "), result.stderr
        assert masked in result.stderr or "connection" in result.stderr


def test_recorder_errors_are_the_only_kind_raised_for_bad_storage() -> None:
    buffer = SQLEventBuffer(f"postgresql://bot:{PASSWORD}@127.0.0.1:{closed_port()}/x")
    with pytest.raises(RecorderError):
        buffer.seen("e1")
    buffer.close()
