"""The event-buffer contract every adapter keeps.

It follows the ``SlackBot.EventBuffer.Adapter`` behaviour of the Elixir library
slack_bot_ws (``init``, ``record``, ``seen?``, ``delete``, ``pending``) and adds
``complete``, so that an envelope whose handler crashed stays pending and can be
recovered instead of being silently lost.

Recovery (re-running an envelope whose handler crashed, on any instance) is
part of the contract too: :class:`RecoverableEventBuffer` adds leases
(``claim_stale``, ``renew``), batched completion, a pending count, and
``restore`` for envelopes that arrive with their processing state (the Slack
spool's drain). The Slack layer depends on these protocols only, never on a
concrete adapter.

One conformance suite (:mod:`recorder.testing.conformance`) checks every rule
written here against every adapter and backend;
:mod:`recorder.testing.recovery` checks the recovery rules.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from recorder.errors import InvalidEnvelope, RecorderError, StorageUnavailable

if TYPE_CHECKING:
    from recorder.envelope import ParsedEnvelope

__all__ = [
    "DONE",
    "PENDING",
    "ClaimedEnvelope",
    "EnvelopeInput",
    "EventBufferAdapter",
    "InvalidEnvelope",
    "ParsingEventBuffer",
    "RecordResult",
    "RecorderError",
    "RecoverableEventBuffer",
    "StorageUnavailable",
    "StoredEnvelope",
]

#: Processing states of a stored envelope (the ``status`` column).
PENDING = "pending"
DONE = "done"

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


@runtime_checkable
class ParsingEventBuffer(EventBufferAdapter, Protocol):
    """An adapter that exposes its own parser, so other paths store what it would.

    Anything that keeps an envelope on the adapter's behalf (the Slack spool
    during an outage) parses it with :meth:`parse` first, so the adapter's
    size limit and redaction apply before anything touches disk.
    """

    def parse(self, envelope_id: object, envelope: object) -> ParsedEnvelope:
        """Validate ``envelope`` as :meth:`record` would, with this adapter's limits
        and redaction, without storing it.

        Raises
        ------
        InvalidEnvelope
            ``record`` would refuse it.
        """
        ...


@dataclass(frozen=True, slots=True)
class ClaimedEnvelope:
    """An envelope :meth:`RecoverableEventBuffer.claim_stale` claimed for another dispatch."""

    envelope_id: str
    envelope: dict[str, Any]
    """The stored envelope, decoded."""
    attempts: int
    """Dispatches so far, this one included."""


@dataclass(frozen=True, slots=True)
class StoredEnvelope:
    """An envelope with its processing state, as one store hands it to another.

    The Slack spool keeps envelopes this way during an outage and gives them
    to :meth:`RecoverableEventBuffer.restore` once the database answers, so
    an envelope handled from the spool is not handled again.
    """

    envelope_id: str
    envelope_text: str
    """The JSON text, as recorded (already redacted by the adapter's parser)."""
    received_at: dt.datetime
    status: str = PENDING
    """:data:`PENDING` or :data:`DONE`."""
    completed_at: dt.datetime | None = None
    attempts: int = 1
    claimed_at: dt.datetime | None = None


@runtime_checkable
class RecoverableEventBuffer(ParsingEventBuffer, Protocol):
    """An adapter whose pending envelopes any instance can take over after a crash.

    Rules (checked by :class:`recorder.testing.recovery.RecoveryConformance`):

    * ``record`` starts an envelope's first attempt (``attempts`` 1). An
      attempt is *stale* once ``lease`` seconds pass without a claim or a
      renewal; ``claim_stale`` claims stale pending envelopes, oldest first,
      adding one to ``attempts``, and two callers (threads or processes)
      never claim the same envelope.
    * A claimed envelope is not stale again until another ``lease`` passes;
      ``renew`` restarts the lease of envelopes whose handler still runs;
      completed envelopes are never claimed; with ``max_attempts`` an
      envelope dispatched that many times is left alone (it stays pending).
    * ``complete_many`` is ``complete`` for several ids at once;
      ``count_pending`` counts what ``pending`` would list.
    * ``restore`` stores envelopes with their state through the adapter's own
      parser; ids (and event ids) already stored are skipped. A batch with an
      envelope the adapter refuses raises ``InvalidEnvelope`` and stores nothing.
    * Time is the adapter's clock (injectable), never the caller's.
    * A backend failure raises ``StorageUnavailable``.
    """

    def claim_stale(
        self, lease: float | dt.timedelta, limit: int = 100, *, max_attempts: int | None = None
    ) -> list[ClaimedEnvelope]:
        """Claim pending envelopes whose current attempt is older than ``lease``.

        Returns
        -------
        list of ClaimedEnvelope
            Oldest first, at most ``limit``.
        """
        ...

    def renew(self, envelope_ids: Sequence[str]) -> None:
        """Restart the lease of envelopes whose handler is still running."""
        ...

    def complete_many(self, envelope_ids: Sequence[str]) -> None:
        """:meth:`complete` for several envelopes at once (one write where the backend can)."""
        ...

    def count_pending(self) -> int:
        """How many envelopes are recorded and not completed."""
        ...

    def restore(self, envelopes: Sequence[StoredEnvelope]) -> int:
        """Store envelopes with their processing state; return how many were new.

        Raises
        ------
        InvalidEnvelope
            The adapter refuses one of them (its size limit, a value the
            backend cannot hold); nothing of the batch was stored.
        StorageUnavailable
            The backend failed; the batch may be retried (restore is idempotent).
        """
        ...
