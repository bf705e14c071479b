"""Erasing one user across a large archive: index lookups, not a scan of payloads.

Usage::

    .venv/bin/python bench/erase.py --postgres postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/erase.py --sqlite /tmp/erase-bench.db --rows 200000

In a scratch database (dropped afterwards unless ``--keep``): load ``--rows``
envelopes (default 1,000,000) with ``bench/scale.py``'s generator through the
import path (5,000 users, so one user is the actor of about 200), plus, for
one user, mentions in other users' messages (1 in 5,000 envelopes) and shared
messages they wrote (1 in 20,000). Then ``VACUUM ANALYZE`` / ``ANALYZE`` and:

1. the plan of the subject lookup (``EXPLAIN``): both indexes, no scan;
2. the **baseline**: one scan of every payload for the id (``strpos`` /
   ``instr`` over ``envelope_text``), which is what finding the subject's
   envelopes without the indexes would cost at the least;
3. ``erasure.plan`` (the dry run) and ``erasure.erase`` with ``mentions="skip"``
   (subjects only: the index path) for one user, and ``erasure.erase`` with
   the default (subjects, then the mention scan) for another, each timed.

Results are ratios against the baseline, measured in the same run; figures go
to stdout as JSON. Not part of CI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from scale import (
    DAY,
    IMPORT_BATCH,
    SPAN_DAYS,
    SteppingClock,
    admin,
    database_url,
    envelope_lines,
    libpq,
)

from recorder import db, erasure
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.importer import import_envelopes
from recorder.schema import envelopes

UTC = dt.timezone.utc
#: Users of bench/scale.py's generator (U000000 .. U004999).
SUBJECT = "U000042"
SECOND = "U000043"


def lines(rows: int) -> Iterator[bytes]:
    """scale.py's envelopes, with mentions of and shared messages by the two users."""
    for n, line in enumerate(envelope_lines(rows)):
        if n % 5000 == 17 or n % 20000 == 29:
            data: dict[str, Any] = json.loads(line)
            event = data.get("payload", {}).get("event")
            if isinstance(event, dict):
                who = SUBJECT if (n // 5000) % 2 else SECOND
                if n % 5000 == 17:
                    event["text"] = f"ping <@{who}> about {event.get('text', '')}"
                else:
                    event["attachments"] = [{"is_share": True, "author_id": who, "text": "x"}]
                line = json.dumps(data, separators=(",", ":")).encode()
        yield line


def load(url: str, rows: int) -> float:
    batches = -(-rows // IMPORT_BATCH)
    now = dt.datetime.now(UTC)
    clock = SteppingClock(now - SPAN_DAYS * DAY, SPAN_DAYS * DAY / batches)
    engine = create_engine(url)
    started = time.perf_counter()
    with SQLEventBuffer(engine, clock=clock) as buffer:
        report = import_envelopes(buffer, lines(rows), batch_size=IMPORT_BATCH)
    elapsed = time.perf_counter() - started
    engine.dispose()
    assert report.new == rows, report.summary()
    return elapsed


def timed(fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def measure(url: str, rows: int) -> dict[str, Any]:
    results: dict[str, Any] = {"rows": rows}
    print(f"loading {rows:,} envelopes through the import path ...", flush=True)
    results["load_s"] = load(url, rows)
    print(f"  {results['load_s']:.1f} s", flush=True)
    engine = create_engine(url)
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(sa.text("ANALYZE" if sqlite else "VACUUM ANALYZE envelopes"))
    stmt = sa.select(envelopes.c.envelope_id).where(*erasure._subject_filter(SUBJECT, None))
    with engine.connect() as conn:
        sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
        explain = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "
        plan = [" ".join(str(c) for c in r) for r in conn.execute(sa.text(explain + sql))]
    results["subject_lookup_plan"] = plan
    print("\n".join(plan), flush=True)

    scan = (
        "SELECT count(*) FROM envelopes WHERE instr(envelope_text, :u) > 0"
        if sqlite
        else "SELECT count(*) FROM envelopes WHERE strpos(envelope_text, :u) > 0"
    )

    def baseline(parallel: bool = True) -> int:
        with engine.connect() as conn:
            if not sqlite and not parallel:
                # The erasure functions read through a cursor, which never runs in parallel.
                conn.execute(sa.text("SET max_parallel_workers_per_gather = 0"))
            return int(conn.execute(sa.text(scan), {"u": SUBJECT}).scalar_one())

    baseline()  # warm the cache: the scan and the erasure read the same pages
    results["baseline_scan_s"], results["baseline_rows_containing_id"] = timed(baseline)
    print(f"baseline payload scan: {results['baseline_scan_s']:.2f} s", flush=True)
    if not sqlite:
        results["baseline_serial_scan_s"], _ = timed(lambda: baseline(parallel=False))
        print(f"baseline serial scan: {results['baseline_serial_scan_s']:.2f} s", flush=True)

    dry_s, dry = timed(lambda: erasure.plan(engine, SUBJECT, mentions="skip"))
    results["dry_run_subjects"] = {"seconds": dry_s, "subject_envelopes": dry.total("subject")}
    erase_s, report = timed(
        lambda: erasure.erase(engine, SUBJECT, reason="bench", mentions="skip", actor="bench")
    )
    results["erase_subjects_only"] = {
        "seconds": erase_s,
        "erased": report.erased,
        "ratio_to_baseline_scan": erase_s / results["baseline_scan_s"],
    }
    print(f"erase subjects only: {results['erase_subjects_only']}", flush=True)
    full_s, full = timed(lambda: erasure.erase(engine, SECOND, reason="bench", actor="bench"))
    results["erase_subjects_and_mentions"] = {
        "seconds": full_s,
        "erased": full.erased,
        "scrubbed": full.scrubbed,
        "ratio_to_baseline_scan": full_s / results["baseline_scan_s"],
        "ratio_to_serial_scan": full_s
        / results.get("baseline_serial_scan_s", results["baseline_scan_s"]),
    }
    print(f"erase with mention scrub: {results['erase_subjects_and_mentions']}", flush=True)
    engine.dispose()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", help="server URL (a scratch database is made there)")
    parser.add_argument("--sqlite", type=Path, help="a new SQLite file")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)
    if args.sqlite:
        if args.sqlite.exists():
            parser.error(f"{args.sqlite} exists; give a new file")
        url = f"sqlite:///{args.sqlite}"
        db.upgrade(url)
        try:
            results = measure(url, args.rows)
        finally:
            if not args.keep:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{args.sqlite}{suffix}").unlink(missing_ok=True)
    else:
        server = args.postgres or "postgresql://postgres@127.0.0.1:5432/postgres"
        name = f"recorder_erase_{os.getpid()}"
        admin(server, f'CREATE DATABASE "{name}"')
        url = database_url(server, name)
        try:
            db.upgrade(url)
            results = measure(url, args.rows)
        finally:
            if not args.keep:
                with psycopg.connect(libpq(server), autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
