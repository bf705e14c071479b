"""Scale: a million envelopes in PostgreSQL; audit query, stats, and pruning beside a live writer.

Usage::

    .venv/bin/python bench/scale.py --postgres postgresql://postgres@127.0.0.1:5432/postgres

What it does, in one run (a few minutes; not part of CI):

1. **Load** ``--rows`` (default 1,000,000) realistic envelopes into a scratch
   database through the import path (:func:`recorder.importer.import_envelopes`
   over JSON Lines: worker processes parse, then ``SQLEventBuffer.import_rows``
   COPYs into a staging table and runs ``INSERT ... SELECT ... ON CONFLICT DO
   NOTHING``), spread evenly
   over the last 60 days (the buffer's clock advances one step per batch).
   500 channels, 5,000 users, three teams; events_api (message, app_mention,
   reaction_added), slash commands and interactive payloads; 1% retries.
   Then ``VACUUM ANALYZE``, as autovacuum would.
2. **Query**: every envelope of one channel over one UTC day, through
   :func:`recorder.audit.query_envelopes` (what ``recorder query`` streams),
   median and p95 of 20 runs after one warm-up. Target < 50 ms.
3. **Stats**: :func:`recorder.stats.daily_counts` over 30 days by type and by
   channel (median of 3), and the ``recorder stats`` command end to end
   (process start included). Target < 2 s.
4. **Prune**: policy ``keep 30d`` (about half the rows expire) and a legal
   hold on one channel. The database is cloned (``CREATE DATABASE ...
   TEMPLATE``) so that both contenders start from the same rows:
   ``recorder.retention.prune`` in batches on the clone, and a naive single
   ``DELETE`` of the same rows on the original. During each, a writer thread
   calls ``SQLEventBuffer.record()`` back to back, and its latencies are
   compared with a writer-alone baseline. Targets: >= 20,000 rows/s and a
   writer p99 < 50 ms.

5. **Seal and verify** (before pruning): a warm in-database SHA-256 scan of
   every stored text (``SELECT ... sha256(convert_to(envelope_text, 'UTF8'))``,
   the baseline: what the server itself needs to hash the archive once), then
   ``recorder.seal.seal`` of every row, an incremental seal with nothing new,
   and ``recorder.verify.verify`` of everything (as it runs by default, then
   on one connection); each as rows/s and as a ratio to the baseline in the
   same run. ``--walk`` also times verify's row-by-row Python walk
   (``server_side=False``; slow, for small runs).

**The scaling curve** (``--curve 100000,1000000``) instead loads each size
into a fresh database through the import path (timed: ``--jobs`` worker
processes parse, COPY writes), then times the channel/day query (median of
20), ``seal`` and ``verify`` of every row, and a batched prune of the rows
older than 30 days (about half, a writer process recording meanwhile), and
prints a table: seconds and rows/s per step at each size, how much each
step's time grew against the rows (linear: as much; the query: flat), and a
linear extrapolation to ``--extrapolate`` rows (10,000,000 by default),
labelled as not measured.

``--sections`` picks what runs (default all: ``query,stats,seal,prune``);
``--database NAME`` reuses a database an earlier ``--keep`` run loaded (no
load, kept afterwards), so one costly load serves several runs.

The scratch databases are dropped afterwards unless ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from recorder import audit, db, retention, seal, statements, stats, verify
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.importer import import_envelopes
from recorder.schema import prune_runs

UTC = dt.timezone.utc
DAY = dt.timedelta(days=1)
SPAN_DAYS = 60
CHANNELS = 500
USERS = 5000
IMPORT_BATCH = 2000


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def database_url(server: str, name: str) -> str:
    return (
        make_url(server)
        .set(drivername="postgresql", database=name)
        .render_as_string(hide_password=False)
    )


def admin(server: str, *sql: str) -> None:
    with psycopg.connect(libpq(server), autocommit=True) as conn:
        for statement in sql:
            conn.execute(statement)


def envelope_lines(rows: int, seed: int = 7) -> Iterator[bytes]:
    """JSON Lines of realistic envelopes (about 1 KB each)."""
    rnd = random.Random(seed)
    words = [
        "the",
        "deploy",
        "of",
        "build",
        "is",
        "green",
        "red",
        "retry",
        "failed",
        "ok",
        "ship",
        "it",
        "now",
        "later",
        "review",
    ]
    for n in range(rows):
        channel = f"C{rnd.randrange(CHANNELS):05d}"
        user = f"U{rnd.randrange(USERS):06d}"
        team = f"T0000{rnd.randrange(3)}"
        kind = rnd.random()
        retry = 1 if rnd.random() < 0.01 else 0
        if kind < 0.95:
            event_type = (
                "message" if kind < 0.80 else "app_mention" if kind < 0.88 else "reaction_added"
            )
            text = " ".join(rnd.choices(words, k=rnd.randrange(5, 40)))
            data: dict[str, Any] = {
                "envelope_id": f"{n:08d}-{rnd.getrandbits(64):016x}",
                "type": "events_api",
                "accepts_response_payload": False,
                "retry_attempt": retry,
                "retry_reason": "timeout" if retry else "",
                "payload": {
                    "token": "XXYYZZ",
                    "team_id": team,
                    "api_app_id": "A0BENCH",
                    "event": {
                        "type": event_type,
                        "channel": channel,
                        "user": user,
                        "text": text,
                        "ts": f"{1700000000 + n}.000100",
                        "blocks": [
                            {
                                "type": "rich_text",
                                "block_id": f"b{n % 997}",
                                "elements": [
                                    {
                                        "type": "rich_text_section",
                                        "elements": [{"type": "text", "text": text}],
                                    }
                                ],
                            }
                        ],
                        "channel_type": "channel",
                    },
                    "type": "event_callback",
                    "event_id": f"Ev{n:010d}",
                    "event_time": 1700000000 + n,
                    "authorizations": [{"team_id": team, "user_id": "U0BOT", "is_bot": True}],
                },
            }
        elif kind < 0.98:
            data = {
                "envelope_id": f"{n:08d}-{rnd.getrandbits(64):016x}",
                "type": "slash_commands",
                "accepts_response_payload": True,
                "payload": {
                    "team_id": team,
                    "channel_id": channel,
                    "user_id": user,
                    "command": rnd.choice(["/deploy", "/oncall", "/ticket"]),
                    "text": " ".join(rnd.choices(words, k=5)),
                    "api_app_id": "A0BENCH",
                },
            }
        else:
            data = {
                "envelope_id": f"{n:08d}-{rnd.getrandbits(64):016x}",
                "type": "interactive",
                "accepts_response_payload": False,
                "payload": {
                    "type": "block_actions",
                    "team": {"id": team},
                    "user": {"id": user},
                    "channel": {"id": channel},
                    "api_app_id": "A0BENCH",
                    "actions": [{"action_id": "approve", "value": str(n)}],
                },
            }
        yield json.dumps(data, separators=(",", ":")).encode()


class SteppingClock:
    """The load's clock: each call (one per import batch) is one step later."""

    def __init__(self, start: dt.datetime, step: dt.timedelta) -> None:
        self.now = start - step
        self.step = step

    def __call__(self) -> dt.datetime:
        self.now += self.step
        return self.now


