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
records; twenty batches of imported lines), the first turn alternating, so
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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
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
from recorder.import_lines import Chunk, ChunkOptions, prepare_chunk
from recorder.importer import ImportParsers, import_envelopes
from recorder.statements import RECORD_COLUMNS

BATCH = 500
_serial = itertools.count()


def realistic_envelope(n: int, *, blocks: bool = True) -> dict[str, Any]:
    """A Socket Mode events_api envelope carrying a channel message, as Slack sends it.

    About 1.8 KB of JSON with the message's rich-text blocks, about 1 KB without.
    """
    unique = f"{uuid.uuid4().hex}{next(_serial)}"
    ts = f"{1_780_000_000 + n}.{n % 1_000_000:06d}"
    data: dict[str, Any] = {
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
    if not blocks:
        del data["payload"]["event"]["blocks"]
    return data


def envelope_lines(count: int, *, blocks: bool = True) -> list[bytes]:
    return [json.dumps(realistic_envelope(i, blocks=blocks)).encode() + b"\n" for i in range(count)]


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
    def __init__(self, url: str, batch: int = BATCH) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.batch = batch

    def record(self, envelope: dict[str, Any]) -> bool:
        parsed = parse_envelope(envelope["envelope_id"], envelope, redaction=DEFAULT_REDACTION)
        cursor = self.conn.execute(PG_INSERT, _raw_row(parsed, _now()))
        return cursor.rowcount == 1

    def import_lines(self, lines: Sequence[bytes]) -> int:
        new = 0
        for start in range(0, len(lines), self.batch):
            received_at = _now()
            rows = [
                _raw_row(parse_envelope_text(line[:-1], redaction=DEFAULT_REDACTION), received_at)
                for line in lines[start : start + self.batch]
            ]
            with self.conn.transaction(), self.conn.cursor() as cursor:
                cursor.executemany(PG_INSERT, rows, returning=False)
                new += cursor.rowcount
        return new

    def close(self) -> None:
        self.conn.close()


class RawSQLite:
    def __init__(self, path: str, batch: int = BATCH) -> None:
        self.batch = batch
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
        for start in range(0, len(lines), self.batch):
            received_at = _sqlite_time(_now())
            rows = []
            for line in lines[start : start + self.batch]:
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


@dataclass(frozen=True)
class ImportSetup:
    """How the import pair runs: batch size (both sides), the workers, the envelopes."""

    batch: int = BATCH
    parsers: ImportParsers | None = None
    """Started once per run (as raw's connection is): ``import`` reuses them."""
    blocks: bool = True
    """Rich-text blocks in the envelopes: about 1.8 KB each with them, 1 KB without."""

    @property
    def slice(self) -> int:
        # Twenty batches per turn: the parallel import fills and drains a
        # pipeline (chunks in the workers, batches on two connections) at each
        # call, which a real import does once per file; with five batches a
        # turn the fill and drain would weigh as much as the steady state.
        return 20 * self.batch


def steps(
    buffer: SQLEventBuffer, raw: RawPostgres | RawSQLite, setup: ImportSetup
) -> dict[str, Step]:
    return {
        "record": lambda envs: sum(buffer.record(e["envelope_id"], e).value == "new" for e in envs),
        "raw-record": lambda envs: sum(raw.record(e) for e in envs),
        "import": lambda lines: (
            import_envelopes(buffer, lines, batch_size=setup.batch, parsers=setup.parsers).new
        ),
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
    setup: ImportSetup,
) -> dict[str, Any]:
    run = steps(buffer, raw, setup)

    def envelopes(count: int) -> list[Any]:
        return [realistic_envelope(i) for i in range(count)]

    def lines(count: int) -> list[Any]:
        return list(envelope_lines(count, blocks=setup.blocks))

    plan = {
        ("record", "raw-record"): (envelopes, n, RECORD_SLICE),
        ("import", "raw-import"): (lines, n_import, setup.slice),
    }
    plan = {pair: how for pair, how in plan.items() if how[1] > 0}
    # Warm-up: connections, prepared statements, caches.
    for (ours, theirs), (make, _, slice_) in plan.items():
        _time_pair(run[ours], run[theirs], make, min(2 * slice_, 1000), slice_, False)
    results: dict[str, list[float]] = {key: [] for pair in plan for key in pair}
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
    for ours, theirs in plan:
        ratios = [a / b for a, b in zip(results[ours], results[theirs], strict=True)]
        summary[f"{ours}/{theirs}"] = statistics.median(ratios)
        summary[f"{ours}/{theirs} range"] = (min(ratios), max(ratios))
    return summary


def copy_formats(buffer: SQLEventBuffer, n: int, setup: ImportSetup) -> dict[str, Any]:
    """The write side of one batch, COPY text (as the import sends it) against COPY BINARY.

    Both get the same parsed envelopes, batches alternating. Text: the rows
    the workers build (:func:`recorder.copy_rows.copy_row`), joined and sent.
    Binary: psycopg's C dumpers format each row (in the writing process, as a
    binary path would), into the same staging table. Both then run the same
    ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``.
    """
    from recorder import statements
    from recorder.adapters.sql import utc_now

    options = ChunkOptions(buffer.max_envelope_bytes, buffer.redaction, "now", "copy")
    text_batches, binary_batches = [], []
    for start in range(0, n, setup.batch):
        count = min(setup.batch, n - start)
        text_batches.append(
            prepare_chunk(Chunk(1, envelope_lines(count, blocks=setup.blocks)), options).rows
        )
        binary_batches.append(
            [
                parse_envelope_text(line[:-1], redaction=DEFAULT_REDACTION)
                for line in envelope_lines(count, blocks=setup.blocks)
            ]
        )
    types = ["text", "text", "timestamptz", *["text"] * 7, "int4", "text", "text", "text", "text"]
    copy_binary = statements.COPY_INTO_IMPORT_STAGING + " (FORMAT BINARY)"
    elapsed = {"text": 0.0, "binary": 0.0}
    engine = buffer.engine
    for text_rows, parsed in zip(text_batches, binary_batches, strict=True):
        t = time.perf_counter()
        assert buffer.import_rows(text_rows, handled=True) == len(text_rows)
        elapsed["text"] += time.perf_counter() - t
        t = time.perf_counter()
        now = utc_now()
        with engine.begin() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            with raw.cursor() as cursor:
                cursor.execute(statements.CREATE_IMPORT_STAGING)
                with cursor.copy(copy_binary) as copy:
                    copy.set_types(types)
                    for p in parsed:
                        c = p.columns
                        copy.write_row(
                            (
                                p.envelope_id, c["envelope_type"], None, c["team_id"],
                                c["enterprise_id"], c["api_app_id"], c["event_id"],
                                c["event_type"], c["channel_id"], c["user_id"],
                                c["retry_attempt"], c["retry_reason"],
                                None if p.queryable_text is p.text else p.queryable_text,
                                p.text, p.sha256,
                            )
                        )  # fmt: skip
                cursor.execute(
                    statements.INSERT_FROM_IMPORT_STAGING,
                    {"now": now, "status": "done", "completed_at": now},
                )
                assert cursor.rowcount == len(parsed)
        elapsed["binary"] += time.perf_counter() - t
    return {"copy-text": n / elapsed["text"], "copy-binary": n / elapsed["binary"]}


@contextmanager
def scratch_postgres(server_url: str) -> Iterator[str]:
    name = f"recorder_bench_{os.getpid()}"
    libpq = make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(libpq).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
        if key in summary:
            print(f"  {key:<11} {summary[key]:>10,.0f} envelopes/s")
    for key in ("copy-text", "copy-binary"):
        if key in summary:
            print(f"  {key:<11} {summary[key]:>10,.0f} envelopes/s (write side only)")
    for ours, theirs in PAIRS:
        if ours not in summary:
            continue
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
    parser.add_argument(
        "--import-batch", type=int, default=BATCH, help="envelopes per transaction, both sides"
    )
    parser.add_argument(
        "--import-jobs",
        type=int,
        default=2,
        help="worker processes of the import path (1: parse in the importing process)",
    )
    parser.add_argument(
        "--import-envelope",
        choices=("1k", "1.8k"),
        default="1k",
        help="imported envelopes without (about 1 KB) or with (1.8 KB) rich-text blocks",
    )
    parser.add_argument(
        "--copy-formats",
        type=int,
        default=0,
        metavar="N",
        help="also time COPY text against COPY binary on N prepared envelopes (PostgreSQL)",
    )
    args = parser.parse_args(argv)
    if not args.postgres and not args.sqlite:
        parser.error("give --postgres URL and/or --sqlite PATH")
    n_import = args.import_n if args.import_n is not None else 5 * args.n
    blocks = args.import_envelope == "1.8k"
    size = statistics.mean(len(line) for line in envelope_lines(100))
    import_size = statistics.mean(len(line) for line in envelope_lines(100, blocks=blocks))
    print(
        f"envelope size: record {size:,.0f}, import {import_size:,.0f} bytes of JSON on average;"
        f" import batch {args.import_batch}, {args.import_jobs} import job(s)"
    )
    with ExitStack() as stack:
        parsers = (
            stack.enter_context(ImportParsers(args.import_jobs)) if args.import_jobs > 1 else None
        )
        setup = ImportSetup(args.import_batch, parsers, blocks)
        if args.postgres:
            with scratch_postgres(args.postgres) as url:
                db.upgrade(url)
                raw = RawPostgres(url, args.import_batch)
                with SQLEventBuffer(url) as buffer:
                    summary = run_backend(
                        "postgresql", buffer, raw, args.n, n_import, args.rounds, setup
                    )
                    if args.copy_formats:
                        summary.update(copy_formats(buffer, args.copy_formats, setup))
                raw.close()
            report("PostgreSQL", summary, args.n, n_import, args.rounds)
        if args.sqlite:
            with scratch_sqlite(args.sqlite) as path:
                url = f"sqlite:///{path}"
                db.upgrade(url)
                raw_lite = RawSQLite(path, args.import_batch)
                with SQLEventBuffer(url) as buffer:
                    summary = run_backend(
                        "sqlite", buffer, raw_lite, args.n, n_import, args.rounds, setup
                    )
                raw_lite.close()
            report("SQLite", summary, args.n, n_import, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
