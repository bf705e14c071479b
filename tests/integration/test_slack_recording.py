"""EnvelopeRecorder (what every listener does) and claim_stale, on real databases."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from recorder.adapters.sql import SQLEventBuffer
from recorder.errors import ConfigurationError, StorageUnavailable
from recorder.slack import RecorderMetrics
from recorder.slack.metrics import NO_METRICS
from recorder.slack.options import RecorderOptions
from recorder.slack.recording import EnvelopeRecorder, Outcome
from recorder.slack.spool import utc_now
from recorder.testing import TcpProxy
from recorder.testing.envelopes import EnvelopeFactory

factory = EnvelopeFactory(seed=7)


class WallClock:
    """A UTC clock for the buffer and the spool that moves only when told to."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def frame(envelope: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return envelope["envelope_id"], json.dumps(envelope), envelope


@pytest.fixture
def proxy(pg_server_url: str) -> Iterator[TcpProxy]:
    parts = urlsplit(pg_server_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as tcp_proxy:
        yield tcp_proxy


def recorder_for(
    buffer: SQLEventBuffer, tmp_path: Path, *, clock: Any = utc_now, **options: Any
) -> EnvelopeRecorder:
    options.setdefault("spool_path", tmp_path / "spool.db")
    options.setdefault("metrics", NO_METRICS)
    return EnvelopeRecorder(buffer, RecorderOptions(**options), clock=clock)


def test_unknown_policy_is_a_configuration_error(sqlite_url: str, tmp_path: Path) -> None:
    with (
        SQLEventBuffer(sqlite_url) as buffer,
        pytest.raises(ConfigurationError, match="spool, nack, raise"),
    ):
        recorder_for(buffer, tmp_path, on_storage_error="drop")


def test_invalid_envelope_is_rejected_not_acked_and_logged(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with SQLEventBuffer(sqlite_url, max_envelope_bytes=2000) as buffer:
        recorder = recorder_for(buffer, tmp_path)
        huge = factory.message("x" * 5000)
        with caplog.at_level(logging.ERROR, logger="recorder.slack"):
            outcome = recorder.record(*frame(huge))
        assert outcome is Outcome.REJECTED
        assert not outcome.ack
        assert not outcome.dispatch
        assert not buffer.seen(huge["envelope_id"])
        (record,) = [r for r in caplog.records if r.name == "recorder.slack"]
        assert record.envelope_id == huge["envelope_id"]  # type: ignore[attr-defined]
        # The next envelope is recorded as usual.
        assert recorder.record(*frame(factory.message("fine"))) is Outcome.NEW


def test_raise_policy_propagates_and_nack_policy_does_not_ack(
    pg_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    with SQLEventBuffer(proxy.url_for(pg_url)) as buffer:
        raising = recorder_for(buffer, tmp_path, on_storage_error="raise")
        nacking = recorder_for(buffer, tmp_path, on_storage_error="nack")
        proxy.cut()
        with pytest.raises(StorageUnavailable):
            raising.record(*frame(factory.message("a")))
        outcome = nacking.record(*frame(factory.message("b")))
        assert outcome is Outcome.NACKED
        assert not outcome.ack
        assert not (tmp_path / "spool.db").exists()
        assert nacking.stats.storage_errors == 1


def test_spooled_envelope_left_pending_by_a_crash_is_drained_and_recovered(
    pg_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    """A process spools an envelope, starts its handler, and dies; the next run recovers it."""
    handled_then_crashed, finished = factory.message("crash"), factory.message("done")
    clock = WallClock()
    with SQLEventBuffer(proxy.url_for(pg_url), clock=clock) as buffer:
        first_run = recorder_for(buffer, tmp_path, lease_seconds=60, clock=clock)
        proxy.cut()
        assert first_run.record(*frame(handled_then_crashed)) is Outcome.SPOOLED
        assert first_run.record(*frame(finished)) is Outcome.SPOOLED
        first_run.finish(finished["envelope_id"], ok=True)
        # A retransmit during the outage is a duplicate, however long it lasts.
        assert first_run.record(*frame(finished)) is Outcome.DUPLICATE
        first_run.close()  # the process "dies": no drain, one handler never finished
        proxy.restore()

        second_run = recorder_for(buffer, tmp_path, lease_seconds=60, clock=clock)
        second_run.open_existing_spool()
        # Spooled by the earlier run and not drained yet: still a duplicate.
        assert second_run.record(*frame(handled_then_crashed)) is Outcome.DUPLICATE
        assert second_run.drain() == 1  # the handled one; the other's lease still runs
        clock.advance(61)
        assert second_run.drain() == 1
        assert buffer.count_pending() == 1
        claims = second_run.claim_stale()
        assert [c.envelope_id for c in claims] == [handled_then_crashed["envelope_id"]]
        assert claims[0].attempts == 2
        second_run.finish(handled_then_crashed["envelope_id"], ok=True)
        second_run.flush()  # completions are batched; write this one now
        assert buffer.count_pending() == 0
        assert second_run.drain() == 0
        second_run.close()


def test_completion_owed_while_the_database_is_away_is_retried(
    pg_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    envelope = factory.message("complete me later")
    with SQLEventBuffer(proxy.url_for(pg_url)) as buffer:
        recorder = recorder_for(buffer, tmp_path)
        assert recorder.record(*frame(envelope)) is Outcome.NEW
        proxy.cut()
        recorder.finish(envelope["envelope_id"], ok=True)
        recorder.flush()  # the queued completion fails: logged, owed
        proxy.restore()
        assert buffer.count_pending() == 1
        recorder.tick()
        assert buffer.count_pending() == 0


def test_claim_stale_never_hands_one_envelope_to_two_claimers(database_url: str) -> None:
    with SQLEventBuffer(database_url) as buffer:
        ids = []
        for i in range(60):
            envelope = factory.message(f"stale {i}")
            buffer.record(envelope["envelope_id"], envelope)
            ids.append(envelope["envelope_id"])
        # Claimers an hour ahead with a half-hour lease: every envelope is
        # stale to them, and one they claimed is not stale again.
        later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
        claimers = [SQLEventBuffer(database_url, clock=lambda: later) for _ in range(4)]
        claimed: list[list[str]] = [[] for _ in claimers]
        start = threading.Barrier(len(claimers))

        def claim(index: int) -> None:
            start.wait()
            while True:
                batch = claimers[index].claim_stale(1800, limit=5)
                if not batch:
                    return
                claimed[index].extend(c.envelope_id for c in batch)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(claimers))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for claimer in claimers:
            claimer.close()
        every = [envelope_id for batch in claimed for envelope_id in batch]
        assert sorted(every) == sorted(ids)
        with buffer.engine.connect() as conn:
            attempts = conn.execute(sa.text("SELECT DISTINCT attempts FROM envelopes")).scalars()
            assert list(attempts) == [2]


def test_prometheus_metrics_and_structured_logs(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    metrics = RecorderMetrics(registry)
    envelope = factory.message("measured")
    with SQLEventBuffer(sqlite_url) as buffer:
        recorder = recorder_for(buffer, tmp_path, metrics=metrics)
        with caplog.at_level(logging.DEBUG, logger="recorder.slack"):
            assert recorder.record(*frame(envelope)) is Outcome.NEW
            assert recorder.record(*frame(envelope)) is Outcome.DUPLICATE
        recorder.acked(0.002)
        recorder.finish(envelope["envelope_id"], ok=True)
        recorder.flush()
        recorder.tick()

    def value(name: str, **labels: str) -> float:
        sample = registry.get_sample_value(name, labels or None)
        assert sample is not None, name
        return sample

    assert value("recorder_envelopes_total", result="new") == 1
    assert value("recorder_envelopes_total", result="duplicate") == 1
    assert value("recorder_handler_runs_total", result="ok") == 1
    assert value("recorder_record_seconds_count") == 1  # the duplicate needed no database call
    assert value("recorder_ack_seconds_bucket", le="0.0025") == 1
    assert value("recorder_pending_envelopes") == 0
    assert value("recorder_storage_errors_total") == 0
    outcomes = [
        (r.envelope_id, r.outcome)  # type: ignore[attr-defined]
        for r in caplog.records
        if hasattr(r, "outcome")
    ]
    assert outcomes == [(envelope["envelope_id"], "new"), (envelope["envelope_id"], "duplicate")]