def load(url: str, rows: int, now: dt.datetime, jobs: int = 2) -> float:
    batches = -(-rows // IMPORT_BATCH)
    clock = SteppingClock(now - SPAN_DAYS * DAY, SPAN_DAYS * DAY / batches)
    engine = create_engine(url)
    started = time.perf_counter()
    with SQLEventBuffer(engine, clock=clock) as buffer:
        report = import_envelopes(buffer, envelope_lines(rows), batch_size=IMPORT_BATCH, jobs=jobs)
    elapsed = time.perf_counter() - started
    engine.dispose()
    assert report.new == rows, report.summary()
    return elapsed


def timed(fn: Callable[[], Any], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def pct(values: list[float], q: float) -> float:
    if not values:  # a writer that got no call in before the contender finished
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _write(url: str, stop: Any, out: Any) -> None:
    """The writer process: record() back to back until told to stop; send the latencies."""
    engine = create_engine(url)
    buffer = SQLEventBuffer(engine)
    prefix = f"w{os.getpid()}-{time.monotonic_ns()}"
    latencies: list[float] = []
    n = 0
    while not stop.is_set():
        n += 1
        envelope: dict[str, Any] = {
            "envelope_id": f"{prefix}-{n}",
            "type": "events_api",
            "payload": {
                "team_id": "T00000",
                "event_id": f"Ev{prefix}-{n}",
                "event": {
                    "type": "message",
                    "channel": "C00001",
                    "user": "U000001",
                    "text": "live",
                },
            },
        }
        t = time.perf_counter()
        buffer.record(envelope["envelope_id"], envelope)
        latencies.append(time.perf_counter() - t)
    engine.dispose()
    out.send(latencies)


class Writer:
    """A bot in another process (as in production) calling record() back to back."""

    def __init__(self, url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        self.receive, send = context.Pipe(duplex=False)
        self.process = context.Process(target=_write, args=(url, self.stop, send), daemon=True)

    def start(self) -> None:
        self.process.start()
        time.sleep(1.0)  # the interpreter starts and connects before the measurement begins

    def finish(self) -> dict[str, float]:
        self.stop.set()
        lat: list[float] = self.receive.recv()
        self.process.join(30)
        return {
            "calls": len(lat),
            "p50_ms": 1000 * pct(lat, 0.50),
            "p99_ms": 1000 * pct(lat, 0.99),
            "max_ms": 1000 * max(lat, default=float("nan")),
        }


def writer_alone(url: str, seconds: float) -> dict[str, float]:
    writer = Writer(url)
    writer.start()
    time.sleep(seconds)
    return writer.finish()


def run_batched_prune(url: str, batch_size: int) -> dict[str, Any]:
    engine = create_engine(url)
    writer = Writer(url)
    writer.start()
    batches: list[float] = []
    last = [time.perf_counter()]

    def on_progress(_: retention.PruneProgress) -> None:
        t = time.perf_counter()
        batches.append(t - last[0])
        last[0] = t

    started = time.perf_counter()
    report = retention.prune(engine, batch_size=batch_size, actor="bench", on_progress=on_progress)
    elapsed = time.perf_counter() - started
    time.sleep(0.5)
    latency = writer.finish()
    engine.dispose()
    deleting = sum(batches)
    return {
        "deleted": report.deleted_total,
        "held": report.held,
        "seconds": elapsed,
        "rows_per_s": report.deleted_total / elapsed,
        "delete_phase_rows_per_s": report.deleted_total / deleting if deleting else 0.0,
        "batches": len(batches),
        "batch_p50_ms": 1000 * pct(batches, 0.5),
        "batch_max_ms": 1000 * max(batches),
        "writer": latency,
    }


def run_naive_delete(url: str) -> dict[str, Any]:
    engine = create_engine(url)
    policies = retention.list_policies(engine)
    assert len(policies) == 1
    cutoff = dt.datetime.now(UTC) - policies[0].keep
    stmt = statements.naive_prune_delete(statements.expired_under(policies[0].match(), [], cutoff))
    writer = Writer(url)
    writer.start()
    started = time.perf_counter()
    with engine.begin() as conn:
        deleted = conn.execute(stmt).rowcount
    elapsed = time.perf_counter() - started
    time.sleep(0.5)
    latency = writer.finish()
    engine.dispose()
    return {
        "deleted": deleted,
        "seconds": elapsed,
        "rows_per_s": deleted / elapsed,
        "writer": latency,
    }


def run_single_logged_statement(url: str) -> dict[str, Any]:
    """The whole prune as one statement that also logs every row: batching's fair baseline."""
    engine = create_engine(url)
    policies = retention.list_policies(engine)
    assert len(policies) == 1
    cutoff = dt.datetime.now(UTC) - policies[0].keep
    conditions = statements.expired_under(policies[0].match(), [], cutoff)
    with engine.begin() as conn:
        run_id = conn.execute(
            sa.insert(prune_runs)
            .values(started_at=dt.datetime.now(UTC), status="running", dry_run=False)
            .returning(prune_runs.c.id)
        ).scalar_one()
    stmt = statements.prune_batch_postgresql(
        conditions, prune_run_id=run_id, policy_name="all", batch_size=10**9, after=None
    )
    writer = Writer(url)
    writer.start()
    started = time.perf_counter()
    with engine.begin() as conn:
        row = conn.execute(stmt).first()
    elapsed = time.perf_counter() - started
    time.sleep(0.5)
    latency = writer.finish()
    engine.dispose()
    deleted = int(row.n) if row else 0
    return {
        "deleted": deleted,
        "seconds": elapsed,
        "rows_per_s": deleted / elapsed,
        "writer": latency,
    }


def run_seal_and_verify(
    url: str, now: dt.datetime, walk: bool, one_connection: bool = False
) -> dict[str, Any]:
    """Seal and verify everything, as ratios to a warm in-database SHA-256 scan."""
    out: dict[str, Any] = {}
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        scan = (
            "SELECT count(*) FROM envelopes WHERE sha256(convert_to(envelope_text, 'UTF8')) <> ''"
        )
        conn.execute(scan)  # warm the cache
        t = time.perf_counter()
        row = conn.execute(scan).fetchone()
        elapsed = time.perf_counter() - t
    rows = int(row[0]) if row else 0
    base = rows / elapsed
    out["sha256_scan"] = {"rows": rows, "seconds": elapsed, "rows_per_s": base}
    print(f"in-database SHA-256 scan: {base:,.0f} rows/s", flush=True)
    engine = create_engine(url)
    at = now + dt.timedelta(seconds=1)
    t = time.perf_counter()
    sealed = seal.seal(engine, margin=dt.timedelta(0), now=at)
    elapsed = time.perf_counter() - t
    out["seal"] = {
        "sealed": sealed.sealed,
        "blocks": len(sealed.blocks),
        "seconds": elapsed,
        "rows_per_s": sealed.sealed / elapsed,
        "ratio": sealed.sealed / elapsed / base,
    }
    print(f"seal: {out['seal']}", flush=True)
    t = time.perf_counter()
    again = seal.seal(engine, margin=dt.timedelta(0), now=at)
    out["seal_nothing_new_ms"] = 1000 * (time.perf_counter() - t)
    assert again.sealed == 0
    # verify as it runs by default (several connections sharing one snapshot
    # from 100,000 sealed envelopes on), then on one connection, then walked.
    for name, server_side, workers in (
        ("verify", True, None),
        ("verify_one_connection", True, 1),
        ("verify_walk", False, None),
    ):
        if (name == "verify_walk" and not walk) or (
            name == "verify_one_connection" and not one_connection
        ):
            continue
        t = time.perf_counter()
        report = verify.verify(engine, now=at, server_side=server_side, workers=workers)
        elapsed = time.perf_counter() - t
        assert report.ok, report.findings[:3]
        out[name] = {
            "rows": report.sealed + report.unsealed,
            "seconds": elapsed,
            "rows_per_s": (report.sealed + report.unsealed) / elapsed,
            "ratio": (report.sealed + report.unsealed) / elapsed / base,
        }
        print(f"{name}: {out[name]}", flush=True)
    engine.dispose()
    return out


CURVE_STEPS = ("import", "seal", "verify", "prune")
"""The steps of the scaling curve whose cost should grow linearly with the rows."""


def curve_point(server: str, rows: int, jobs: int) -> dict[str, Any]:
    """One size of the scaling curve, in a database of its own, dropped afterwards.

    Import (the load, timed: parse on ``jobs`` workers, COPY), then the
    channel/day query, seal and verify of every row, and a batched prune of
    the rows older than 30 days (about half), each timed once.
    """
    name = f"recorder_curve_{os.getpid()}_{rows}"
    url = database_url(server, name)
    admin(server, f'CREATE DATABASE "{name}"')
    point: dict[str, Any] = {"rows": rows}
    try:
        db.upgrade(url)
        now = dt.datetime.now(UTC)
        seconds = load(url, rows, now, jobs)
        point["import"] = {"seconds": seconds, "rows_per_s": rows / seconds, "load": _load()}
        print(f"  {rows:,}: import {seconds:.1f} s ({rows / seconds:,.0f}/s)", flush=True)
        with psycopg.connect(libpq(url), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE envelopes")
        engine = create_engine(url)
        day = (now - 10 * DAY).replace(hour=0, minute=0, second=0, microsecond=0)
        spec = audit.QuerySpec(channel_id="C00042", since=day, until=day + DAY)
        found = len(list(audit.query_envelopes(engine, spec)))
        runs = timed(lambda: list(audit.query_envelopes(engine, spec)), 20)
        point["query"] = {"rows": found, "median_ms": 1000 * statistics.median(runs)}
        print(f"  {rows:,}: query {point['query']}", flush=True)
        sealed = run_seal_and_verify(url, now, walk=False)
        point["seal"], point["verify"] = sealed["seal"], sealed["verify"]
        point["verify"]["load"] = _load()  # seal's own load is not kept apart: the same minute
        point["sha256_scan"] = sealed["sha256_scan"]
        retention.set_policy(engine, "all", keep="30d", actor="bench")
        engine.dispose()
        pruned = run_batched_prune(url, retention.DEFAULT_BATCH_SIZE)
        point["prune"] = {
            "rows": pruned["deleted"],
            "seconds": pruned["seconds"],
            "rows_per_s": pruned["rows_per_s"],
            "writer_p99_ms": pruned["writer"]["p99_ms"],
            "load": _load(),
        }
        print(f"  {rows:,}: prune {point['prune']}", flush=True)
    finally:
        admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return point


def _load() -> float:
    """The machine's 1-minute load average: each curve figure says what it shared the cores with."""
    return os.getloadavg()[0]


def curve_table(points: list[dict[str, Any]], extrapolate_to: int) -> str:
    """Markdown: seconds per step at each size, growth per 10x, and a linear extrapolation."""
    lines = [
        "| rows | import | seal | verify | prune (rows older than 30 days) "
        "| channel/day query, median |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        cells = [
            f"{p[s]['seconds']:.1f} s ({p[s]['rows_per_s']:,.0f}/s"
            + (f", load {p[s]['load']:.0f})" if "load" in p[s] else ")")
            for s in CURVE_STEPS
        ]
        lines.append(
            f"| {p['rows']:,} | " + " | ".join(cells) + f" | {p['query']['median_ms']:.1f} ms |"
        )
    last = points[-1]
    factor = extrapolate_to / last["rows"]
    cells = [f"about {last[s]['seconds'] * factor / 60:,.0f} min" for s in CURVE_STEPS]
    lines.append(
        f"| {extrapolate_to:,} (extrapolated from {last['rows']:,}, not measured) | "
        + " | ".join(cells)
        + " | flat (an index range scan) |"
    )
    for before, after in itertools.pairwise(points):
        growth = after["rows"] / before["rows"]
        cells = [f"{after[s]['seconds'] / before[s]['seconds']:.1f}x" for s in CURVE_STEPS]
        query = after["query"]["median_ms"] / before["query"]["median_ms"]
        lines.append(
            f"| time growth from {before['rows']:,} to {after['rows']:,} "
            f"({growth:.1f}x the rows) | " + " | ".join(cells) + f" | {query:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--batch-sizes",
        default=str(retention.DEFAULT_BATCH_SIZE),
        help="comma-separated batch sizes to prune with, each on its own clone",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch databases")
    parser.add_argument("--database", help="reuse this loaded database (implies --keep)")
    parser.add_argument("--sections", default="query,stats,seal,prune")
    parser.add_argument("--walk", action="store_true", help="also time verify's Python walk")
    parser.add_argument(
        "--curve",
        metavar="ROWS,ROWS",
        help="the scaling curve instead: import, query, seal, verify and prune at each size "
        "(e.g. 100000,1000000), each in a fresh database, then a linear extrapolation",
    )
    parser.add_argument("--extrapolate", type=int, default=10_000_000, metavar="ROWS")
    parser.add_argument("--jobs", type=int, default=2, help="import worker processes")
    args = parser.parse_args(argv)
    if args.curve:
        points = []
        for rows in (int(r) for r in args.curve.split(",")):
            print(f"curve: {rows:,} envelopes ...", flush=True)
            points.append(curve_point(args.postgres, rows, args.jobs))
        print(json.dumps(points, indent=1, default=str))
        print(curve_table(points, args.extrapolate))
        return 0
    sections = set(args.sections.split(","))
    if args.database:
        args.keep = True

    name = args.database or f"recorder_scale_{os.getpid()}"
    clone = f"{name}_clone"
    url, clone_url = database_url(args.postgres, name), database_url(args.postgres, clone)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    results: dict[str, Any] = {"rows": args.rows}
    if not args.database:
        admin(args.postgres, f'CREATE DATABASE "{name}"')
    try:
        db.upgrade(url)
        now = dt.datetime.now(UTC)
        if not args.database:
            print(f"loading {args.rows:,} envelopes through the import path ...", flush=True)
            seconds = load(url, args.rows, now, args.jobs)
            results["load"] = {"seconds": seconds, "rows_per_s": args.rows / seconds}
            print(f"  {seconds:.1f} s, {args.rows / seconds:,.0f} rows/s", flush=True)
        with psycopg.connect(libpq(url), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE envelopes")
            count_row = conn.execute("SELECT count(*) FROM envelopes").fetchone()
            assert count_row is not None  # count(*) always returns one row
            results["rows"] = count_row[0]
            size_row = conn.execute(
                "SELECT pg_size_pretty(pg_database_size(current_database()))"
            ).fetchone()
        results["database_size"] = size_row[0] if size_row else "?"

        engine = create_engine(url)
        if "query" in sections:
            day = (now - 10 * DAY).replace(hour=0, minute=0, second=0, microsecond=0)
            spec = audit.QuerySpec(channel_id="C00042", since=day, until=day + DAY)
            found = len(list(audit.query_envelopes(engine, spec)))
            runs = timed(lambda: list(audit.query_envelopes(engine, spec)), 20)
            results["query_one_channel_one_day"] = {
                "rows": found,
                "median_ms": 1000 * statistics.median(runs),
                "p95_ms": 1000 * pct(runs, 0.95),
            }
            print(f"query: {results['query_one_channel_one_day']}", flush=True)

        if "stats" in sections:
            since = now - 30 * DAY
            for by in ("type", "channel"):
                daily = stats.daily_counts(engine, by=by, since=since)
                # timed() calls the lambda right here, so it sees this iteration's ``by``
                runs = timed(lambda: stats.daily_counts(engine, by=by, since=since), 3)  # noqa: B023
                results[f"stats_30d_by_{by}"] = {
                    "groups": len(daily),
                    "envelopes": sum(r.count for r in daily),
                    "median_s": statistics.median(runs),
                }
                print(f"stats by {by}: {results[f'stats_30d_by_{by}']}", flush=True)
            env = {**os.environ, "RECORDER_DATABASE_URL": url}
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "recorder", "stats", "--since", "30d", "--format", "csv"],
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
            )
            results["recorder_stats_command_s"] = time.perf_counter() - t
            print(
                f"recorder stats (process): {results['recorder_stats_command_s']:.2f} s", flush=True
            )

        if "seal" in sections:
            results["seal"] = run_seal_and_verify(url, now, args.walk, one_connection=True)
        if "prune" not in sections:
            engine.dispose()
        else:
            retention.set_policy(engine, "all", keep="30d", actor="bench")
            retention.add_hold(
                engine, "bench-hold", reason="bench", channel_id="C00007", actor="bench"
            )
            with engine.connect() as sa_conn:
                expired = sa_conn.execute(
                    statements.count_expired(
                        statements.expired_under({}, [], now - 30 * DAY), is_held=False
                    )
                ).scalar_one()
            results["expired_unheld"] = expired
            engine.dispose()
            print(f"expired and unheld: {expired:,}", flush=True)

            def fresh_clone() -> None:
                t = time.perf_counter()
                admin(
                    args.postgres,
                    f'DROP DATABASE IF EXISTS "{clone}" WITH (FORCE)',
                    f'CREATE DATABASE "{clone}" TEMPLATE "{name}"',
                )
                results["clone_s"] = time.perf_counter() - t

            fresh_clone()
            results["writer_alone"] = writer_alone(clone_url, 5)
            print(f"writer alone: {results['writer_alone']}", flush=True)
            for size in batch_sizes:
                if f"batched_prune_{size}" in results:
                    continue
                fresh_clone()
                results[f"batched_prune_{size}"] = run_batched_prune(clone_url, size)
                print(
                    f"batched prune, batch {size}: {results[f'batched_prune_{size}']}", flush=True
                )
            fresh_clone()
            results["single_logged_statement"] = run_single_logged_statement(clone_url)
            print(f"one logged statement: {results['single_logged_statement']}", flush=True)
            results["naive_delete"] = run_naive_delete(url)
            print(f"naive DELETE: {results['naive_delete']}", flush=True)
    finally:
        if not args.keep:
            admin(
                args.postgres,
                f'DROP DATABASE IF EXISTS "{clone}" WITH (FORCE)',
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            )
    print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
