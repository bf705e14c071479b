"""No secrets in logs: tokens, URL passwords and hook URLs are masked by the recorder's loggers."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

import recorder
from recorder.engine import create_engine, database_url, mask_url
from recorder.masking import RECORDER_LOGGERS, SecretMaskingFilter, mask_secrets

BOT_TOKEN = "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp"
APP_TOKEN = "xapp-1-A0123456789-1234567890123-0123456789abcdef0123456789abcdef"
PACKAGE = Path(recorder.__file__).parent


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        (f"auth failed for {BOT_TOKEN}.", "AbCdEfGhIjKlMnOp", "xoxb-***."),
        (f"token={APP_TOKEN}", "0123456789abcdef", "xapp-***"),
        ("rotating xoxe.xoxp-1-Mi0yLTEyMzQ1Ng refresh", "Mi0yLTEyMzQ1Ng", "xoxe.xoxp-***"),
        ("user token xoxp-11-22-abc", "11-22-abc", "xoxp-***"),
        (
            "posting to https://hooks.slack.com/commands/T1/123/SeCrEt now",
            "SeCrEt",
            "https://hooks.slack.com/*** now",
        ),
        ("postgresql://bob:hunter2@db:5432/rec failed", "hunter2", "postgresql://bob:***@db"),
        ("redis://:hunter2@cache:6379/0", "hunter2", "redis://:***@cache"),
        ("host=db user=bob password=hunter2 dbname=x", "hunter2", "password=*** dbname"),
        ("?sslmode=require&password=hunter2&x=1", "hunter2", "password=***&x=1"),
        ("Authorization: Bearer xyzzy-secret", "xyzzy-secret", "Bearer ***"),
    ],
)
def test_mask_secrets(text: str, secret: str, kept: str) -> None:
    masked = mask_secrets(text)
    assert secret not in masked
    assert kept in masked


def test_text_without_secrets_is_unchanged() -> None:
    text = "recorded envelope 7f3a (events_api) at https://example.com/xoxb"
    assert mask_secrets(text) == text


def test_recorder_loggers_mask_messages_args_and_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("recorder.slack")
    with caplog.at_level(logging.INFO, logger="recorder.slack"):
        logger.info("connecting with %s", APP_TOKEN)
        try:
            raise RuntimeError(f"invalid_auth for {BOT_TOKEN}")
        except RuntimeError:
            logger.exception("call failed")
    text = caplog.text
    assert "xapp-***" in text
    assert "xoxb-***" in text
    assert "0123456789abcdef" not in text
    assert "AbCdEfGhIjKlMnOp" not in text
    assert "RuntimeError" in text  # the traceback is still there, masked


def test_the_filter_keeps_every_record() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "plain %s", ("text",), None)
    assert SecretMaskingFilter().filter(record)
    assert record.getMessage() == "plain text"


def _logger_names(path: Path) -> set[str]:
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "getLogger"
            and node.args
        ):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value)
            elif isinstance(arg, ast.Name) and arg.id == "__name__":
                names.add(module)
    return names


def test_every_logger_the_recorder_creates_is_protected() -> None:
    created = set().union(*(_logger_names(p) for p in PACKAGE.rglob("*.py")))
    assert created, "no loggers found: the scan is broken"
    missing = {name for name in created if name not in RECORDER_LOGGERS}
    assert not missing, f"add these to recorder.masking.RECORDER_LOGGERS: {sorted(missing)}"
    for name in RECORDER_LOGGERS:
        filters = logging.getLogger(name).filters
        assert any(isinstance(f, SecretMaskingFilter) for f in filters), name


def test_a_password_in_the_query_string_is_masked_everywhere() -> None:
    url = "postgresql://bob@db.example:5432/rec?password=hunter2&sslmode=require"
    assert "hunter2" not in mask_url(url)
    assert "sslmode=require" in mask_url(url)
    parsed = database_url(url)
    assert parsed.password == "hunter2"
    assert "password" not in parsed.query
    engine = create_engine(url)
    assert "hunter2" not in repr(engine)
    assert "hunter2" not in str(engine.url)
    engine.dispose()
    assert mask_url("postgresql://bob:hunter2@db/rec") == "postgresql://bob:***@db/rec"


# An unencoded "@" in a password: everything up to the last "@" of the authority is secret.
AT_PASSWORD_URLS = [
    ("postgresql://bot:Sup3r@S3cretPW@db/x", "postgresql://bot:***@db/x"),
    ("postgresql://bot:Sup3r@S3cretPW@db:5432/x?sslmode=require", "postgresql://bot:***@db:5432/x"),
    ("postgresql://bot:Sup3r@S3cretPW@db", "postgresql://bot:***@db"),
    ("redis://:Sup3r@S3cretPW@cache:6379/0", "redis://:***@cache:6379/0"),
    ("postgresql://bot:Sup3r@S3c@retPW@db/x", "postgresql://bot:***@db/x"),
]


@pytest.mark.parametrize(("url", "masked"), AT_PASSWORD_URLS)
def test_password_with_an_at_sign_is_masked_to_the_last_at(url: str, masked: str) -> None:
    for text in (f"connecting to {url} failed", f'url="{url}"', url):
        out = mask_secrets(text)
        assert masked in out
        assert "Sup3r" not in out
        assert "S3c" not in out
        assert "retPW" not in out


def test_database_urls_with_an_at_sign_in_the_password() -> None:
    url = "postgresql://bot:Sup3r@S3cretPW@db:5432/x"
    assert mask_url(url) == "postgresql://bot:***@db:5432/x"
    parsed = database_url(url)
    # The whole password is the password, so nothing of it reaches a host name
    # (which drivers print in their errors) or an unmasked rendering.
    assert (parsed.username, parsed.password, parsed.host) == ("bot", "Sup3r@S3cretPW", "db")
    assert "S3cretPW" not in repr(parsed)


def test_only_the_credentials_are_masked() -> None:
    for text in (
        "https://example.com/files/a@b/c",
        "postgresql://db:5432/x",
        "postgresql://bot@db/x",
        "mail bob@example.com about https://example.com/x",
    ):
        assert mask_secrets(text) == text
    # An "@" after the authority (a query value) is not part of the password.
    assert mask_secrets("postgresql://u:pw@db/x?notify=ops@example.com") == (
        "postgresql://u:***@db/x?notify=ops@example.com"
    )
