"""The recovery conformance suite: every rule of :class:`~recorder.adapter.RecoverableEventBuffer`.

Mix :class:`RecoveryConformance` into a test class (beside
:class:`~recorder.testing.conformance.AdapterConformance`) and provide:

``recoverable_buffer``
    A fresh, empty adapter whose clock the test controls.
``advance_clock``
    A callable ``advance_clock(seconds)`` that makes that much time pass for
    the adapter (move its fake clock). Nothing here sleeps on the real clock.
``unavailable_buffer``
    As for ``AdapterConformance``: an adapter whose backend is down.

.. code-block:: python

    class TestMyAdapter(AdapterConformance, RecoveryConformance):
        @pytest.fixture
        def clock(self):
            return FakeClock()

        @pytest.fixture
        def recoverable_buffer(self, clock):
            adapter = MyAdapter(table=f"test_{uuid.uuid4().hex}", clock=clock)
            yield adapter
            adapter.close()

        @pytest.fixture
        def advance_clock(self, clock):
            return clock.advance
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from recorder.adapter import DONE, PENDING, RecoverableEventBuffer, StoredEnvelope
from recorder.envelope import DEFAULT_MAX_ENVELOPE_BYTES
from recorder.errors import InvalidEnvelope, StorageUnavailable
from recorder.testing.conformance import events_api_envelope

__all__ = ["LEASE", "RecoveryConformance"]

#: The lease the suite uses, in the adapter's clock seconds.
LEASE = 60.0
CLAIMERS = 8

Advance = Callable[[float], None]


def _stored(envelope: dict[str, Any], **state: Any) -> StoredEnvelope:
    return StoredEnvelope(
        envelope_id=envelope["envelope_id"],
        envelope_text=json.dumps(envelope),
        received_at=dt.datetime.now(dt.timezone.utc),
        **state,
    )


class RecoveryConformance:
    """The recovery rules; see the module docstring for the fixtures."""

    def _record(self, buffer: RecoverableEventBuffer, *ids: str) -> None:
        for envelope_id in ids:
            buffer.record(envelope_id, events_api_envelope(envelope_id))

    def test_is_a_recoverable_event_buffer(
        self, recoverable_buffer: RecoverableEventBuffer
    ) -> None:
        assert isinstance(recoverable_buffer, RecoverableEventBuffer)

    def test_an_envelope_is_stale_only_after_the_lease(
        self, recoverable_buffer: RecoverableEventBuffer, advance_clock: Advance
    ) -> None:
        buffer = recoverable_buffer
        envelope = events_api_envelope("rc-stale", text="recover me")
        buffer.record("rc-stale", envelope)
        assert buffer.claim_stale(LEASE) == []
        advance_clock(LEASE / 2)
        assert buffer.claim_stale(LEASE) == []
        advance_clock(LEASE)
        (claim,) = buffer.claim_stale(LEASE)
        assert (claim.envelope_id, claim.attempts) == ("rc-stale", 2)
        assert claim.envelope == envelope

    def test_a_claim_is_not_stale_again_until_another_lease(
        self, recoverable_buffer: RecoverableEventBuffer, advance_clock: Advance
    ) -> None:
        buffer = recoverable_buffer
        self._record(buffer, "rc-claimed")
        advance_clock(LEASE + 1)
        assert len(buffer.claim_stale(LEASE)) == 1
        assert buffer.claim_stale(LEASE) == []
        advance_clock(LEASE / 2)
        assert buffer.claim_stale(LEASE) == []
        advance_clock(LEASE)
        assert [c.attempts for c in buffer.claim_stale(LEASE)] == [3]

    def test_renew_restarts_the_lease(
        self, recoverable_buffer: RecoverableEventBuffer, advance_clock: Advance
    ) -> None:
        buffer = recoverable_buffer
        self._record(buffer, "rc-renewed", "rc-abandoned")
        advance_clock(LEASE * 0.75)
        buffer.renew(["rc-renewed"])
        advance_clock(LEASE * 0.75)
        assert [c.envelope_id for c in buffer.claim_stale(LEASE)] == ["rc-abandoned"]
        buffer.renew([])  # nothing to renew is harmless

    def test_max_attempts_leaves_an_envelope_pending(
        self, recoverable_buffer: RecoverableEventBuffer, advance_clock: Advance
    ) -> None:
        buffer = recoverable_buffer
        self._record(buffer, "rc-poison")
        advance_clock(LEASE + 1)
        assert buffer.claim_stale(LEASE, max_attempts=1) == []
        assert [c.attempts for c in buffer.claim_stale(LEASE, max_attempts=2)] == [2]
        advance_clock(LEASE + 1)
        assert buffer.claim_stale(LEASE, max_attempts=2) == []
        assert buffer.count_pending() == 1

    def test_completed_envelopes_are_never_claimed(
        self, recoverable_buffer: RecoverableEventBuffer, advance_clock: Advance
    ) -> None:
        buffer = recoverable_buffer
        self._record(buffer, "rc-a", "rc-b", "rc-c", "rc-d")
        buffer.complete("rc-a")
        buffer.complete_many(["rc-b", "rc-c", "rc-unknown"])
        buffer.complete_many([])
        assert buffer.count_pending() == 1
        advance_clock(LEASE + 1)
        assert [c.envelope_id for c in buffer.claim_stale(LEASE)] == ["rc-d"]
        assert [e["envelope_id"] for e in buffer.pending()] == ["rc-d"]

    def test_claims_come_oldest_first_up_to_the_limit(
        self, recoverable_buffer: RecoverableEventBuffer, advance_clock: Advance
    ) -> None:
        buffer = recoverable_buffer
        for envelope_id in ("rc-1", "rc-2", "rc-3"):
            self._record(buffer, envelope_id)
            advance_clock(1)
        advance_clock(LEASE)
        assert [c.envelope_id for c in buffer.claim_stale(LEASE, 2)] == ["rc-1", "rc-2"]
        assert [c.envelope_id for c in buffer.claim_stale(LEASE, 2)] == ["rc-3"]
        assert buffer.claim_stale(LEASE, 0) == []

    def test_negative_lease_or_limit_is_refused(
        self, recoverable_buffer: RecoverableEventBuffer
    ) -> None:
        with pytest.raises(ValueError, match="zero or more"):
            recoverable_buffer.claim_stale(-1)
        with pytest.raises(ValueError, match="zero or more"):
            recoverable_buffer.claim_stale(LEASE, -1)

    def test_threads_racing_claim_each_envelope_once(
        self, recoverable_buffer: RecoverableEventBuffer, advance_clock: Advance
    ) -> None:
        buffer = recoverable_buffer
        ids = [f"rc-race-{i}" for i in range(40)]
        self._record(buffer, *ids)
        advance_clock(LEASE + 1)
        claimed: list[list[str]] = [[] for _ in range(CLAIMERS)]
        start = threading.Barrier(CLAIMERS)

        def claim(index: int) -> None:
            start.wait(timeout=60)
            while batch := buffer.claim_stale(LEASE, 3):
                claimed[index].extend(c.envelope_id for c in batch)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(CLAIMERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        every = [envelope_id for batch in claimed for envelope_id in batch]
        assert sorted(every) == sorted(ids)

    def test_restore_keeps_the_processing_state(
        self, recoverable_buffer: RecoverableEventBuffer, advance_clock: Advance
    ) -> None:
        buffer = recoverable_buffer
        running = events_api_envelope("rc-restored-pending")
        handled = events_api_envelope("rc-restored-done")
        rows = [
            _stored(running, status=PENDING, attempts=3),
            _stored(
                handled, status=DONE, attempts=1, completed_at=dt.datetime.now(dt.timezone.utc)
            ),
        ]
        assert buffer.restore(rows) == 2
        assert buffer.seen("rc-restored-pending")
        assert buffer.seen("rc-restored-done")
        assert buffer.pending() == [running]
        assert buffer.count_pending() == 1
        assert buffer.restore(rows) == 0  # idempotent: a repeated drain stores nothing
        assert buffer.restore([]) == 0
        advance_clock(LEASE + 1)
        assert [(c.envelope_id, c.attempts) for c in buffer.claim_stale(LEASE)] == [
            ("rc-restored-pending", 4)
        ]

    def test_restore_skips_an_event_already_recorded(
        self, recoverable_buffer: RecoverableEventBuffer
    ) -> None:
        buffer = recoverable_buffer
        buffer.record("rc-first", events_api_envelope("rc-first", event_id="Ev-shared"))
        retry = events_api_envelope("rc-retry", event_id="Ev-shared")
        assert buffer.restore([_stored(retry)]) == 0
        assert not buffer.seen("rc-retry")

    def test_restore_goes_through_the_buffer_parser(
        self, recoverable_buffer: RecoverableEventBuffer
    ) -> None:
        buffer = recoverable_buffer
        envelope = events_api_envelope("rc-parsed")
        envelope["payload"]["token"] = "xoxb-restore-secret"
        text = json.dumps(envelope)
        buffer.restore([_stored(envelope)])
        assert buffer.pending() == [json.loads(buffer.parse("rc-parsed", text).text)]

    def test_restore_of_a_refused_envelope_stores_nothing_of_the_batch(
        self, recoverable_buffer: RecoverableEventBuffer
    ) -> None:
        buffer = recoverable_buffer
        fine = events_api_envelope("rc-fine")
        huge = events_api_envelope("rc-huge", text="x" * (DEFAULT_MAX_ENVELOPE_BYTES + 1))
        with pytest.raises(InvalidEnvelope):
            buffer.restore([_stored(fine), _stored(huge)])
        assert not buffer.seen("rc-fine")
        assert buffer.restore([_stored(fine)]) == 1

    def test_unavailable_backend_recovery_calls_raise(
        self, unavailable_buffer: RecoverableEventBuffer
    ) -> None:
        buffer = unavailable_buffer
        calls: list[Callable[[], object]] = [
            lambda: buffer.claim_stale(LEASE),
            lambda: buffer.renew(["rc-x"]),
            lambda: buffer.complete_many(["rc-x"]),
            buffer.count_pending,
            lambda: buffer.restore([_stored(events_api_envelope("rc-x"))]),
        ]
        for call in calls:
            with pytest.raises(StorageUnavailable):
                call()
