"""The spool keeps the buffer's promises: its parser, no poison row blocking, no lost completion."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from slack_sdk.socket_mode.client import BaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest

from recorder.adapters import MemoryEventBuffer, SQLEventBuffer
from recorder.envelope import Redaction
from recorder.slack import RecorderMetrics, RecordingListener
from recorder.slack.metrics import NO_METRICS, Metrics
from recorder.slack.options import RecorderOptions
from recorder.slack.recording import EnvelopeRecorder, Outcome
from recorder.slack.spool import Spool, utc_now
from recorder.testing import ManualClock, TcpProxy
from recorder.testing.envelopes import EnvelopeFactory

factory = EnvelopeFactory(seed=11)
SECRET = "xoxb-spooled-secret-0001"
PRIVATE = "the private words nobody may keep"


@pytest.fixture
def proxy(pg_server_url: str) -> Iterator[TcpProxy]:
    parts = urlsplit(pg_server_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as tcp_proxy:
        yield tcp_proxy


def frame(envelope: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return envelope["envelope_id"], json.dumps(envelope), envelope


def recorder_for(
    buffer: Any,
    spool_path: Path,
    metrics: Metrics = NO_METRICS,
    clock: Callable[[], dt.datetime] = utc_now,
    **options: Any,
) -> EnvelopeRecorder:
    return EnvelopeRecorder(
        buffer, RecorderOptions(spool_path=spool_path, metrics=metrics, **options), clock=clock
    )


def spool_bytes(path: Path) -> bytes:
    """The spool file and its WAL, as they sit on disk."""
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def test_spool_applies_the_buffer_redaction_and_size_limit_before_touching_disk(
    pg_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    spool_path = tmp_path / "spool.db"
    envelope = factory.message(PRIVATE)
    envelope["payload"]["token"] = SECRET
    redaction = Redaction.parse("default,drop:payload.event.text")
    with SQLEventBuffer(
        proxy.url_for(pg_url), redaction=redaction, max_envelope_bytes=4000
    ) as buffer:
        recorder = recorder_for(buffer, spool_path)
        proxy.cut()
        assert recorder.record(*frame(envelope)) is Outcome.SPOOLED
        # Over the buffer's limit: refused as the database would, not spooled.
        huge = factory.message("x" * 5000)
        assert recorder.record(*frame(huge)) is Outcome.REJECTED
        recorder.finish(envelope["envelope_id"], ok=True)
        on_disk = spool_bytes(spool_path)
        assert envelope["envelope_id"].encode() in on_disk
        assert SECRET.encode() not in on_disk
        assert PRIVATE.encode() not in on_disk
        assert huge["envelope_id"].encode() not in on_disk
        proxy.restore()
        assert recorder.drain() == 1
        recorder.close()
        with buffer.engine.connect() as conn:
            (text,) = conn.execute(sa.text("SELECT envelope_text FROM envelopes")).scalars()
            stored = conn.execute(sa.text("SELECT envelope::text FROM envelopes")).scalar_one()
    for value in (text, stored):
        assert SECRET not in value
        assert PRIVATE not in value
    assert json.loads(text)["payload"]["event"].get("text") is None


def test_a_poison_row_is_quarantined_reported_once_and_never_delays_the_others(
    pg_url: str, proxy: TcpProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_path = tmp_path / "spool.db"
    registry = CollectorRegistry()
    first, second = factory.message("before"), factory.message("after")
    poison = factory.message("poison")
    del poison["payload"]["token"]  # nothing to redact: the text is kept as received
    # A number PostgreSQL's jsonb cannot hold (numeric overflows); JSON allows it.
    poison_text = json.dumps(poison)[:-1] + ', "n": 1e1000000}'
    with SQLEventBuffer(proxy.url_for(pg_url)) as buffer:
        recorder = recorder_for(buffer, spool_path, RecorderMetrics(registry))
        proxy.cut()
        assert recorder.record(*frame(first)) is Outcome.SPOOLED
        assert recorder.record(poison["envelope_id"], poison_text, poison) is Outcome.SPOOLED
        assert recorder.record(*frame(second)) is Outcome.SPOOLED
        for envelope in (first, poison, second):
            recorder.finish(envelope["envelope_id"], ok=True)
        proxy.restore()
        with caplog.at_level(logging.INFO, logger="recorder.slack"):
            assert recorder.drain() == 2
            assert recorder.drain() == 0
            recorder.tick()
        assert buffer.seen(first["envelope_id"])
        assert buffer.seen(second["envelope_id"])
        assert not buffer.seen(poison["envelope_id"])
        # A retransmit of the quarantined envelope is still a duplicate.
        assert recorder.record(*frame(poison)) is Outcome.DUPLICATE
        recorder.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.envelope_id for r in errors] == [poison["envelope_id"]]  # type: ignore[attr-defined]
    assert "quarantined" in errors[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]  # no traceback, ever
    assert registry.get_sample_value("recorder_spool_quarantined_total") == 1
    spool = Spool(spool_path)
    try:
        (held,) = spool.quarantined()
        assert held.envelope_id == poison["envelope_id"]
        assert "refused" in held.reason
        assert held.stored.envelope_text == poison_text
        assert held.stored.status == "done"
        assert spool.depth() == 0
    finally:
        spool.close()


def test_a_row_over_a_later_size_limit_is_quarantined_and_can_be_retried(
    tmp_path: Path, sqlite_url: str
) -> None:
    """A spool left by a run with a larger limit; the next run's buffer refuses one row."""
    spool_path = tmp_path / "spool.db"
    big, small = factory.message("y" * 3000), factory.message("small")
    clock = ManualClock()
    with SQLEventBuffer(sqlite_url, max_envelope_bytes=8000) as roomy:
        spool = Spool(spool_path, clock=clock.now)
        for envelope in (big, small):
            spool.record(roomy.parse(envelope["envelope_id"], json.dumps(envelope)))
        spool.close()
    # The run that spooled them is gone: once their lease is over they are drained.
    clock.advance(61)
    with SQLEventBuffer(sqlite_url, max_envelope_bytes=2000) as strict:
        recorder = recorder_for(strict, spool_path, lease_seconds=60, clock=clock.now)
        recorder.open_existing_spool()
        assert recorder.drain() == 1
        assert strict.seen(small["envelope_id"])
        recorder.close()
    spool = Spool(spool_path)
    try:
        (held,) = spool.quarantined()
        assert held.envelope_id == big["envelope_id"]
        assert "limit" in held.reason
        assert spool.retry([big["envelope_id"]]) == 1
        assert spool.quarantined() == []
        assert spool.depth() == 1
    finally:
        spool.close()
    # The operator raised the limit: the retried row drains.
    with SQLEventBuffer(sqlite_url, max_envelope_bytes=8000) as roomy:
        recorder = recorder_for(roomy, spool_path, lease_seconds=60, clock=clock.now)
        assert recorder.drain() == 1
        assert roomy.seen(big["envelope_id"])
        recorder.close()


