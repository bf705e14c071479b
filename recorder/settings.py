"""The recorder's settings: one frozen dataclass, from CLI options and ``RECORDER_*`` variables.

Precedence: an explicit value (a CLI option or a keyword argument) wins, then
the environment variable, then the default. A malformed value raises
:class:`~recorder.errors.ConfigurationError` naming the variable it came from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from recorder.engine import DEFAULT_DATABASE_URL, database_url, mask_url
from recorder.envelope import DEFAULT_MAX_ENVELOPE_BYTES
from recorder.errors import ConfigurationError

ENV_DATABASE_URL = "RECORDER_DATABASE_URL"
ENV_MAX_ENVELOPE_BYTES = "RECORDER_MAX_ENVELOPE_BYTES"
ENV_RECORD_TIMEOUT = "RECORDER_RECORD_TIMEOUT"

#: Seconds ``record`` may wait for a lock or run on the database (and wait
#: for a free record connection) before it raises StorageUnavailable: well
#: inside Slack's 3 s ack window, with room for the ack and the spool.
DEFAULT_RECORD_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the recorder is configured with."""

    database_url: str = DEFAULT_DATABASE_URL
    """Where envelopes are stored: ``postgresql://...`` or ``sqlite:///path``
    (``RECORDER_DATABASE_URL``; default ``sqlite:///recorder.db``)."""

    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
    """Envelopes whose JSON text is larger are rejected as InvalidEnvelope
    (``RECORDER_MAX_ENVELOPE_BYTES``; default 1 MiB)."""

    record_timeout: float | None = DEFAULT_RECORD_TIMEOUT_SECONDS
    """Seconds ``record`` may wait for a lock or run before it raises
    StorageUnavailable; ``None`` waits as long as the database does
    (``RECORDER_RECORD_TIMEOUT``, seconds, ``0`` or ``off`` for none; default 1)."""

    verbose: bool = False
    """Log what the recorder does (``-v``), on stderr."""

    @property
    def masked_database_url(self) -> str:
        """The database URL with its password hidden, for messages."""
        return mask_url(self.database_url)

    @property
    def is_sqlite(self) -> bool:
        return database_url(self.database_url).get_backend_name() == "sqlite"

    @classmethod
    def load(
        cls,
        *,
        database_url: str | None = None,
        max_envelope_bytes: int | None = None,
        record_timeout: float | None = None,
        verbose: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Settings from explicit values, falling back on ``RECORDER_*`` variables.

        Raises
        ------
        ConfigurationError
            A value is malformed; the message names the variable or option.
        """
        env = os.environ if environ is None else environ
        url = database_url or _env(env, ENV_DATABASE_URL) or DEFAULT_DATABASE_URL
        source = "--database-url" if database_url else ENV_DATABASE_URL
        try:
            _check_url(url)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{source}: {exc}") from None
        return cls(
            database_url=url,
            max_envelope_bytes=max_envelope_bytes_from_env(env)
            if max_envelope_bytes is None
            else _positive_bytes(max_envelope_bytes),
            record_timeout=record_timeout_setting(record_timeout, env),
            verbose=verbose,
        )


def max_envelope_bytes_from_env(environ: Mapping[str, str] | None = None) -> int:
    """``RECORDER_MAX_ENVELOPE_BYTES``, or the default limit (every adapter's default).

    Raises
    ------
    ConfigurationError
        The variable is set and not a positive number of bytes.
    """
    env = os.environ if environ is None else environ
    return _positive_int(env, ENV_MAX_ENVELOPE_BYTES) or DEFAULT_MAX_ENVELOPE_BYTES


def record_timeout_setting(
    value: float | None = None, environ: Mapping[str, str] | None = None
) -> float | None:
    """The record path's time bound: ``value`` if given, else ``RECORDER_RECORD_TIMEOUT``, else 1 s.

    ``0`` (or ``off`` in the variable) means no bound: ``None``.

    Raises
    ------
    ConfigurationError
        Not a number of seconds, or negative.
    """
    source = "record_timeout"
    raw: object = value
    if value is None:
        env = os.environ if environ is None else environ
        text = _env(env, ENV_RECORD_TIMEOUT)
        if text is None:
            return DEFAULT_RECORD_TIMEOUT_SECONDS
        if text.lower() in ("off", "none"):
            return None
        source, raw = ENV_RECORD_TIMEOUT, text
    try:
        seconds = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(raw, bool) or not seconds >= 0 or seconds == float("inf"):
        raise ConfigurationError(
            f"{source} must be a number of seconds (0 or off for no limit), not {raw!r}"
        )
    return seconds or None


def _positive_bytes(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError("max_envelope_bytes must be a positive number of bytes")
    return value


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value.strip() if value and value.strip() else None


def _check_url(url: str) -> None:
    database_url(url)


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    raw = _env(env, name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigurationError(f"{name} must be a positive number of bytes, not {raw!r}")
    return value
