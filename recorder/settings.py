"""The recorder's settings: every option and ``RECORDER_*`` variable, parsed once, here.

:class:`Settings` is one frozen dataclass built from CLI options and the
environment. The functions below it read one variable each; the adapters use
them for their defaults (``max_envelope_bytes=None``, ``redaction=`` left
out, ``record_timeout=None``), so a variable means the same thing wherever
it is read. The Slack front-ends and the CLI take their storage-error
choices and spool path defaults from here too.

Precedence: an explicit value (a CLI option or a keyword argument) wins, then
the environment variable, then the default. A malformed value raises
:class:`~recorder.errors.ConfigurationError` naming the variable it came from.

| variable | setting | default |
| --- | --- | --- |
| ``RECORDER_DATABASE_URL`` | :attr:`Settings.database_url` | ``sqlite:///recorder.db`` |
| ``RECORDER_MAX_ENVELOPE_BYTES`` | :attr:`Settings.max_envelope_bytes` | 1 MiB |
| ``RECORDER_REDACT`` | :attr:`Settings.redaction` | the default masks |
| ``RECORDER_RECORD_TIMEOUT`` | :attr:`Settings.record_timeout` | 1 s |
| ``RECORDER_ON_STORAGE_ERROR`` | :attr:`Settings.on_storage_error` | ``spool`` |
| ``RECORDER_SPOOL_PATH`` | :attr:`Settings.spool_path` | ``recorder-spool.db`` |
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from recorder.engine import DEFAULT_DATABASE_URL, database_url, mask_url
from recorder.envelope import DEFAULT_MAX_ENVELOPE_BYTES
from recorder.errors import ConfigurationError
from recorder.redaction import DEFAULT_REDACTION, Redaction

ENV_DATABASE_URL = "RECORDER_DATABASE_URL"
ENV_MAX_ENVELOPE_BYTES = "RECORDER_MAX_ENVELOPE_BYTES"
ENV_REDACT = "RECORDER_REDACT"
ENV_RECORD_TIMEOUT = "RECORDER_RECORD_TIMEOUT"
ENV_ON_STORAGE_ERROR = "RECORDER_ON_STORAGE_ERROR"
ENV_SPOOL_PATH = "RECORDER_SPOOL_PATH"

#: Seconds ``record`` may wait for a lock or run on the database (and wait
#: for a free record connection) before it raises StorageUnavailable: well
#: inside Slack's 3 s ack window, with room for the ack and the spool.
DEFAULT_RECORD_TIMEOUT_SECONDS = 1.0

#: What a Slack front-end does when the database does not answer a record:
#: spool locally and ack, leave the envelope unacked, or raise.
OnStorageError = Literal["spool", "nack", "raise"]
STORAGE_ERROR_POLICIES: tuple[OnStorageError, ...] = get_args(OnStorageError)
DEFAULT_ON_STORAGE_ERROR: OnStorageError = "spool"
#: The local SQLite spool file, relative to the working directory.
DEFAULT_SPOOL_PATH = "recorder-spool.db"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the recorder is configured with."""

    database_url: str = DEFAULT_DATABASE_URL
    """Where envelopes are stored: ``postgresql://...`` or ``sqlite:///path``
    (``RECORDER_DATABASE_URL``; default ``sqlite:///recorder.db``)."""

    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
    """Envelopes whose JSON text is larger are rejected as InvalidEnvelope
    (``RECORDER_MAX_ENVELOPE_BYTES``; default 1 MiB)."""

    redaction: Redaction = field(default_factory=Redaction.default)
    """What is masked or dropped in the stored copy of every envelope
    (``RECORDER_REDACT``: ``off``, or ``default``, ``mask:PATH``, ``drop:PATH``
    separated by commas; default: the default masks)."""

    record_timeout: float | None = DEFAULT_RECORD_TIMEOUT_SECONDS
    """Seconds ``record`` may wait for a lock or run before it raises
    StorageUnavailable; ``None`` waits as long as the database does
    (``RECORDER_RECORD_TIMEOUT``, seconds, ``0`` or ``off`` for none; default 1)."""

    on_storage_error: OnStorageError = DEFAULT_ON_STORAGE_ERROR
    """What ``recorder listen`` does when the database does not answer
    (``RECORDER_ON_STORAGE_ERROR``: ``spool``, ``nack`` or ``raise``; default ``spool``)."""

    spool_path: str = DEFAULT_SPOOL_PATH
    """The local SQLite spool for envelopes received while the database is away
    (``RECORDER_SPOOL_PATH``; default ``recorder-spool.db``)."""

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
        redaction: Redaction | None = DEFAULT_REDACTION,
        record_timeout: float | None = None,
        on_storage_error: str | None = None,
        spool_path: str | None = None,
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
            redaction=resolve_redaction(redaction, env),
            record_timeout=record_timeout_setting(record_timeout, env),
            on_storage_error=on_storage_error_setting(on_storage_error, env),
            spool_path=spool_path or _env(env, ENV_SPOOL_PATH) or DEFAULT_SPOOL_PATH,
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


def resolve_redaction(
    redaction: Redaction | None, environ: Mapping[str, str] | None = None
) -> Redaction:
    """The redaction an adapter applies, given its ``redaction=`` argument.

    ``None`` turns redaction off. The :data:`~recorder.redaction.DEFAULT_REDACTION`
    object itself (the adapters' default argument) means: ``RECORDER_REDACT``
    if set, else the default masks. Any other value is used as given.

    Raises
    ------
    ConfigurationError
        ``RECORDER_REDACT`` is malformed (the message names it).
    """
    if redaction is None:
        return Redaction.none()
    if redaction is DEFAULT_REDACTION:
        env = os.environ if environ is None else environ
        spec = _env(env, ENV_REDACT)
        return Redaction.parse(spec) if spec else redaction
    return redaction


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
    if isinstance(raw, bool) or not seconds >= 0 or math.isinf(seconds):
        raise ConfigurationError(
            f"{source} must be a number of seconds (0 or off for no limit), not {raw!r}"
        )
    return seconds or None


def on_storage_error_setting(
    value: str | None = None, environ: Mapping[str, str] | None = None
) -> OnStorageError:
    """``value`` if given, else ``RECORDER_ON_STORAGE_ERROR``, else ``spool``.

    Raises
    ------
    ConfigurationError
        Not one of :data:`STORAGE_ERROR_POLICIES`.
    """
    source = "on_storage_error"
    if value is None:
        env = os.environ if environ is None else environ
        value = _env(env, ENV_ON_STORAGE_ERROR)
        if value is None:
            return DEFAULT_ON_STORAGE_ERROR
        source = ENV_ON_STORAGE_ERROR
    for policy in STORAGE_ERROR_POLICIES:
        if value == policy:
            return policy
    raise ConfigurationError(
        f"{source} must be one of {', '.join(STORAGE_ERROR_POLICIES)}, not {value!r}"
    )


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
