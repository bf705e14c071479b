"""Record and import throughput against the raw drivers, side by side in one run.

Usage::

    .venv/bin/python bench/record.py --postgres postgresql://postgres@127.0.0.1:5432/postgres \\
        --sqlite /tmp/recorder-bench.db -n 2000 --import-n 10000 --rounds 5

Variants, each given the same realistic ~1.7 KB events_api envelopes (a
message event with rich-text blocks, authorizations, event_context):

* ``record``      SQLEventBuffer.record, one envelope per call (the bot's path).
* ``raw-record``  the raw driver running the same INSERT ... ON CONFLICT DO
  NOTHING per envelope: psycopg in autocommit on PostgreSQL; sqlite3 with
  BEGIN IMMEDIATE ... COMMIT per envelope on SQLite (what the recorder's
  SQLite engine does).
* ``import``      recorder.importer.import_envelopes over JSON Lines (the
  ``recorder import`` library path: parse, record_many, batches of 500).
* ``raw-import``  the raw driver over the same lines: parse each line the same
  way, then executemany the INSERT in batches of 500, one transaction per batch
  (psycopg pipelines executemany; sqlite3 in BEGIN IMMEDIATE).

Both sides do the same work per envelope: validation, the default redaction
(payload.token is masked, so the text is re-encoded), column extraction and
the SHA-256 come from recorder.envelope for the raw variants too, so the
ratio measures the storage path alone.

Each pair is timed side by side: its two paths take turns on small slices (50
records; 2,500 imported lines, five batches), the first turn alternating, so
both meet the same load on a shared machine. A round times ``-n`` records and
``--import-n`` lines per path; the figure per path is the median of its rounds,
each ratio the median of the per-round ratios (the range is printed too).

PostgreSQL runs in a scratch database created on the given server and dropped
afterwards; the SQLite file is created fresh and removed afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from recorder import db
from recorder.adapters.sql import SQLEventBuffer
from recorder.envelope import (
    DEFAULT_REDACTION,
    ParsedEnvelope,
    parse_envelope,
    parse_envelope_text,
)
from recorder.importer import import_envelopes
from recorder.statements import RECORD_COLUMNS

BATCH = 500
_serial = itertools.count()


def realistic_envelope(n: int) -> dict[str, Any]:
    """A Socket Mode events_api envelope carrying a channel message, as Slack sends it."""
    unique = f"{uuid.uuid4().hex}{next(_serial)}"
    ts = f"{1_780_000_000 + n}.{n % 1_000_000:06d}"
    return {
        "envelope_id": f"{unique[:8]}-{unique[8:12]}-{unique[12:16]}-{unique[16:20]}-{unique[20:32]}",
        "type": "events_api",
        "accepts_response_payload": False,
        "retry_attempt": 0,
        "retry_reason": "",
        "payload": {
            "token": "XXYYZZ1234567890abcdefgh",
            "team_id": "T0123ABCDEF",
            "context_team_id": "T0123ABCDEF",
            "context_enterprise_id": None,
            "api_app_id": "A0456GHIJKL",
            "event": {
                "type": "message",
                "user": f"U{n % 97:010d}",
                "text": (
                    "Deploy of *payments-api* v2.14.3 finished on prod-eu-west-1 :white_check_mark:"
                    " See <https://ci.example.com/runs/884213|run 884213> for details, and ping"
                    " <@U0000000042> if the error budget dips again."
                ),
                "ts": ts,
                "team": "T0123ABCDEF",
                "client_msg_id": str(uuid.UUID(int=n + 1)),
                "blocks": [
                    {
                        "type": "rich_text",
                        "block_id": "x9Hq1",
                        "elements": [
                            {
                                "type": "rich_text_section",
                                "elements": [
                                    {"type": "text", "text": "Deploy of "},
                                    {
                                        "type": "text",
                                        "text": "payments-api",
                                        "style": {"bold": True},
                                    },
                                    {
                                        "type": "text",
                                        "text": " v2.14.3 finished on prod-eu-west-1 ",
                                    },
                                    {
                                        "type": "emoji",
                                        "name": "white_check_mark",
                                        "unicode": "2705",
                                    },
                                    {"type": "text", "text": " See "},
                                    {
                                        "type": "link",
                                        "url": "https://ci.example.com/runs/884213",
                                        "text": "run 884213",
                                    },
                                    {"type": "text", "text": " for details, and ping "},
                                    {"type": "user", "user_id": "U0000000042"},
                                    {"type": "text", "text": " if the error budget dips again."},
                                ],
                            }
                        ],
                    }
                ],
                "channel": f"C{n % 13:010d}",
                "event_ts": ts,
                "channel_type": "channel",
            },
            "type": "event_callback",
            "event_id": f"Ev{unique[:20].upper()}",
            "event_time": 1_780_000_000 + n,
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": "T0123ABCDEF",
                    "user_id": "U0BOTUSER01",
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": "4-eyJldCI6Im1lc3NhZ2UiLCJ0aWQiOiJUMDEyM0FCQ0RFRiIsImFpZCI6IkEwNDU2R0hJSktMIiwiY2lkIjoiQzAwMDAwMDAwMDEifQ",
        },
    }


def envelope_lines(count: int) -> list[bytes]:
    return [json.dumps(realistic_envelope(i)).encode() + b"\n" for i in range(count)]


# -- raw-driver baselines


def _raw_row(parsed: ParsedEnvelope, received_at: dt.datetime) -> tuple[Any, ...]:
    row = {**parsed.row(), "received_at": received_at, "envelope": parsed.queryable_text}
    return tuple(row[name] for name in RECORD_COLUMNS)


def _placeholders(style: str, cast_json: str) -> str:
    return ", ".join(
        f"{style}{cast_json}" if name == "envelope" else style for name in RECORD_COLUMNS
    )


PG_INSERT = (
    f"INSERT INTO envelopes ({', '.join(RECORD_COLUMNS)}) "
    f"VALUES ({_placeholders('%s', '::jsonb')}) ON CONFLICT DO NOTHING"
)
SQLITE_INSERT = (
    f"INSERT INTO envelopes ({', '.join(RECORD_COLUMNS)}) "
    f"VALUES ({_placeholders('?', '')}) ON CONFLICT DO NOTHING"
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _sqlite_time(value: dt.datetime) -> str:
    # The format SQLAlchemy's SQLite DateTime stores, so rows sort alike.
    return value.replace(tzinfo=None).isoformat(sep=" ")


class RawPostgres:
    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)

    def record(self, envelope: dict[str, Any]) -> bool:
        parsed = parse_envelope(envelope["envelope_id"], envelope, redaction=DEFAULT_REDACTION)
        cursor = self.conn.execute(PG_INSERT, _raw_row(parsed, _now()))
        return cursor.rowcount == 1

    def import_lines(self, lines: Sequence[bytes]) -> int:
        new = 0
        for start in range(0, len(lines), BATCH):
            received_at = _now()
            rows = [
                _raw_row(parse_envelope_text(line[:-1], redaction=DEFAULT_REDACTION), received_at)
                for line in lines[start : start + BATCH]
            ]
            with self.conn.transaction(), self.conn.cursor() as cursor:
                cursor.executemany(PG_INSERT, rows, returning=False)
                new += cursor.rowcount
        return new

    def close(self) -> None:
        self.conn.close()


class RawSQLite:
    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        for pragma in (
            "PRAGMA busy_timeout = 30000",
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = NORMAL",
            "PRAGMA foreign_keys = ON",
        ):
            self.conn.execute(pragma)

    def record(self, envelope: dict[str, Any]) -> bool:
        parsed = parse_envelope(envelope["envelope_id"], envelope, redaction=DEFAULT_REDACTION)
        row = _raw_row(parsed, _now())
        row = tuple(_sqlite_time(v) if isinstance(v, dt.datetime) else v for v in row)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            inserted = self.conn.execute(SQLITE_INSERT, row).rowcount
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return inserted == 1

    def import_lines(self, lines: Sequence[bytes]) -> int:
        new = 0
        for start in range(0, len(lines), BATCH):
            received_at = _sqlite_time(_now())
            rows = []
            for line in lines[start : start + BATCH]:
                row = _raw_row(parse_envelope_text(line[:-1], redaction=DEFAULT_REDACTION), _now())
                rows.append(tuple(received_at if isinstance(v, dt.datetime) else v for v in row))
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = self.conn.executemany(SQLITE_INSERT, rows)
                new += cursor.rowcount
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        return new

    def close(self) -> None:
        self.conn.close()


# -- the run


Step = Callable[[list[Any]], int]
"""Runs a slice of prepared inputs through one path; returns how many were new."""

RECORD_SLICE = 50
IMPORT_SLICE = 5 * BATCH  # several batches, so the import's overlap shows


def steps(buffer: SQLEventBuffer, raw: RawPostgres | RawSQLite) -> dict[str, Step]:
    return {
        "record": lambda envs: sum(buffer.record(e["envelope_id"], e).value == "new" for e in envs),
        "raw-record": lambda envs: sum(raw.record(e) for e in envs),
        "import": lambda lines: import_envelopes(buffer, lines, batch_size=BATCH).new,
        "raw-import": raw.import_lines,
    }


PAIRS = (("record", "raw-record"), ("import", "raw-import"))


def _time_pair(
    ours: Step, theirs: Step, make: Callable[[int], list[Any]], n: int, slice_: int, flip: bool
) -> tuple[float, float]:
    """Envelopes per second of both paths, their slices alternating so both see the same load."""
    elapsed = [0.0, 0.0]
    runs = [(0, ours), (1, theirs)]
    for start in range(0, n, slice_):
        count = min(slice_, n - start)
        inputs = [make(count), make(count)]
        order = runs if (start // slice_ + flip) % 2 == 0 else runs[::-1]
        for index, step in order:
            began = time.perf_counter()
            stored = step(inputs[index])
            elapsed[index] += time.perf_counter() - began
            if stored != count:
                raise SystemExit(f"expected {count} new envelopes, stored {stored}")
    return n / elapsed[0], n / elapsed[1]


def run_backend(
    name: str,
    buffer: SQLEventBuffer,
    raw: RawPostgres | RawSQLite,
    n: int,
    n_import: int,
    rounds: int,
) -> dict[str, Any]:
    run = steps(buffer, raw)

    def envelopes(count: int) -> list[Any]:
        return [realistic_envelope(i) for i in range(count)]

    def lines(count: int) -> list[Any]:
        return list(envelope_lines(count))

    plan = {
        ("record", "raw-record"): (envelopes, n, RECORD_SLICE),
        ("import", "raw-import"): (lines, n_import, IMPORT_SLICE),
    }
    # Warm-up: connections, prepared statements, caches.
    for (ours, theirs), (make, _, slice_) in plan.items():
        _time_pair(run[ours], run[theirs], make, min(2 * slice_, 1000), slice_, False)
    results: dict[str, list[float]] = {key: [] for key in run}
    for r in range(rounds):
        for (ours, theirs), (make, count, slice_) in plan.items():
            a, b = _time_pair(run[ours], run[theirs], make, count, slice_, r % 2 == 1)
            results[ours].append(a)
            results[theirs].append(b)
        print(
            f"  {name} round {r + 1}/{rounds}: "
            + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in results.items()),
            file=sys.stderr,
        )
    summary: dict[str, Any] = {k: statistics.median(v) for k, v in results.items()}
    for ours, theirs in PAIRS:
        ratios = [a / b for a, b in zip(results[ours], results[theirs], strict=True)]
        summary[f"{ours}/{theirs}"] = statistics.median(ratios)
        summary[f"{ours}/{theirs} range"] = (min(ratios), max(ratios))
    return summary


@contextmanager
def scratch_postgres(server_url: str) -> Iterator[str]:
    name = f"recorder_bench_{os.getpid()}"
    libpq = make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')  # type: ignore[arg-type]
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    url = make_url(libpq).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


@contextmanager
def scratch_sqlite(path: str) -> Iterator[str]:
    def remove() -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(path + suffix).unlink(missing_ok=True)

    remove()
    try:
        yield path
    finally:
        remove()


def report(name: str, summary: dict[str, Any], n: int, n_import: int, rounds: int) -> None:
    print(
        f"\n{name}: median of {rounds} interleaved rounds ({n} records, {n_import} imported per round)"
    )
    for key in ("record", "raw-record", "import", "raw-import"):
        print(f"  {key:<11} {summary[key]:>10,.0f} envelopes/s")
    for ours, theirs in PAIRS:
        low, high = summary[f"{ours}/{theirs} range"]
        print(
            f"  {ours + ' / ' + theirs:<23} {summary[f'{ours}/{theirs}']:.2f}x"
            f"  (rounds: {low:.2f}x to {high:.2f}x)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--postgres", metavar="URL", help="PostgreSQL server URL (a scratch database is made there)"
    )
    parser.add_argument(
        "--sqlite", metavar="PATH", help="SQLite file to create (removed afterwards)"
    )
    parser.add_argument("-n", type=int, default=2000, help="records per variant per round")
    parser.add_argument(
        "--import-n", type=int, default=None, help="envelopes imported per round (default 5 x n)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if not args.postgres and not args.sqlite:
        parser.error("give --postgres URL and/or --sqlite PATH")
    n_import = args.import_n or 5 * args.n
    size = statistics.mean(len(line) for line in envelope_lines(100))
    print(f"envelope size: {size:,.0f} bytes of JSON on average; batch {BATCH}")
    if args.postgres:
        with scratch_postgres(args.postgres) as url:
            db.upgrade(url)
            raw = RawPostgres(url)
            with SQLEventBuffer(url) as buffer:
                summary = run_backend("postgresql", buffer, raw, args.n, n_import, args.rounds)
            raw.close()
        report("PostgreSQL", summary, args.n, n_import, args.rounds)
    if args.sqlite:
        with scratch_sqlite(args.sqlite) as path:
            url = f"sqlite:///{path}"
            db.upgrade(url)
            raw_lite = RawSQLite(path)
            with SQLEventBuffer(url) as buffer:
                summary = run_backend("sqlite", buffer, raw_lite, args.n, n_import, args.rounds)
            raw_lite.close()
        report("SQLite", summary, args.n, n_import, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
