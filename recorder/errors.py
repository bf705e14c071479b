"""The recorder's exceptions: one root, a few kinds a caller acts on differently.

Driver and SQLAlchemy exceptions never escape the library: they are translated
at the edge (:func:`recorder.engine.storage_errors`) and chained with ``from exc``
so the cause stays visible in logs and in the CLI's cause chain.
"""

from __future__ import annotations


class RecorderError(Exception):
    """Base class of every error the recorder raises on purpose."""


class InvalidEnvelope(RecorderError, ValueError):
    """The envelope or its id cannot be recorded as given.

    Raised for an empty, non-string or over-long ``envelope_id``, text that is
    not a JSON object, an object that repeats a key (strict JSON), a mapping
    with a key that is not a string, an envelope over the size limit, and
    values JSON cannot hold. Nothing was stored, and nothing else was affected: the next envelope
    is recorded as usual.
    """


class StorageUnavailable(RecorderError):
    """The backend could not be reached or did not answer.

    Never reported as ``NEW`` or ``DUPLICATE``: whether the envelope was stored
    is unknown, so the caller applies its declared policy (spool, nack, raise).
    """


class SchemaMissing(StorageUnavailable):
    """The database answers but has no recorder schema (run ``recorder db upgrade``)."""


class ConfigurationError(RecorderError):
    """A setting is missing or malformed (a database URL, an environment variable)."""


class MissingDependency(ConfigurationError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package} is not installed; install it with: pip install 'envelope-recorder[{extra}]'"
        )
