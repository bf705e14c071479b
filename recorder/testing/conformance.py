"""The adapter conformance suite: every rule of :class:`~recorder.adapter.EventBufferAdapter`, as pytest tests.

The included adapters (memory, Redis, SQLite, PostgreSQL) all pass it, and so
can yours (DynamoDB, MySQL, ...). Subclass :class:`AdapterConformance` in a
test module whose class name starts with ``Test`` and provide two fixtures:

``buffer``
    A fresh, empty adapter on a working backend (closed afterwards).
``unavailable_buffer``
    An adapter whose backend is down: pointed at a closed port, a host that
    does not answer, a path that cannot be opened. Every call must raise
    :class:`~recorder.errors.StorageUnavailable`.

.. code-block:: python

    # tests/conftest.py: failed asserts in the suite then show their values
    import pytest

    pytest.register_assert_rewrite("recorder.testing.conformance")

    # tests/test_my_adapter.py
    import pytest

    from recorder.testing.conformance import AdapterConformance


    class TestMyAdapter(AdapterConformance):
        @pytest.fixture
        def buffer(self):
            adapter = MyAdapter(table=f"test_{uuid.uuid4().hex}")
            yield adapter
            adapter.close()

        @pytest.fixture
        def unavailable_buffer(self):
            return MyAdapter(endpoint="http://127.0.0.1:9")  # nothing listens there

Two optional mixins add more rules:

:class:`TTLConformance`, for adapters whose dedupe window is a TTL
    Fixtures ``ttl_buffer`` (an adapter with a short TTL) and ``let_ttl_pass``
    (a callable that makes that TTL elapse: sleep, or move a fake clock).
:class:`CrossProcessConformance`, for adapters whose backend other processes share
    Fixture ``buffer_factory``: a picklable zero-argument callable, such as
    ``functools.partial(MyAdapter, url)``, that builds a new adapter on the
    same backend as ``buffer``. Its tests run it in spawned processes.

Run with ``pytest tests/test_my_adapter.py``. Nothing is skipped: a test that
cannot reach its backend fails.

Over 450 lines: one suite with every rule of the contract, so a
third-party adapter subclasses one class.
"""

from __future__ import annotations

import json
import multiprocessing
import queue as queue_module
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from recorder.adapter import EventBufferAdapter, RecordResult
from recorder.envelope import DEFAULT_MAX_ENVELOPE_BYTES, MAX_ENVELOPE_ID_LENGTH
from recorder.errors import InvalidEnvelope, StorageUnavailable

__all__ = [
    "AdapterConformance",
    "CrossProcessConformance",
    "TTLConformance",
    "events_api_envelope",
]

THREADS = 16
PROCESSES = 4
CROSS_PROCESS_IDS = 25


def events_api_envelope(
    envelope_id: str, *, event_id: str | None = None, text: str = "hello"
) -> dict[str, Any]:
    """A realistic ``events_api`` envelope; ``event_id`` defaults to one derived from the id.

    It carries no secret an adapter would redact (``payload.token``, response
    URLs), so what ``pending`` returns can be compared with what was recorded.
    """
    return {
        "envelope_id": envelope_id,
        "type": "events_api",
        "accepts_response_payload": False,
        "retry_attempt": 0,
        "retry_reason": "",
        "payload": {
            "team_id": "T0CONFORM",
            "api_app_id": "A0CONFORM",
            "type": "event_callback",
            "event_id": event_id if event_id is not None else f"Ev-{envelope_id}",
            "event_time": 1_700_000_000,
            "authorizations": [{"team_id": "T0CONFORM", "user_id": "U0BOT", "is_bot": True}],
            "event": {
                "type": "message",
                "channel": "C0CONFORM",
                "user": "U0CONFORM",
                "text": text,
                "ts": "1700000000.000100",
            },
        },
    }


