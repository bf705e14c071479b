"""The event-buffer contract every adapter keeps.

It follows the ``SlackBot.EventBuffer.Adapter`` behaviour of the Elixir library
slack_bot_ws (``init``, ``record``, ``seen?``, ``delete``, ``pending``) and adds
``complete``, so that an envelope whose handler crashed stays pending and can be
recovered instead of being silently lost.

One conformance suite (:mod:`recorder.testing.conformance`) checks every rule
written here against every adapter and backend.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from recorder.errors import InvalidEnvelope, RecorderError, StorageUnavailable

__all__ = [
    "EnvelopeInput",
    "EventBufferAdapter",
    "InvalidEnvelope",
    "RecordResult",
    "RecorderError",
    "StorageUnavailable",
]

#: What ``record`` accepts: a decoded envelope, or its JSON text as str or bytes.
EnvelopeInput = Mapping[str, Any] | str | bytes


class RecordResult(enum.Enum):
    """What ``record`` decided about one envelope."""

    NEW = "new"
    """First time seen: dispatch handlers."""

    DUPLICATE = "duplicate"
    """Seen before (same ``envelope_id``, or the same ``payload.event_id``): do not dispatch."""


@runtime_checkable
class EventBufferAdapter(Protocol):
    """Records envelopes exactly once and tracks which are still being handled.

    Rules every adapter keeps:

    * ``record`` is atomic: concurrent calls with one id, from threads or from
      separate processes sharing the backend, yield exactly one ``NEW``.
    * First write wins: a duplicate never overwrites the stored envelope.
    * An ``events_api`` envelope whose ``payload.event_id`` was already recorded
      under another envelope id is ``DUPLICATE`` (Slack's retries arrive in new
      envelopes), and nothing is stored under the new id.
    * ``seen`` is true after a ``record`` that returned ``NEW``, false after
      ``delete`` or expiry.
    * ``pending`` returns envelopes recorded and not yet completed, oldest first;
      ``complete`` marks an envelope's handling finished.
    * An empty or non-string ``envelope_id`` is rejected with
      :class:`~recorder.errors.InvalidEnvelope`, never treated as new.
    * A backend failure raises :class:`~recorder.errors.StorageUnavailable`; it
      is never reported as ``NEW`` or ``DUPLICATE``.
    """

    def record(self, envelope_id: str, envelope: EnvelopeInput) -> RecordResult:
        """Store ``envelope`` under ``envelope_id`` unless it was seen before.

        ``envelope`` is the whole Socket Mode frame, as a mapping or as its JSON
        text (str or bytes); text is stored byte for byte as given.

        Returns
        -------
        RecordResult
            ``NEW`` when this call stored it (the caller dispatches handlers),
            ``DUPLICATE`` otherwise.

        Raises
        ------
        InvalidEnvelope
            The id or the envelope cannot be recorded; nothing was stored.
        StorageUnavailable
            The backend failed; whether anything was stored is unknown.
        """
        ...

    def seen(self, envelope_id: str) -> bool:
        """Whether an envelope is stored under ``envelope_id`` (and not expired)."""
        ...

    def delete(self, envelope_id: str) -> None:
        """Forget ``envelope_id`` (and its event id), so it may be recorded again.

        Deleting an id that is not stored is not an error.
        """
        ...

    def pending(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Envelopes recorded and not completed, oldest first, at most ``limit``.

        Each item is the stored envelope, decoded, exactly as it was recorded.
        """
        ...

    def complete(self, envelope_id: str) -> None:
        """Mark the handling of ``envelope_id`` finished; it leaves ``pending``."""
        ...

    def close(self) -> None:
        """Release connections and background resources. Calling it twice is harmless."""
        ...
