"""envelope-recorder: exactly-once dispatch and an audit trail for Slack Socket Mode bots."""

from typing import Any

from recorder.adapter import EnvelopeInput, EventBufferAdapter, RecordResult
from recorder.errors import (
    ConfigurationError,
    InvalidEnvelope,
    MissingDependency,
    RecorderError,
    SchemaMissing,
    StorageUnavailable,
)
from recorder.masking import protect_recorder_loggers

# Secrets (tokens, URL passwords) never leave through the recorder's loggers.
protect_recorder_loggers()

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # ``recorder.replay`` (see recorder.replaying) is loaded on first use, so
    # that ``import recorder`` stays light for bots that never replay.
    if name == "replay":
        from recorder.replaying import replay

        return replay
    raise AttributeError(f"module 'recorder' has no attribute {name!r}")


__all__ = [
    "ConfigurationError",
    "EnvelopeInput",
    "EventBufferAdapter",
    "InvalidEnvelope",
    "MissingDependency",
    "RecordResult",
    "RecorderError",
    "SchemaMissing",
    "StorageUnavailable",
    "__version__",
    "replay",
]
