"""A SQLite writer's record() beside a long reader: the stall when the reader ends.

Usage::

    .venv/bin/python bench/reader_stall.py --hold 20

A buffer records at ``--rate`` envelopes per second (about 1 KB each) into a
fresh SQLite file. After 2 s a second connection opens a read transaction
and holds it for ``--hold`` seconds (what ``recorder verify``, an export or
a long report does), then ends it; recording goes on for 4 s more. Prints
p50, p99, p99.9 and the maximum of ``record()`` and the slowest calls with
when they came, relative to the reader's end: a record that copied the log
the reader held back shows there. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from recorder.adapters.sql import SQLEventBuffer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hold", type=float, default=20.0, help="seconds the reader holds")
    parser.add_argument("--rate", type=float, default=200.0, help="records per second")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "recorder.db"
        buffer = SQLEventBuffer(f"sqlite:///{path}", upgrade=True)
        start = time.perf_counter()
        ended: list[float] = []

        def reader() -> None:
            time.sleep(2.0)
            conn = sqlite3.connect(path)
            conn.execute("BEGIN")
            conn.execute("SELECT count(*) FROM envelopes").fetchone()
            time.sleep(args.hold)
            conn.rollback()
            ended.append(time.perf_counter() - start)
            conn.close()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        latencies: list[tuple[float, float]] = []
        count = int(args.rate * (args.hold + 6))
        for n in range(count):
            envelope = {
                "envelope_id": f"e{n}",
                "type": "events_api",
                "payload": {
                    "team_id": "T1",
                    "event_id": f"Ev{n}",
                    "event": {"type": "message", "channel": "C1", "user": "U1", "text": "x" * 800},
                },
            }
            t = time.perf_counter()
            buffer.record(f"e{n}", envelope)
            latencies.append(((time.perf_counter() - t) * 1000, t - start))
            delay = start + (n + 1) / args.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        thread.join()
        buffer.close()
    ms = sorted(latency for latency, _ in latencies)
    slowest = sorted(latencies, reverse=True)[:3]
    reader_end = ended[0] if ended else float("nan")
    print(
        json.dumps(
            {
                "records": count,
                "p50_ms": round(ms[len(ms) // 2], 2),
                "p99_ms": round(ms[int(len(ms) * 0.99)], 2),
                "p99_9_ms": round(ms[int(len(ms) * 0.999)], 2),
                "max_ms": round(ms[-1], 2),
                "slowest": [
                    {"ms": round(latency, 1), "s_after_reader_ended": round(at - reader_end, 3)}
                    for latency, at in slowest
                ],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
