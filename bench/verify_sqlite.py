"""Verify on SQLite: rows/s by wall clock and by CPU time, for comparing code versions.

Usage::

    .venv/bin/python bench/verify_sqlite.py build /tmp/v200k.db --rows 200000
    .venv/bin/python bench/verify_sqlite.py time /tmp/v200k.db            # this checkout
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/verify_sqlite.py time /tmp/v200k.db

``build`` loads ``--rows`` realistic envelopes (``bench/scale.py``'s, about
800 bytes each) into a fresh SQLite file through the import path and seals
all but the newest tenth (so both the sealed and the unsealed walks run).
``time`` runs ``recorder.verify.verify`` once over it and prints one JSON
line: rows, wall seconds, the CPU seconds of this process and of its child
processes (worker processes are reaped before verify returns, so their time
is counted), and the rates by each. Run old and new code alternately, in the
same minutes: the machine's load moves absolute rates more than code does.
Not part of CI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from recorder import db
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.importer import import_envelopes
from recorder.seal import seal
from recorder.verify import verify

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 30, tzinfo=UTC)
SPAN = dt.timedelta(days=60)
BATCH = 2000


def build(path: Path, rows: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from scale import SteppingClock, envelope_lines

    if path.exists():
        path.unlink()
    url = f"sqlite:///{path}"
    db.upgrade(url)
    batches = -(-rows // BATCH)
    engine = create_engine(url)
    with SQLEventBuffer(engine, clock=SteppingClock(NOW - SPAN, SPAN / batches)) as buffer:
        report = import_envelopes(buffer, envelope_lines(rows), batch_size=BATCH, jobs=2)
    assert report.new == rows, report.summary()
    sealed = seal(engine, margin=dt.timedelta(0), now=NOW - SPAN / 10)
    engine.dispose()
    print(json.dumps({"rows": rows, "sealed": sealed.sealed}))


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def _lock_holds() -> list[float]:
    """Seconds parallel verify holds the write lock, when this checkout has it."""
    held: list[float] = []
    try:
        from recorder.verify_sqlite import Helpers
    except ImportError:  # older code: one process, no lock
        return held
    share = Helpers.share_snapshot

    def timed_share(self: Any, *args: Any) -> None:
        share(self, *args)
        held.append(self.lock_held)

    setattr(Helpers, "share_snapshot", timed_share)  # noqa: B010 -- a timing wrapper
    return held


def time_verify(path: Path, workers: int | None) -> None:
    held = _lock_holds()
    engine = create_engine(f"sqlite:///{path}")
    kwargs = {} if workers is None else {"workers": workers}
    own0, kids0 = _cpu()
    wall0 = time.perf_counter()
    report = verify(engine, now=NOW, **kwargs)  # type: ignore[arg-type]
    wall = time.perf_counter() - wall0
    own1, kids1 = _cpu()
    engine.dispose()
    assert report.ok, report.findings[:3]
    rows = report.sealed + report.unsealed
    own, kids = own1 - own0, kids1 - kids0
    print(
        json.dumps(
            {
                "code": os.environ.get("PYTHONPATH", "this checkout"),
                "rows": rows,
                "wall_s": round(wall, 3),
                "cpu_s": round(own, 3),
                "children_cpu_s": round(kids, 3),
                "rows_per_s_wall": round(rows / wall),
                "rows_per_s_cpu": round(rows / own),
                "rows_per_s_all_cpu": round(rows / (own + kids)),
                "write_lock_held_ms": [round(1000 * h, 2) for h in held],
                "load": os.getloadavg()[0],
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("path", type=Path)
    b.add_argument("--rows", type=int, default=200_000)
    t = sub.add_parser("time")
    t.add_argument("path", type=Path)
    t.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    if args.command == "build":
        build(args.path, args.rows)
    else:
        time_verify(args.path, args.workers)


if __name__ == "__main__":
    main()
