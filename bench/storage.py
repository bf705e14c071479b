"""How PostgreSQL stores envelope rows: the default TOAST threshold, lz4, whole rows.

Usage::

    .venv/bin/python bench/storage.py --postgres postgresql://postgres@127.0.0.1:5432/postgres

In one scratch database (dropped afterwards): import ``--rows`` of the 1 KB
envelopes of ``bench/record.py``, copy them into a plain table, then for each
layout build a table like ``envelopes`` (its columns and indexes) and time,
in server time per row:

* ``insert``: ``INSERT ... SELECT`` of every row (``--rounds`` times, layouts
  alternating);
* ``seal read``: SHA-256 of each text in ``(received_at, envelope_id)``
  order, through the index, as ``recorder seal`` reads;
* ``verify cast``: each text cast to ``jsonb`` and compared with the copy, as
  ``recorder verify`` does;
* ``copy field``: one field of the copy, in a sequential scan, as reports
  that read the queryable copy do.

Layouts: ``default`` (``pglz``, TOAST from rows of 2,032 bytes), ``lz4``
(both columns compressed with lz4), ``whole`` (``toast_tuple_target`` 8,160,
migration 0011). Figures go to stdout as JSON; not part of CI.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import psycopg
from record import envelope_lines, scratch_postgres

from recorder import db
from recorder.adapters.sql import SQLEventBuffer
from recorder.importer import import_envelopes

LAYOUTS = {
    "default": ["ALTER TABLE t RESET (toast_tuple_target)"],
    "lz4": [
        "ALTER TABLE t RESET (toast_tuple_target)",
        "ALTER TABLE t ALTER COLUMN envelope SET COMPRESSION lz4",
        "ALTER TABLE t ALTER COLUMN envelope_text SET COMPRESSION lz4",
    ],
    "whole": ["ALTER TABLE t SET (toast_tuple_target = 8160)"],
}

READS = {
    "seal_read": (
        "SELECT count(*) FROM (SELECT sha256(convert_to(envelope_text, 'UTF8')) AS d FROM t "
        "ORDER BY received_at, envelope_id) x WHERE d <> ''",
        "off",
    ),
    "verify_cast": ("SELECT count(*) FROM t WHERE envelope_text::jsonb = envelope", "on"),
    "copy_field": ("SELECT count(*) FROM t WHERE envelope ->> 'type' <> 'x'", "on"),
}


def build(conn: psycopg.Connection[Any], layout: str) -> float:
    """A fresh ``t`` in this layout, filled from ``src``; seconds the insert took."""
    conn.execute("DROP TABLE IF EXISTS t")
    conn.execute("CREATE TABLE t (LIKE envelopes INCLUDING ALL)")
    for statement in LAYOUTS[layout]:
        conn.execute(statement)
    conn.execute("CHECKPOINT")
    started = time.perf_counter()
    conn.execute("INSERT INTO t SELECT * FROM src")
    return time.perf_counter() - started


def sizes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    row = conn.execute(
        "SELECT pg_relation_size('t'), pg_total_relation_size(reltoastrelid) "
        "FROM pg_class WHERE relname = 't'"
    ).fetchone()
    assert row is not None
    return {"heap_bytes": row[0], "toast_bytes": row[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    figures: dict[str, Any] = {"rows": args.rows}
    with scratch_postgres(args.postgres) as url:
        db.upgrade(url)
        buffer = SQLEventBuffer(url)
        import_envelopes(buffer, envelope_lines(args.rows, blocks=False))
        buffer.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET jit = off")
            conn.execute("CREATE TABLE src AS SELECT * FROM envelopes")
            row = conn.execute(
                "SELECT avg(octet_length(envelope_text)), avg(octet_length(envelope::text)) "
                "FROM src"
            ).fetchone()
            assert row is not None
            figures["text_bytes"], figures["copy_text_bytes"] = round(row[0]), round(row[1])
            inserts: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
            for _ in range(args.rounds):
                for layout in LAYOUTS:
                    inserts[layout].append(build(conn, layout) / args.rows * 1e6)
            for layout in LAYOUTS:
                build(conn, layout)
                conn.execute("VACUUM ANALYZE t")
                figures[layout] = {
                    **sizes(conn),
                    "insert_us": [round(us, 1) for us in inserts[layout]],
                }
                for read, (sql, seqscan) in READS.items():
                    conn.execute(f"SET enable_seqscan = {seqscan}")
                    conn.execute(f"SET enable_bitmapscan = {seqscan}")
                    took = []
                    for _ in range(5):
                        started = time.perf_counter()
                        conn.execute(sql)
                        took.append((time.perf_counter() - started) / args.rows * 1e6)
                    figures[layout][f"{read}_us"] = round(statistics.median(took), 2)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
