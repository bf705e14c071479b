"""Sealing and verification throughput on PostgreSQL, and a writer's latency while sealing.

Usage::

    .venv/bin/python bench/seal.py --postgres postgresql://postgres@127.0.0.1:5432/postgres

In one scratch database (dropped afterwards): load ``--rows`` realistic
envelopes (default 200,000) through the import path and ``ANALYZE`` them
(unless ``--unanalyzed``), then time

1. ``seal`` of everything (rows/s), then an incremental ``seal`` with nothing new;
2. ``verify`` of everything (rows/s): chain, per-envelope digests, reporting
   columns and the queryable copy;
3. a writer process calling ``record()`` back to back, alone and then while
   ``seal`` runs over fresh rows: the ratio of the two p99 latencies (a separate
   process, as a bot is: what is measured is the database's interference, not
   the GIL's).

With ``--steady N`` the third measure is instead taken over N alternations on
the same database: the writer records all along while the archive is sealed
in chunks of ``--chunk`` rows, each chunk followed by an idle pause as long as
``--idle``; the p99 of the calls that started during a seal is compared with
the p99 of those that started in the pauses (from ``--settle`` seconds after
a seal ended, so that a seal's tail is not counted as idle). ``--floor``
adds, after each seal and its pause, a CPU-bound process at the lowest
priority for as long as the seal took (and another pause): what the
machine's two cores cost the writer with no database work at all. A single short
window (the default measure) moves with whatever else the machine does in
that second; the alternation puts both sides through the same minutes.

Figures go to stdout as JSON; not part of CI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from recorder import db
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.envelope import parse_envelope
from recorder.seal import seal
from recorder.verify import verify

UTC = dt.timezone.utc


def envelope(n: int) -> dict[str, Any]:
    return {
        "envelope_id": f"b-{n:08d}",
        "type": "events_api",
        "accepts_response_payload": False,
        "payload": {
            "token": "XXYYZZ",
            "team_id": "T0001",
            "api_app_id": "A0001",
            "event": {
                "type": "message",
                "user": f"U{n % 5000:05d}",
                "channel": f"C{n % 500:04d}",
                "text": "a realistic message of some length " * 20,
                "ts": f"{1700000000 + n}.000100",
            },
            "type": "event_callback",
            "event_id": f"Ev{n:010d}",
            "event_time": 1700000000 + n,
        },
        "retry_attempt": 0,
        "retry_reason": "",
    }


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def writer_latencies(url: str, seconds: float, stop: Any) -> list[float]:
    """Run in a child process: record() back to back until ``stop`` or ``seconds``."""
    return [latency for _, latency in timed_writer(url, seconds, stop)]


def timed_writer(url: str, seconds: float, stop: Any) -> list[tuple[float, float]]:
    """Run in a child process: record() back to back; (start, latency) of each call.

    ``time.monotonic`` is the system's monotonic clock, so the parent can
    place each call in its own windows.
    """
    buffer = SQLEventBuffer(url)
    calls: list[tuple[float, float]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        n = uuid.uuid4().int % 10**12
        item = {"type": "events_api", "payload": {"event": {"type": "message"}}}
        at = time.monotonic()
        start = time.perf_counter()
        buffer.record(f"w-{n}", item)
        calls.append((at, time.perf_counter() - start))
    buffer.close()
    return calls


def spin(seconds: float) -> None:
    """A process at the lowest priority busy on one core, as long as the seal took.

    What any CPU-bound neighbour costs the writer on this machine, with no
    database work and no WAL: the floor under the seal's ratio.
    """
    code = (
        "import os, time\nos.nice(19)\n"
        f"end = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def steady(
    url: str,
    engine: Any,
    start_at: dt.datetime,
    batches: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The writer's p99 during chunked seals against its p99 in the pauses between them."""
    per_chunk = max(1, args.chunk // 5000)
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(1)
    manager = context.Manager()
    stop = manager.Event()
    pending = pool.apply_async(timed_writer, (url, 3600, stop))
    time.sleep(2)  # the writer is up and running
    sealing: list[tuple[float, float]] = []
    spinning: list[tuple[float, float]] = []
    idle: list[tuple[float, float]] = []
    sealed = 0
    seal_seconds = 0.0
    done = 0
    for _ in range(args.steady):
        if done >= batches:
            break
        done = min(batches, done + per_chunk)
        pause_from = time.monotonic()
        time.sleep(args.idle)
        idle.append((pause_from + args.settle, time.monotonic()))
        started = time.monotonic()
        # rows of batch k were received at start_at + k ms; seal through the chunk
        now = start_at + dt.timedelta(milliseconds=done) + dt.timedelta(seconds=60)
        sealed += seal(engine, now=now).sealed
        ended = time.monotonic()
        seal_seconds += ended - started
        sealing.append((started, ended))
        if args.floor:
            pause_from = time.monotonic()
            time.sleep(args.idle)
            idle.append((pause_from + args.settle, time.monotonic()))
            spun_from = time.monotonic()
            spin(ended - started)
            spinning.append((spun_from, time.monotonic()))
    pause_from = time.monotonic()
    time.sleep(args.idle)
    idle.append((pause_from + args.settle, time.monotonic()))
    stop.set()
    calls = pending.get()
    pool.close()
    pool.join()
    manager.shutdown()

    def within(windows: list[tuple[float, float]]) -> list[float]:
        return [lat for at, lat in calls if any(lo <= at < hi for lo, hi in windows)]

    during, quiet = within(sealing), within(idle)
    floor: dict[str, Any] = {}
    if spinning:
        spun = within(spinning)
        floor = {
            "steady_calls_cpu_only": len(spun),
            "steady_writer_p99_ms_cpu_only": round(p99(spun) * 1000, 2),
            "steady_writer_p99_ratio_cpu_only": round(p99(spun) / p99(quiet), 2),
            # the seal's own share, over what any busy core costs the writer here
            "steady_writer_p99_ratio_seal_to_cpu_only": round(p99(during) / p99(spun), 2),
        }
    return floor | {
        "steady_chunks": len(sealing),
        "steady_sealed": sealed,
        "steady_seal_rows_per_s": round(sealed / seal_seconds) if seal_seconds else None,
        "steady_calls_sealing": len(during),
        "steady_calls_idle": len(quiet),
        "steady_writer_p50_ms_idle": round(statistics.median(quiet) * 1000, 2),
        "steady_writer_p50_ms_sealing": round(statistics.median(during) * 1000, 2),
        "steady_writer_p99_ms_idle": round(p99(quiet) * 1000, 2),
        "steady_writer_p99_ms_sealing": round(p99(during) * 1000, 2),
        "steady_writer_p99_ratio": round(p99(during) / p99(quiet), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument(
        "--steady", type=int, default=0, metavar="N", help="alternate N chunked seals and pauses"
    )
    parser.add_argument("--chunk", type=int, default=50_000, help="rows per chunk (--steady)")
    parser.add_argument("--idle", type=float, default=1.0, help="seconds of each pause")
    parser.add_argument("--settle", type=float, default=0.3, help="seconds not counted as idle")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="after each seal and pause, a CPU-bound process at nice 19 for as long (--steady)",
    )
    parser.add_argument(
        "--unanalyzed",
        action="store_true",
        help="leave the loaded table without statistics, as a bulk import does "
        "until autovacuum analyzes it",
    )
    args = parser.parse_args()

    name = f"recorder_bench_seal_{uuid.uuid4().hex[:6]}"
    admin = make_url(args.postgres).set(drivername="postgresql")
    libpq = admin.render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin.set(database=name).render_as_string(hide_password=False)
    figures: dict[str, Any] = {"rows": args.rows}
    try:
        db.upgrade(url)
        engine = create_engine(url)
        start_at = dt.datetime.now(UTC) - dt.timedelta(days=1)
        batch_no = [0]

        base = [start_at]

        def clock() -> dt.datetime:
            return base[0] + dt.timedelta(milliseconds=batch_no[0])

        loader = SQLEventBuffer(engine, clock=clock)
        for first in range(0, args.rows, 5000):
            batch_no[0] += 1
            parsed = [
                parse_envelope(f"b-{n:08d}", envelope(n), redaction=loader.redaction)
                for n in range(first, min(first + 5000, args.rows))
            ]
            loader.record_many(parsed)
        if not args.unanalyzed:
            # begin(), not connect(): ANALYZE in a transaction rolled back
            # leaves no statistics (this script measured without them until
            # session 6).
            with engine.begin() as sa_conn:
                sa_conn.exec_driver_sql("ANALYZE")

        if args.steady:
            figures.update(steady(url, engine, start_at, batch_no[0], args))
            engine.dispose()
            return

        started = time.perf_counter()
        report = seal(engine)
        elapsed = time.perf_counter() - started
        figures["seal_rows_per_s"] = round(report.sealed / elapsed)
        started = time.perf_counter()
        assert seal(engine).sealed == 0
        figures["incremental_seal_nothing_new_ms"] = round(
            (time.perf_counter() - started) * 1000, 1
        )

        started = time.perf_counter()
        result = verify(engine)
        elapsed = time.perf_counter() - started
        assert result.ok, result.findings[:3]
        figures["verify_rows_per_s"] = round(result.sealed / elapsed)

        context = multiprocessing.get_context("spawn")
        pool = context.Pool(1)
        manager = context.Manager()
        alone = pool.apply(writer_latencies, (url, 5, manager.Event()))
        # fresh rows for the seal to work on while the writer runs, dated after
        # the first seal's cutoff (a row dated behind it is never sealed unnamed)
        base[0] = dt.datetime.now(UTC) - dt.timedelta(seconds=30)
        for first in range(args.rows, args.rows + 50_000, 5000):
            batch_no[0] += 1
            loader.record_many(
                [parse_envelope(f"b-{n:08d}", envelope(n)) for n in range(first, first + 5000)]
            )
        stop = manager.Event()
        pending = pool.apply_async(writer_latencies, (url, 120, stop))
        time.sleep(1)  # the writer is up and running
        started = time.perf_counter()
        sealed = seal(engine, margin=dt.timedelta(0)).sealed
        seal_seconds = time.perf_counter() - started
        stop.set()
        during = pending.get()
        pool.close()
        pool.join()
        manager.shutdown()
        figures["writer_p99_ms_alone"] = round(p99(alone) * 1000, 2)
        figures["writer_p99_ms_while_sealing"] = round(p99(during) * 1000, 2)
        figures["writer_p99_ratio"] = round(p99(during) / p99(alone), 2)
        figures["sealed_while_writing"] = sealed
        figures["seal_seconds_while_writing"] = round(seal_seconds, 2)
        engine.dispose()
    finally:
        print(json.dumps(figures, indent=2))
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