def test_a_completion_after_close_is_written(sqlite_url: str, tmp_path: Path) -> None:
    envelope = factory.message("finished late")
    with SQLEventBuffer(sqlite_url) as buffer:
        recorder = recorder_for(buffer, tmp_path / "spool.db")
        assert recorder.record(*frame(envelope)) is Outcome.NEW
        recorder.close()
        recorder.finish(envelope["envelope_id"], ok=True)
        assert buffer.count_pending() == 0


def test_a_spooled_completion_after_close_is_written_in_the_spool(
    pg_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    envelope = factory.message("spooled, finished late")
    spool_path = tmp_path / "spool.db"
    with SQLEventBuffer(proxy.url_for(pg_url)) as buffer:
        recorder = recorder_for(buffer, spool_path)
        proxy.cut()
        assert recorder.record(*frame(envelope)) is Outcome.SPOOLED
        recorder.close()
        recorder.finish(envelope["envelope_id"], ok=True)
    spool = Spool(spool_path)
    try:
        (row,) = spool.drainable(3600, [], 10)  # done rows are drainable at once
        assert (row.envelope_id, row.status) == (envelope["envelope_id"], "done")
    finally:
        spool.close()


def test_listener_closed_without_waiting_still_completes_running_handlers(
    tmp_path: Path,
) -> None:
    release, finished = threading.Event(), threading.Event()
    buffer = MemoryEventBuffer()

    def slow(client: Any, request: Any) -> None:
        release.wait(30)

    listener = RecordingListener(buffer, slow, spool_path=tmp_path / "spool.db")
    # Dispatched as the client would, without a connection: record, then run.
    envelope = factory.message("outlives close")
    outcome = listener.recorder.record(*frame(envelope))
    assert outcome is Outcome.NEW
    request = SocketModeRequest.from_dict(envelope)
    assert request is not None
    # no connection: _run only hands the client to the handler, and slow() ignores it
    no_client = cast(BaseSocketModeClient, None)
    future = listener._pool.submit(listener._run, no_client, request)
    future.add_done_callback(lambda _: finished.set())
    listener.close(wait=False)
    assert buffer.count_pending() == 1
    release.set()
    assert finished.wait(30)
    assert buffer.count_pending() == 0
