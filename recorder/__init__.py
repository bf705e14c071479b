"""envelope-recorder: exactly-once dispatch and an audit trail for Slack Socket Mode bots."""

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
]