def _race(count: int, call: Callable[[int], RecordResult]) -> list[RecordResult]:
    """Run ``call(0..count-1)`` on ``count`` threads released together by a barrier."""
    barrier = threading.Barrier(count)

    def run(index: int) -> RecordResult:
        barrier.wait(timeout=60)
        return call(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


class AdapterConformance:
    """The rules every adapter keeps. Subclasses provide ``buffer`` and ``unavailable_buffer``.

    See the module docstring for an example.
    """

    # -- NEW, DUPLICATE, first write wins ----------------------------------

    def test_record_new_then_duplicate(self, buffer: EventBufferAdapter) -> None:
        envelope = events_api_envelope("env-1")
        assert buffer.record("env-1", envelope) is RecordResult.NEW
        assert buffer.record("env-1", envelope) is RecordResult.DUPLICATE
        assert buffer.record("env-1", envelope) is RecordResult.DUPLICATE

    def test_record_accepts_json_text_and_bytes(self, buffer: EventBufferAdapter) -> None:
        text = json.dumps(events_api_envelope("env-text"), indent=2)
        raw = json.dumps(events_api_envelope("env-bytes", text="héllo ✓")).encode("utf-8")
        assert buffer.record("env-text", text) is RecordResult.NEW
        assert buffer.record("env-bytes", raw) is RecordResult.NEW
        assert buffer.record("env-text", text) is RecordResult.DUPLICATE
        assert buffer.pending() == [json.loads(text), json.loads(raw)]

    def test_first_write_wins(self, buffer: EventBufferAdapter) -> None:
        first = events_api_envelope("env-1", event_id="Ev1", text="first")
        second = events_api_envelope("env-1", event_id="Ev1", text="second")
        assert buffer.record("env-1", first) is RecordResult.NEW
        assert buffer.record("env-1", second) is RecordResult.DUPLICATE
        assert buffer.pending() == [first], "a duplicate overwrote the stored envelope"

    def test_retry_in_new_envelope_with_same_event_id_is_duplicate(
        self, buffer: EventBufferAdapter
    ) -> None:
        original = events_api_envelope("env-1", event_id="Ev42", text="original")
        retry = events_api_envelope("env-2", event_id="Ev42", text="retry")
        assert buffer.record("env-1", original) is RecordResult.NEW
        assert buffer.record("env-2", retry) is RecordResult.DUPLICATE
        assert not buffer.seen("env-2"), "a retry was stored under its new envelope id"
        assert buffer.pending() == [original]

    def test_different_event_ids_are_distinct(self, buffer: EventBufferAdapter) -> None:
        assert buffer.record("env-1", events_api_envelope("env-1", event_id="EvA")) is (
            RecordResult.NEW
        )
        assert buffer.record("env-2", events_api_envelope("env-2", event_id="EvB")) is (
            RecordResult.NEW
        )

    def test_envelope_without_event_id_is_keyed_by_envelope_id(
        self, buffer: EventBufferAdapter
    ) -> None:
        def slash(envelope_id: str) -> dict[str, Any]:
            return {
                "envelope_id": envelope_id,
                "type": "slash_commands",
                "payload": {"command": "/deploy", "team_id": "T1", "user_id": "U1"},
            }

        assert buffer.record("cmd-1", slash("cmd-1")) is RecordResult.NEW
        assert buffer.record("cmd-2", slash("cmd-2")) is RecordResult.NEW
        assert buffer.record("cmd-1", slash("cmd-1")) is RecordResult.DUPLICATE

    # -- seen, delete ------------------------------------------------------

    def test_seen_delete_and_record_again(self, buffer: EventBufferAdapter) -> None:
        envelope = events_api_envelope("env-1")
        assert not buffer.seen("env-1")
        assert buffer.record("env-1", envelope) is RecordResult.NEW
        assert buffer.seen("env-1")
        buffer.delete("env-1")
        assert not buffer.seen("env-1")
        assert buffer.record("env-1", envelope) is RecordResult.NEW
        assert buffer.seen("env-1")

    def test_delete_frees_the_event_id(self, buffer: EventBufferAdapter) -> None:
        assert buffer.record("env-1", events_api_envelope("env-1", event_id="Ev7")) is (
            RecordResult.NEW
        )
        buffer.delete("env-1")
        retry = events_api_envelope("env-2", event_id="Ev7")
        assert buffer.record("env-2", retry) is RecordResult.NEW
        assert buffer.pending() == [retry]

    def test_delete_of_unknown_id_is_harmless(self, buffer: EventBufferAdapter) -> None:
        assert buffer.record("env-1", events_api_envelope("env-1")) is RecordResult.NEW
        buffer.delete("never-recorded")
        assert buffer.seen("env-1")
        assert len(buffer.pending()) == 1

    # -- pending, complete -------------------------------------------------

    def test_pending_oldest_first_and_complete(self, buffer: EventBufferAdapter) -> None:
        # Not in sorted order: the order must come from recording, not from ids.
        ids = ["m-3", "a-9", "z-1", "b-5", "k-0", "a-1"]
        envelopes = [events_api_envelope(i, text=f"text of {i}") for i in ids]
        for envelope_id, envelope in zip(ids, envelopes, strict=True):
            assert buffer.record(envelope_id, envelope) is RecordResult.NEW
        assert buffer.pending() == envelopes

        buffer.complete("z-1")
        buffer.complete("m-3")
        assert buffer.pending() == [envelopes[1], envelopes[3], envelopes[4], envelopes[5]]
        # Completing is not forgetting: the id is still deduplicated.
        assert buffer.seen("z-1")
        assert buffer.record("z-1", envelopes[2]) is RecordResult.DUPLICATE
        assert envelopes[2] not in buffer.pending()

    def test_complete_of_unknown_id_is_harmless(self, buffer: EventBufferAdapter) -> None:
        envelope = events_api_envelope("env-1")
        assert buffer.record("env-1", envelope) is RecordResult.NEW
        buffer.complete("never-recorded")
        assert buffer.pending() == [envelope]

    def test_pending_limit(self, buffer: EventBufferAdapter) -> None:
        envelopes = [events_api_envelope(f"env-{n}") for n in range(5)]
        for envelope in envelopes:
            assert buffer.record(envelope["envelope_id"], envelope) is RecordResult.NEW
        assert buffer.pending(limit=2) == envelopes[:2]
        assert buffer.pending(limit=0) == []
        assert buffer.pending(limit=50) == envelopes
        buffer.complete("env-0")
        assert buffer.pending(limit=2) == envelopes[1:3]

    def test_pending_of_empty_buffer(self, buffer: EventBufferAdapter) -> None:
        assert buffer.pending() == []

    # -- concurrency -------------------------------------------------------

    def test_threads_racing_on_one_id_get_exactly_one_new(self, buffer: EventBufferAdapter) -> None:
        envelope = events_api_envelope("raced")
        results = _race(THREADS, lambda _: buffer.record("raced", envelope))
        assert results.count(RecordResult.NEW) == 1, results
        assert results.count(RecordResult.DUPLICATE) == THREADS - 1
        assert buffer.pending() == [envelope]

    def test_threads_racing_retries_of_one_event_get_exactly_one_new(
        self, buffer: EventBufferAdapter
    ) -> None:
        envelopes = [events_api_envelope(f"retry-{n}", event_id="EvRaced") for n in range(THREADS)]
        results = _race(THREADS, lambda n: buffer.record(envelopes[n]["envelope_id"], envelopes[n]))
        assert results.count(RecordResult.NEW) == 1, results
        winner = envelopes[results.index(RecordResult.NEW)]
        assert buffer.pending() == [winner]
        assert sum(buffer.seen(e["envelope_id"]) for e in envelopes) == 1

    # -- invalid input -----------------------------------------------------

    @pytest.mark.parametrize(
        "bad_id",
        ["", None, 42, "x" * (MAX_ENVELOPE_ID_LENGTH + 1), "nul\x00byte", b"bytes-id"],
        ids=["empty", "none", "int", "too-long", "nul", "bytes"],
    )
    def test_invalid_envelope_id_is_rejected_and_nothing_is_stored(
        self, buffer: EventBufferAdapter, bad_id: Any
    ) -> None:
        envelope = events_api_envelope("placeholder", event_id="EvInvalid")
        del envelope["envelope_id"]
        with pytest.raises(InvalidEnvelope):
            buffer.record(bad_id, envelope)
        assert buffer.pending() == []
        # Nothing was stored under the event id either.
        good = events_api_envelope("good", event_id="EvInvalid")
        assert buffer.record("good", good) is RecordResult.NEW

    def test_longest_valid_id_is_accepted(self, buffer: EventBufferAdapter) -> None:
        envelope_id = "x" * MAX_ENVELOPE_ID_LENGTH
        envelope = events_api_envelope(envelope_id, event_id="EvLong")
        assert buffer.record(envelope_id, envelope) is RecordResult.NEW
        assert buffer.seen(envelope_id)

    def test_malformed_json_text_is_rejected(self, buffer: EventBufferAdapter) -> None:
        with pytest.raises(InvalidEnvelope):
            buffer.record("env-1", '{"envelope_id": "env-1", ')
        with pytest.raises(InvalidEnvelope):
            buffer.record("env-1", "[1, 2]")
        assert not buffer.seen("env-1")
        assert buffer.record("env-1", events_api_envelope("env-1")) is RecordResult.NEW

    def test_oversize_envelope_is_rejected_and_the_next_is_recorded(
        self, buffer: EventBufferAdapter
    ) -> None:
        limit = int(getattr(buffer, "max_envelope_bytes", DEFAULT_MAX_ENVELOPE_BYTES))

        def sized(envelope_id: str, size: int) -> str:
            head = f'{{"envelope_id":"{envelope_id}","type":"events_api","payload":{{"pad":"'
            tail = '"}}'
            return head + "x" * (size - len(head) - len(tail)) + tail

        too_big = sized("too-big", limit + 1)
        assert len(too_big.encode("utf-8")) == limit + 1
        with pytest.raises(InvalidEnvelope, match="limit"):
            buffer.record("too-big", too_big)
        assert not buffer.seen("too-big")

        at_limit = sized("at-limit", limit)
        assert buffer.record("at-limit", at_limit) is RecordResult.NEW
        good = events_api_envelope("good")
        assert buffer.record("good", good) is RecordResult.NEW
        assert buffer.pending() == [json.loads(at_limit), good]

    def test_repeated_key_is_rejected_and_the_same_id_then_recorded(
        self, buffer: EventBufferAdapter
    ) -> None:
        # Last value wins in a lenient decoder: this would look redacted while
        # the stored text kept the secret.
        smuggled = (
            '{"envelope_id":"env-1","type":"events_api",'
            '"payload":{"token":"SECRET","token":"[redacted]"}}'
        )
        with pytest.raises(InvalidEnvelope, match=r"payload\.token"):
            buffer.record("env-1", smuggled)
        assert not buffer.seen("env-1")
        assert buffer.record("env-1", events_api_envelope("env-1")) is RecordResult.NEW

    def test_non_string_keys_are_rejected_not_coerced(self, buffer: EventBufferAdapter) -> None:
        envelope = events_api_envelope("env-1")
        for key in (1, True, None):
            with pytest.raises(InvalidEnvelope, match="not a string"):
                buffer.record("env-1", {**envelope, "payload": {key: "value"}})
        assert not buffer.seen("env-1")

    # -- backend failure ---------------------------------------------------

    def test_unavailable_backend_record_raises(
        self, unavailable_buffer: EventBufferAdapter
    ) -> None:
        with pytest.raises(StorageUnavailable):
            unavailable_buffer.record("env-1", events_api_envelope("env-1"))

    def test_unavailable_backend_seen_raises(self, unavailable_buffer: EventBufferAdapter) -> None:
        with pytest.raises(StorageUnavailable):
            unavailable_buffer.seen("env-1")

    def test_unavailable_backend_pending_raises(
        self, unavailable_buffer: EventBufferAdapter
    ) -> None:
        with pytest.raises(StorageUnavailable):
            unavailable_buffer.pending()

    def test_unavailable_backend_complete_and_delete_raise(
        self, unavailable_buffer: EventBufferAdapter
    ) -> None:
        with pytest.raises(StorageUnavailable):
            unavailable_buffer.complete("env-1")
        with pytest.raises(StorageUnavailable):
            unavailable_buffer.delete("env-1")

    def test_invalid_id_is_rejected_before_reaching_the_backend(
        self, unavailable_buffer: EventBufferAdapter
    ) -> None:
        with pytest.raises(InvalidEnvelope):
            unavailable_buffer.record("", events_api_envelope("env-1"))


class TTLConformance:
    """Rules for adapters whose dedupe window is a TTL (memory, Redis).

    Subclasses provide ``ttl_buffer`` (a fresh adapter with a short TTL) and
    ``let_ttl_pass`` (a callable that makes that TTL elapse, by sleeping or by
    moving an injected clock).
    """

    def test_seen_is_false_after_expiry(
        self, ttl_buffer: EventBufferAdapter, let_ttl_pass: Callable[[], None]
    ) -> None:
        assert ttl_buffer.record("env-1", events_api_envelope("env-1")) is RecordResult.NEW
        assert ttl_buffer.seen("env-1")
        let_ttl_pass()
        assert not ttl_buffer.seen("env-1")

    def test_record_after_expiry_is_new(
        self, ttl_buffer: EventBufferAdapter, let_ttl_pass: Callable[[], None]
    ) -> None:
        envelope = events_api_envelope("env-1")
        assert ttl_buffer.record("env-1", envelope) is RecordResult.NEW
        assert ttl_buffer.record("env-1", envelope) is RecordResult.DUPLICATE
        let_ttl_pass()
        assert ttl_buffer.record("env-1", envelope) is RecordResult.NEW
        assert ttl_buffer.pending() == [envelope]

    def test_event_id_expires_with_its_envelope(
        self, ttl_buffer: EventBufferAdapter, let_ttl_pass: Callable[[], None]
    ) -> None:
        assert ttl_buffer.record("env-1", events_api_envelope("env-1", event_id="EvT")) is (
            RecordResult.NEW
        )
        let_ttl_pass()
        retry = events_api_envelope("env-2", event_id="EvT")
        assert ttl_buffer.record("env-2", retry) is RecordResult.NEW

    def test_expired_envelope_leaves_pending(
        self, ttl_buffer: EventBufferAdapter, let_ttl_pass: Callable[[], None]
    ) -> None:
        old = events_api_envelope("old")
        assert ttl_buffer.record("old", old) is RecordResult.NEW
        assert ttl_buffer.pending() == [old]
        let_ttl_pass()
        fresh = events_api_envelope("fresh")
        assert ttl_buffer.record("fresh", fresh) is RecordResult.NEW
        assert ttl_buffer.pending() == [fresh]


def record_in_process(
    factory: Callable[[], EventBufferAdapter],
    barrier: Any,
    envelope_ids: list[str],
    results: Any,
) -> None:
    """Child-process body of :class:`CrossProcessConformance` (module level so it can be spawned)."""
    try:
        buffer = factory()
    except BaseException as exc:
        # Release the siblings waiting at the barrier instead of letting them time out.
        barrier.abort()
        results.put(f"building the adapter failed: {type(exc).__name__}: {exc}")
        raise
    try:
        barrier.wait(timeout=120)
        outcome = [
            (envelope_id, buffer.record(envelope_id, events_api_envelope(envelope_id)).value)
            for envelope_id in envelope_ids
        ]
        results.put(outcome)
    except BaseException as exc:
        barrier.abort()
        results.put(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        buffer.close()


class CrossProcessConformance:
    """Rules for adapters whose backend several processes share (SQL, Redis).

    Subclasses provide ``buffer`` and ``buffer_factory``: a picklable
    zero-argument callable (``functools.partial(MyAdapter, url)``) building a
    new adapter on the same backend as ``buffer``; the tests call it in
    spawned processes.
    """

    def test_another_instance_sees_what_one_recorded(
        self,
        buffer: EventBufferAdapter,
        buffer_factory: Callable[[], EventBufferAdapter],
    ) -> None:
        envelope = events_api_envelope("shared")
        assert buffer.record("shared", envelope) is RecordResult.NEW
        other = buffer_factory()
        try:
            assert other.seen("shared")
            assert other.record("shared", envelope) is RecordResult.DUPLICATE
            other.complete("shared")
        finally:
            other.close()
        assert buffer.pending() == []

    def test_processes_racing_on_the_same_ids_get_one_new_each(
        self,
        buffer: EventBufferAdapter,
        buffer_factory: Callable[[], EventBufferAdapter],
    ) -> None:
        envelope_ids = [f"proc-{n}" for n in range(CROSS_PROCESS_IDS)]
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(PROCESSES)
        results = context.Queue()
        processes = []
        for seed in range(PROCESSES):
            order = envelope_ids.copy()
            random.Random(seed).shuffle(order)
            process = context.Process(
                target=record_in_process, args=(buffer_factory, barrier, order, results)
            )
            process.start()
            processes.append(process)
        outcomes = list(_collect(results, PROCESSES, timeout=120))
        for process in processes:
            process.join(timeout=30)
        failures = [o for o in outcomes if isinstance(o, str)]
        assert not failures, failures
        new_per_id = dict.fromkeys(envelope_ids, 0)
        for outcome in outcomes:
            for envelope_id, result in outcome:
                new_per_id[envelope_id] += result == RecordResult.NEW.value
        assert new_per_id == dict.fromkeys(envelope_ids, 1)
        assert {e["envelope_id"] for e in buffer.pending()} == set(envelope_ids)


def _collect(results: Any, count: int, *, timeout: float) -> Iterator[Any]:
    for _ in range(count):
        try:
            yield results.get(timeout=timeout)
        except queue_module.Empty:
            pytest.fail(f"a recording process gave no answer within {timeout} s")
