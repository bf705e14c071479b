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


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the recorder is configured with."""

    database_url: str = DEFAULT_DATABASE_URL
    """Where envelopes are stored: ``postgresql://...`` or ``sqlite:///path``
    (``RECORDER_DATABASE_URL``; default ``sqlite:///recorder.db``)."""

    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
    """Envelopes whose JSON text is larger are rejected as InvalidEnvelope
    (``RECORDER_MAX_ENVELOPE_BYTES``; default 1 MiB)."""

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
        if max_envelope_bytes is None:
            max_envelope_bytes = _positive_int(env, ENV_MAX_ENVELOPE_BYTES)
        elif max_envelope_bytes <= 0:
            raise ConfigurationError("max_envelope_bytes must be a positive number of bytes")
        return cls(
            database_url=url,
            max_envelope_bytes=max_envelope_bytes or DEFAULT_MAX_ENVELOPE_BYTES,
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
