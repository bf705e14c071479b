"""Exactly-once under stress: shared databases, outages, failing handlers, killed processes.

Leases and recovery run on clocks the tests move (a ManualClock, or a
FileClock shared with a bot process), so a lease expires when a test says and
never because the machine is slow; the tests wait for what should happen with
conditions, and check what should not with a recovery run after the clock
has moved past every lease.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from recorder.adapters.sql import SQLEventBuffer
from recorder.testing import ManualClock, SocketModeSimulator, TcpProxy
from tests.integration.killable_bot import FileClock
from tests.integration.slack_bots import (
    Calls,
    RecordingBot,
    delivery_keys,
    mixed_stream,
    recording_handler,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
#: The lease, in the tests' clock seconds; the clock moves only when a test moves it.
LEASE = 60.0


@pytest.fixture
def pg_buffer(pg_url: str) -> Iterator[SQLEventBuffer]:
    with SQLEventBuffer(pg_url) as buffer:
        yield buffer


@pytest.fixture
def proxy(pg_server_url: str) -> Iterator[TcpProxy]:
    parts = urlsplit(pg_server_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as tcp_proxy:
        yield tcp_proxy


def attempts_of(buffer: SQLEventBuffer, envelope_id: str) -> tuple[str, int]:
    with buffer.engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT status, attempts FROM envelopes WHERE envelope_id = :id"),
            {"id": envelope_id},
        ).one()
    return row[0], row[1]


def claimed_at(buffer: SQLEventBuffer, envelope_id: str) -> dt.datetime | None:
    with buffer.engine.connect() as conn:
        value: dt.datetime | None = conn.execute(
            sa.text("SELECT claimed_at FROM envelopes WHERE envelope_id = :id"),
            {"id": envelope_id},
        ).scalar_one()
    return value


def renewed_after(buffer: SQLEventBuffer, envelope_id: str, when: dt.datetime) -> bool:
    stamp = claimed_at(buffer, envelope_id)
    return stamp is not None and stamp > when


def recorded_keys(buffer: SQLEventBuffer) -> set[str]:
    """The event id (else the envelope id) of every recorded envelope."""
    with buffer.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT envelope_id, event_id FROM envelopes")).all()
    return {event_id or envelope_id for envelope_id, event_id in rows}


def test_two_instances_sharing_postgresql_handle_each_envelope_once(
    pg_url: str, tmp_path: Path
) -> None:
    calls = Calls()
    with SocketModeSimulator(redeliver_after=None, seed=11) as sim:
        buffers = [SQLEventBuffer(pg_url), SQLEventBuffer(pg_url)]
        bots = [
            RecordingBot(kind, sim, buffer, recording_handler(calls), spool_path=tmp_path / kind)
            for kind, buffer in zip(("builtin", "aiohttp"), buffers, strict=True)
        ]
        try:
            for bot in bots:
                bot.start()
            sim.wait_for_connections(2)
            envelopes = mixed_stream(sim, 50)
            for envelope in envelopes:
                assert len(sim.broadcast(envelope)) == 2
            sim.wait_for_acks(100, timeout=15)
            calls.wait_for(50)
        finally:
            # Stopping waits for running handlers: a wrongly dispatched copy is counted.
            for bot in bots:
                bot.stop()
            for buffer in buffers:
                buffer.close()
    assert len(calls) == 50
    assert calls.event_counts() == delivery_keys(envelopes)
    # Both instances saw and acked every envelope.
    assert collections.Counter(a.envelope_id for a in sim.acks) == {
        e["envelope_id"]: 2 for e in envelopes
    }
    handled_by = [bot.listener.stats.handled for bot in bots]
    assert sum(handled_by) == 50


def test_spool_while_postgresql_is_away_then_drain(
    pg_url: str, pg_buffer: SQLEventBuffer, proxy: TcpProxy, tmp_path: Path
) -> None:
    calls = Calls()
    spool = tmp_path / "spool.db"
    clock = ManualClock()
    with SocketModeSimulator(redeliver_after=None, seed=12) as sim:
        through_proxy = SQLEventBuffer(proxy.url_for(pg_url), clock=clock.now)
        bot = RecordingBot(
            "builtin",
            sim,
            through_proxy,
            recording_handler(calls),
            spool_path=spool,
            lease_seconds=LEASE,
            recovery_interval=10,
            monotonic=clock.monotonic,
            clock=clock.now,
        )
        with bot:
            sim.wait_for_connections(1)
            before, during, after = (mixed_stream(sim, n) for n in (15, 15, 10))
            for envelope in before:
                sim.send(envelope)
            sim.wait_for_acks(15)

            proxy.cut()
            for envelope in during:
                sim.send(envelope)
            for envelope in before[:5] + during[:5]:
                sim.retransmit(envelope["envelope_id"])
            for envelope in [e for e in during if e["type"] == "events_api"][5:8]:
                sim.retry(envelope)
            sim.wait_for_acks(15 + 15 + 10 + 3, timeout=15)
            assert bot.listener.stats.outcomes["spooled"] == 15

            proxy.restore()
            for envelope in after:
                sim.send(envelope)
            for envelope in during[5:8]:
                sim.retransmit(envelope["envelope_id"])
            sim.wait_for_acks(15 + 15 + 10 + 3 + 10 + 3, timeout=15)
            everything = before + during + after
            wait_until(
                lambda: recorded_keys(pg_buffer) == set(delivery_keys(everything)),
                timeout=15,
                what="the spool to drain into PostgreSQL",
            )
            calls.wait_for(40)
            wait_until(lambda: pg_buffer.count_pending() == 0, what="the completions")
            # Every lease runs out: nothing drained or recorded is left to recover.
            clock.advance(2 * LEASE)
            assert bot.recover() == 0
        through_proxy.close()

    assert calls.event_counts() == delivery_keys(everything)
    assert pg_buffer.count_pending() == 0
    # Handled from the spool and drained as done: recorded once, never re-dispatched.
    with pg_buffer.engine.connect() as conn:
        states = conn.execute(sa.text("SELECT status, attempts FROM envelopes")).all()
    assert collections.Counter(tuple(row) for row in states) == {("done", 1): 40}
    assert bot.listener.stats.drained == 15
    assert bot.listener.stats.recovered == 0


def test_nack_while_postgresql_is_away_lets_slack_redeliver(
    pg_url: str, pg_buffer: SQLEventBuffer, proxy: TcpProxy, tmp_path: Path
) -> None:
    calls = Calls()
    with SocketModeSimulator(redeliver_after=0.6, max_retries=6, seed=13) as sim:
        through_proxy = SQLEventBuffer(proxy.url_for(pg_url))
        bot = RecordingBot(
            "aiohttp",
            sim,
            through_proxy,
            recording_handler(calls),
            on_storage_error="nack",
            spool_path=tmp_path / "spool.db",
        )
        with bot:
            sim.wait_for_connections(1)
            proxy.cut()
            envelopes = [sim.envelopes.message(f"during outage {i}") for i in range(10)]
            for envelope in envelopes:
                sim.send(envelope)
            # Slack's first redelivery comes and goes while the database is still away.
            wait_until(
                lambda: sum(d.kind == "redelivery" for d in sim.deliveries) >= 10,
                what="redeliveries during the outage",
            )
            assert sim.acks == []
            assert len(calls) == 0

            proxy.restore()
            sim.wait_until_acked(timeout=15)
            calls.wait_for(10)
        # Stopped (running handlers waited for): a handler run twice is counted below.
        through_proxy.close()

    assert calls.event_counts() == delivery_keys(envelopes)
    assert all(request.retry_attempt for request in calls.requests)
    assert bot.listener.stats.outcomes["nacked"] > 10
    assert pg_buffer.count_pending() == 0
    assert not (tmp_path / "spool.db").exists()


def test_failed_handler_is_recovered_once_by_another_instance(
    pg_url: str, pg_buffer: SQLEventBuffer, tmp_path: Path
) -> None:
    failing, recovering = Calls(), Calls()
    failures: list[str] = []

    def always_fails(client: object, request: object) -> None:
        failures.append(request.envelope_id)  # type: ignore[attr-defined]
        raise RuntimeError("boom")

    clock = ManualClock()
    with SocketModeSimulator(redeliver_after=None, seed=14) as sim:
        buffer_a = SQLEventBuffer(pg_url, clock=clock.now)
        buffer_b = SQLEventBuffer(pg_url, clock=clock.now)
        bot_a = RecordingBot(
            "builtin",
            sim,
            buffer_a,
            always_fails,
            spool_path=tmp_path / "a",
            lease_seconds=LEASE,
            recovery_interval=3600,
            monotonic=clock.monotonic,
            clock=clock.now,
        )
        bot_b = RecordingBot(
            "aiohttp",
            sim,
            buffer_b,
            recording_handler(recovering),
            spool_path=tmp_path / "b",
            lease_seconds=LEASE,
            recovery_interval=10,
            monotonic=clock.monotonic,
            clock=clock.now,
        )
        try:
            bot_a.start()
            (connection_a,) = sim.wait_for_connections(1)
            bot_b.start()
            sim.wait_for_connections(2)
            target = sim.envelopes.message("fails the first time")
            sim.send(target, connection=connection_a)
            sim.wait_for_acks(1)
            # A's handler has failed and let go of the envelope (no renewals for it).
            wait_until(
                lambda: (
                    bot_a.listener.stats.failed == 1 and not bot_a.listener.recorder.inflight.ids()
                ),
                what="the failed handler to finish",
            )
            clock.advance(LEASE + 1)  # the lease runs out; B's next recovery is due
            recovering.wait_for(1)
            wait_until(
                lambda: attempts_of(pg_buffer, target["envelope_id"]) == ("done", 2),
                what="the recovered run's completion",
            )
            clock.advance(2 * LEASE)  # more leases: nobody runs it again
            assert bot_a.recover() == 0
            assert bot_b.recover() == 0
        finally:
            bot_a.stop()
            bot_b.stop()
            buffer_a.close()
            buffer_b.close()

    assert failures == [target["envelope_id"]]
    assert recovering.counts() == {target["envelope_id"]: 1}
    assert len(failing) == 0
    assert attempts_of(pg_buffer, target["envelope_id"]) == ("done", 2)


def test_process_killed_mid_handler_is_recovered_once_by_another_instance(
    pg_url: str, pg_buffer: SQLEventBuffer, tmp_path: Path
) -> None:
    marker = tmp_path / "started.txt"
    recovering = Calls()
    clock = FileClock(tmp_path / "clock")
    clock.set(time.time())
    with SocketModeSimulator(redeliver_after=None, seed=15) as sim:
        process = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("killable_bot.py")),
                sim.api_url,
                sim.app_token,
                pg_url,
                str(tmp_path / "spool-a.db"),
                str(marker),
                str(LEASE),
                str(clock.path),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        buffer_b = SQLEventBuffer(pg_url, clock=clock.now)
        bot_b = RecordingBot(
            "builtin",
            sim,
            buffer_b,
            recording_handler(recovering),
            spool_path=tmp_path / "spool-b.db",
            lease_seconds=LEASE,
            recovery_interval=10,
            monotonic=clock.monotonic,
            clock=clock.now,
        )
        try:
            (connection_a,) = sim.wait_for_connections(1, timeout=20)
            bot_b.start()
            sim.wait_for_connections(2)
            target = sim.envelopes.message("interrupted")
            sim.send(target, connection=connection_a)
            sim.wait_for_acks(1)
            wait_until(marker.exists, what="the handler to start in the bot process")
            # While the process lives it renews its claim: nobody takes over. Each
            # step is shorter than a lease, so B's recovery (due at every step)
            # finds the claim fresh whether or not A has renewed it yet.
            for _ in range(4):
                clock.advance(0.6 * LEASE)
                step = clock.now() - dt.timedelta(milliseconds=1)
                wait_until(
                    functools.partial(renewed_after, pg_buffer, target["envelope_id"], step),
                    timeout=30,
                    what="the bot process to renew its claim",
                )
                assert len(recovering) == 0
            assert bot_b.recover() == 0
            assert attempts_of(pg_buffer, target["envelope_id"]) == ("pending", 1)

            process.send_signal(signal.SIGKILL)
            process.wait(10)
            clock.advance(LEASE + 1)  # its last renewal's lease runs out
            recovering.wait_for(1)
            wait_until(
                lambda: attempts_of(pg_buffer, target["envelope_id"]) == ("done", 2),
                what="the recovered run's completion",
            )
            clock.advance(2.5 * LEASE)  # more leases pass: it is not run again
            assert bot_b.recover() == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            bot_b.stop()
            buffer_b.close()

    assert marker.read_text().split() == [target["envelope_id"]]
    assert recovering.counts() == {target["envelope_id"]: 1}
    assert attempts_of(pg_buffer, target["envelope_id"]) == ("done", 2)
