"""Keep secrets out of logs: Slack tokens, URL passwords, response URLs.

:class:`SecretMaskingFilter` rewrites a log record's message (and its
formatted traceback) with :func:`mask_secrets`. The recorder puts it on its
own loggers when the package is imported (:func:`protect_recorder_loggers`),
and the ``recorder`` command on its stderr handler. A bot should add it to
its own handlers too, which covers third-party loggers (slack_sdk, aiohttp)::

    handler.addFilter(recorder.masking.SecretMaskingFilter())

A filter on a logger sees only records logged through that very logger, not
its children, hence the explicit list in :data:`RECORDER_LOGGERS`.
"""

from __future__ import annotations

import logging
import re

#: Every logger the recorder logs through; a test keeps this list complete.
RECORDER_LOGGERS = (
    "recorder",
    "recorder.slack",
    "recorder.http",
    "recorder.prune",
    "recorder.seal",
    "recorder.simulator",
)

MASK = "***"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Slack tokens keep their kind (xoxb-, xapp-, xoxe.xoxp-) and lose the rest.
    (re.compile(r"\b(xox[a-z](?:\.xox[a-z])?-|xapp-)[A-Za-z0-9-]+"), rf"\g<1>{MASK}"),
    # Incoming webhooks and response URLs are bearer credentials.
    (re.compile(r"(https://hooks\.slack\.com/)[^\s\"'<>]+"), rf"\g<1>{MASK}"),
    # scheme://user:password@host. The password runs to the last "@" of the
    # authority (an unencoded "@" in it is common): to the first "@" after
    # which only a host and port follow, up to "/", "?", "#" or the text's end.
    (
        re.compile(
            r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#\s\"'<>]*:)[^\s\"'<>]*?@"
            r"(?=[^@/?#\s\"'<>]*(?:[/?#\s\"'<>]|$))"
        ),
        rf"\g<1>{MASK}@",
    ),
    # password=... in a query string or a libpq conninfo string
    (re.compile(r"(?i)(\bpassword=)(?:'[^']*'|[^\s&;]+)"), rf"\g<1>{MASK}"),
    (re.compile(r"(?i)(\bauthorization:\s*bearer\s+)\S+"), rf"\g<1>{MASK}"),
)


def mask_secrets(text: str) -> str:
    """``text`` with every Slack token, URL password and Slack hook URL masked."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class SecretMaskingFilter(logging.Filter):
    """Masks secrets in a record's message and traceback; never drops a record."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg = masked
            record.args = None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set, so the masked text is what prints.
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


def protect(logger: logging.Logger) -> logging.Logger:
    """Add a :class:`SecretMaskingFilter` to ``logger`` (once)."""
    if not any(isinstance(f, SecretMaskingFilter) for f in logger.filters):
        logger.addFilter(SecretMaskingFilter())
    return logger


def protect_recorder_loggers() -> None:
    """Protect every logger in :data:`RECORDER_LOGGERS`."""
    for name in RECORDER_LOGGERS:
        protect(logging.getLogger(name))


def protect_handlers(logger: logging.Logger | None = None) -> None:
    """Add a :class:`SecretMaskingFilter` to every handler of ``logger`` (default: root)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, SecretMaskingFilter) for f in handler.filters):
            handler.addFilter(SecretMaskingFilter())
