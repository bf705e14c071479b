"""Settings from options and RECORDER_* variables, and how the CLI renders errors."""

from __future__ import annotations

import pytest

from recorder.cli import error_lines, redact
from recorder.envelope import DEFAULT_MAX_ENVELOPE_BYTES
from recorder.errors import ConfigurationError, StorageUnavailable
from recorder.redaction import DEFAULT_MASKED_PATHS, Redaction
from recorder.settings import Settings


def test_defaults() -> None:
    settings = Settings.load(environ={})
    assert settings.database_url == "sqlite:///recorder.db"
    assert settings.max_envelope_bytes == DEFAULT_MAX_ENVELOPE_BYTES
    assert settings.is_sqlite


def test_environment_then_explicit_values_win() -> None:
    env = {
        "RECORDER_DATABASE_URL": "postgresql://u:pw@db/rec",
        "RECORDER_MAX_ENVELOPE_BYTES": "2048",
    }
    from_env = Settings.load(environ=env)
    assert from_env.database_url == "postgresql://u:pw@db/rec"
    assert from_env.max_envelope_bytes == 2048
    assert from_env.masked_database_url == "postgresql://u:***@db/rec"
    assert not from_env.is_sqlite
    explicit = Settings.load(database_url="sqlite:///x.db", max_envelope_bytes=10, environ=env)
    assert (explicit.database_url, explicit.max_envelope_bytes) == ("sqlite:///x.db", 10)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"RECORDER_MAX_ENVELOPE_BYTES": "lots"}, "RECORDER_MAX_ENVELOPE_BYTES"),
        ({"RECORDER_MAX_ENVELOPE_BYTES": "-5"}, "RECORDER_MAX_ENVELOPE_BYTES"),
        ({"RECORDER_DATABASE_URL": "mysql://u:pw@h/db"}, "RECORDER_DATABASE_URL"),
        ({"RECORDER_DATABASE_URL": "::not a url::"}, "RECORDER_DATABASE_URL"),
        ({"RECORDER_REDACT": "hide:payload.token"}, "RECORDER_REDACT"),
        ({"RECORDER_RECORD_TIMEOUT": "soon"}, "RECORDER_RECORD_TIMEOUT"),
        ({"RECORDER_ON_STORAGE_ERROR": "ignore"}, "RECORDER_ON_STORAGE_ERROR"),
    ],
)
def test_malformed_values_name_their_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigurationError, match=names):
        Settings.load(environ=env)


def test_every_variable_is_read_in_one_place() -> None:
    env = {
        "RECORDER_REDACT": "default,drop:payload.event.text",
        "RECORDER_RECORD_TIMEOUT": "0.4",
        "RECORDER_ON_STORAGE_ERROR": "nack",
        "RECORDER_SPOOL_PATH": "/var/spool/recorder.db",
    }
    settings = Settings.load(environ=env)
    assert settings.redaction == Redaction(mask=DEFAULT_MASKED_PATHS, drop=("payload.event.text",))
    assert settings.record_timeout == 0.4
    assert settings.on_storage_error == "nack"
    assert settings.spool_path == "/var/spool/recorder.db"
    defaults = Settings.load(environ={})
    assert defaults.redaction == Redaction.default()
    assert defaults.record_timeout == 1.0
    assert (defaults.on_storage_error, defaults.spool_path) == ("spool", "recorder-spool.db")
    explicit = Settings.load(
        redaction=None, record_timeout=0, on_storage_error="raise", spool_path="s.db", environ=env
    )
    assert explicit.redaction == Redaction.none()
    assert explicit.record_timeout is None
    assert (explicit.on_storage_error, explicit.spool_path) == ("raise", "s.db")


def test_the_cli_choices_are_the_library_types() -> None:
    from typing import get_args

    import click

    from recorder.cli.slack import listen_command
    from recorder.settings import STORAGE_ERROR_POLICIES, OnStorageError
    from recorder.slack.options import POLICIES

    option = next(p for p in listen_command.params if p.name == "on_storage_error")
    assert isinstance(option.type, click.Choice)
    assert tuple(option.type.choices) == STORAGE_ERROR_POLICIES == get_args(OnStorageError)
    assert POLICIES == STORAGE_ERROR_POLICIES


def test_a_bad_option_names_the_option() -> None:
    with pytest.raises(ConfigurationError, match="--database-url"):
        Settings.load(database_url="oracle://x", environ={})


def test_settings_are_frozen() -> None:
    settings = Settings.load(environ={})
    with pytest.raises(AttributeError):
        settings.database_url = "sqlite:///other.db"  # type: ignore[misc]


def test_redact_masks_every_url_password() -> None:
    text = "postgresql://alice:s3cret@h:5432/db and redis://:pw@r:6379/0 and http://x/y"
    assert redact(text) == (
        "postgresql://alice:***@h:5432/db and redis://:***@r:6379/0 and http://x/y"
    )


def _chained() -> StorageUnavailable:
    try:
        try:
            raise OSError("connection to server at 127.0.0.1 refused\nDETAIL: more")
        except OSError as inner:
            raise RuntimeError("(psycopg.OperationalError) pool gave up") from inner
    except RuntimeError as middle:
        try:
            raise StorageUnavailable("recording envelope e1: pool gave up") from middle
        except StorageUnavailable as exc:
            return exc


def test_error_lines_show_the_cause_chain_once_each_with_passwords_masked() -> None:
    settings = Settings.load(database_url="postgresql://bob:hunter22@db/rec", environ={})
    lines = error_lines(_chained(), settings)
    assert lines == [
        "error: recording envelope e1: pool gave up (database postgresql://bob:***@db/rec)",
        "  caused by: OSError: connection to server at 127.0.0.1 refused",
    ]
    assert not any("hunter22" in line for line in lines)
