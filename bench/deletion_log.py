"""The deletion log at scale: what `verify` and `seal` spend on every logged deletion.

Usage::

    .venv/bin/python bench/deletion_log.py --postgres postgresql://postgres@127.0.0.1:5432/postgres

In one scratch database (dropped afterwards): one completed prune run that
logged ``--rows`` deletions (``pruned_envelopes`` rows as a prune writes
them: 10 teams, 500 channels, 5,000 users) and two legal holds that cover
none of them (one released, one on another channel), then ``VACUUM
ANALYZE``. Timed, ``--rounds`` times alternating, on one connection:

* ``check``: :func:`recorder.prune_checks.check_deletion_log`, the server
  certifying what plainly passes (as ``verify`` runs it), against
  ``server_side=False``, every row judged in Python (the baseline);
* ``digest``: the run's sealed-log digest (what ``seal`` computes once and
  ``verify`` again) from the lines PostgreSQL renders, against the rows
  paged into Python and each line spelled there (``digest_python``) and
  spelled by ``json.dumps`` (``digest_json``, the baseline: the code before
  session 6).

Figures go to stdout as JSON, as seconds and rows/s; not part of CI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import psycopg
from record import scratch_postgres

from recorder import db, sealed_logs
from recorder.engine import create_engine
from recorder.prune_checks import check_deletion_log

UTC = dt.timezone.utc
CUTOFF = dt.datetime(2026, 3, 1, tzinfo=UTC)


def load(url: str, rows: int) -> None:
    libpq = url.replace("postgresql+psycopg://", "postgresql://")
    started = CUTOFF + dt.timedelta(days=30)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO prune_runs (id, started_at, finished_at, status, dry_run, cutoffs, "
            "deleted_per_policy, deleted_total, actor, host) VALUES "
            "(1, %s, %s, 'completed', false, %s, %s, %s, 'bench', 'bench')",
            (
                started,
                started + dt.timedelta(minutes=10),
                json.dumps({"week": CUTOFF.isoformat()}),
                json.dumps({"week": rows}),
                rows,
            ),
        )
        conn.execute(
            "INSERT INTO pruned_envelopes (prune_run_id, envelope_id, envelope_sha256, "
            "received_at, policy_name, team_id, channel_id, user_id, pruned_at) "
            "SELECT 1, 'e' || lpad(g::text, 9, '0'), encode(sha256(g::text::bytea), 'hex'), "
            "%s - g * interval '1 ms', 'week', 'T' || g %% 10, 'C' || g %% 500, "
            "'U' || g %% 5000, %s + g * interval '1 us' FROM generate_series(1, %s) g",
            (CUTOFF, started, rows),
        )
        conn.execute(
            "INSERT INTO legal_holds (name, reason, channel_id, created_at, created_by, "
            "released_at, released_by) VALUES "
            "('other-channel', 'bench', 'C-elsewhere', %s, 'bench', NULL, NULL), "
            "('released', 'bench', NULL, %s, 'bench', %s, 'bench')",
            (CUTOFF, CUTOFF, CUTOFF + dt.timedelta(days=1)),
        )
        conn.execute("VACUUM ANALYZE")


def json_line(values: Any) -> bytes:
    """The log line as the code before session 6 spelled it."""
    normal = [
        v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if isinstance(v, dt.datetime) else v
        for v in values
    ]
    return json.dumps(normal, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, Any] = {"rows": args.rows}
    with scratch_postgres(args.postgres) as url:
        db.upgrade(url)
        load(url, args.rows)
        engine = create_engine(url)
        log = sealed_logs.PruneRunsLog()
        in_python = sealed_logs.PruneRunsLog(server_side=False)
        times: dict[str, list[float]] = {
            "check_server": [],
            "check_python": [],
            "digest": [],
            "digest_python": [],
            "digest_json": [],
        }
        original = sealed_logs._line
        for _ in range(args.rounds):
            with engine.connect() as conn:
                for side, name in ((True, "check_server"), (False, "check_python")):
                    seconds, found = timed(partial(check_deletion_log, conn, server_side=side))
                    assert found == [], found[:3]
                    times[name].append(seconds)
                seconds, fast = timed(partial(log.unsealed, conn))
                times["digest"].append(seconds)
                seconds, spelled = timed(partial(in_python.unsealed, conn))
                times["digest_python"].append(seconds)
                sealed_logs._line = json_line
                try:
                    seconds, plain = timed(partial(in_python.unsealed, conn))
                finally:
                    sealed_logs._line = original
                times["digest_json"].append(seconds)
                assert fast == spelled == plain, "a faster spelling changed the digest"
        engine.dispose()
    for name, values in times.items():
        best = min(values)
        figures[name] = {
            "seconds": [round(v, 3) for v in values],
            "rows_per_s": round(args.rows / best),
        }
    figures["check_ratio"] = round(
        statistics.median(times["check_python"]) / statistics.median(times["check_server"]), 1
    )
    figures["digest_ratio"] = round(
        statistics.median(times["digest_json"]) / statistics.median(times["digest"]), 1
    )
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
