"""The cold archive: bytes per envelope, prune --archive against plain prune, query, verify.

Usage::

    .venv/bin/python bench/archive.py --postgres postgresql://postgres@127.0.0.1:5432/postgres

What it does, in one run (not part of CI; needs the ``archive`` extra):

1. **Load** ``--rows`` (default 1,000,000) envelopes into a scratch PostgreSQL
   database through the import path, spread over 60 days (the same envelopes
   as ``bench/scale.py``: about 1 KB each), then ``VACUUM ANALYZE``.
2. **Sizes**: PostgreSQL's bytes per envelope (``pg_total_relation_size``
   of ``envelopes``: heap, TOAST and every index, over the row count) and the
   JSON text's (``octet_length(envelope_text)``).
3. **Prune**: policy ``keep 30d`` (about half expire). The database is cloned
   (``CREATE DATABASE ... TEMPLATE``) so both contenders start from the same
   rows: plain ``prune`` on one clone; on the other the policy is given an
   archive directory (``retention set --archive``) and ``prune`` runs with no
   archive option, as a scheduled prune would; each in batches of 5,000.
   Rows per second of each, and their ratio.
4. **Archive bytes** per archived envelope (every Parquet file), against the
   JSON text and against PostgreSQL's bytes per envelope.
5. **Query**: every archived envelope of one channel over one month, through
   :func:`recorder.archive.reader.query_archive` (what ``recorder archive
   export`` streams), connection included; median of 5 after one warm-up.
6. **Verify**: :func:`recorder.archive.verify.verify_archive` (file digests,
   every text's digest inside DuckDB, every pruned envelope against the
   archive and the seal), envelopes per second.
7. **Writer choice**: 20,000 archived rows written again to Parquet by
   pyarrow (streamed row groups) and by DuckDB alone (``executemany``, and
   a JSON Lines staging file read by ``COPY ... TO``), rows per second.

The scratch databases and the archive are removed afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import admin, database_url, libpq, load

from recorder import audit, db, retention
from recorder.archive import ArchiveOptions, open_archive
from recorder.archive.files import COLUMNS, ParquetFile
from recorder.archive.reader import query_archive
from recorder.archive.verify import verify_archive
from recorder.engine import create_engine

UTC = dt.timezone.utc
DAY = dt.timedelta(days=1)
BATCH = 5000


def sizes(url: str) -> dict[str, float]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE envelopes")
        row = conn.execute(
            "SELECT count(*), sum(octet_length(envelope_text)),"
            " pg_total_relation_size('envelopes'), pg_relation_size('envelopes'),"
            " pg_indexes_size('envelopes') FROM envelopes"
        ).fetchone()
    assert row is not None
    count, text, total, heap, indexes = (int(v) for v in row)
    return {
        "envelopes": count,
        "json_text_bytes_per_envelope": text / count,
        "postgres_bytes_per_envelope": total / count,
        "postgres_heap_bytes_per_envelope": heap / count,
        "postgres_index_bytes_per_envelope": indexes / count,
    }


def run_prune(url: str, archive: ArchiveOptions | None) -> dict[str, Any]:
    engine = create_engine(url)
    started = time.perf_counter()
    report = retention.prune(engine, batch_size=BATCH, actor="bench", archive=archive)
    elapsed = time.perf_counter() - started
    engine.dispose()
    assert report.status == "completed", report
    return {
        "deleted": report.deleted_total,
        "seconds": elapsed,
        "rows_per_s": report.deleted_total / elapsed,
        **({"files": len(report.archive.files)} if report.archive else {}),
    }


def writer_choice(directory: Path, rows: int = 20_000) -> dict[str, float]:
    """Rewrite ``rows`` archived rows to Parquet: pyarrow against DuckDB alone."""
    import duckdb
    import pyarrow.parquet as pq

    archive = open_archive(directory)
    table = pq.read_table(archive.file_path(archive.parquet_files()[0])).slice(0, rows)
    data = [tuple(r[c] for c in COLUMNS) for r in table.to_pylist()]
    rows = len(data)
    out: dict[str, float] = {"rows": rows}
    scratch = Path(tempfile.mkdtemp(prefix="archive-choice-"))
    try:
        target = open_archive(scratch / "a", create=True)
        t = time.perf_counter()
        file = ParquetFile(target, "month=2000-01/x.parquet", {})
        for start in range(0, rows, BATCH):
            file.write(data[start : start + BATCH])
        file.commit()
        out["pyarrow_rows_per_s"] = rows / (time.perf_counter() - t)

        con = duckdb.connect()
        con.execute(
            "CREATE TABLE t (received_at TIMESTAMPTZ, "
            + ", ".join(
                f"{c} {'INTEGER' if c == 'retry_attempt' else 'VARCHAR'}" for c in COLUMNS[1:]
            )
            + ")"
        )
        sample = data[:2000]
        t = time.perf_counter()
        con.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(COLUMNS))})", sample)
        con.execute(f"COPY t TO '{scratch / 'e.parquet'}' (FORMAT parquet, COMPRESSION zstd)")
        out["duckdb_executemany_rows_per_s"] = len(sample) / (time.perf_counter() - t)

        t = time.perf_counter()
        staging = scratch / "staging.jsonl"
        with open(staging, "w") as handle:
            for row in data:
                values = dict(zip(COLUMNS, row, strict=True))
                values["received_at"] = values["received_at"].isoformat()
                handle.write(json.dumps(values) + "\n")
        con.execute(
            f"COPY (SELECT * FROM read_json('{staging}')) TO '{scratch / 'j.parquet'}' "
            "(FORMAT parquet, COMPRESSION zstd)"
        )
        out["duckdb_jsonl_staging_rows_per_s"] = rows / (time.perf_counter() - t)
        con.close()
    finally:
        shutil.rmtree(scratch)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the scratch databases")
    parser.add_argument(
        "--name", default="recorder_archive", help="prefix of the scratch databases' names"
    )
    args = parser.parse_args(argv)

    name = f"{args.name}_{os.getpid()}"
    plain, archiving = f"{name}_plain", f"{name}_arch"
    url = database_url(args.postgres, name)
    plain_url, arch_url = database_url(args.postgres, plain), database_url(args.postgres, archiving)
    directory = Path(tempfile.mkdtemp(prefix="recorder-archive-bench-")) / "archive"
    results: dict[str, Any] = {"rows": args.rows, "uptime_before": os.getloadavg()}
    admin(args.postgres, f'CREATE DATABASE "{name}"')
    try:
        db.upgrade(url)
        now = dt.datetime.now(UTC)
        print(f"loading {args.rows:,} envelopes through the import path ...", flush=True)
        seconds = load(url, args.rows, now)
        results["load"] = {"seconds": seconds, "rows_per_s": args.rows / seconds}
        print(f"  {seconds:.1f} s, {args.rows / seconds:,.0f} rows/s", flush=True)
        results["sizes"] = sizes(url)
        print(f"sizes: {results['sizes']}", flush=True)
        engine = create_engine(url)
        retention.set_policy(engine, "all", keep="30d", actor="bench")
        engine.dispose()
        admin(
            args.postgres,
            f'CREATE DATABASE "{plain}" TEMPLATE "{name}"',
            f'CREATE DATABASE "{archiving}" TEMPLATE "{name}"',
        )
        results["plain_prune"] = run_prune(plain_url, None)
        print(f"plain prune: {results['plain_prune']}", flush=True)
        # The scheduled path: the policy's own archive directory, no option.
        engine = create_engine(arch_url)
        retention.set_policy(engine, "all", keep="30d", archive_dir=directory, actor="bench")
        engine.dispose()
        results["archive_prune"] = run_prune(arch_url, None)
        print(f"prune --archive: {results['archive_prune']}", flush=True)
        results["archive_vs_plain_rows_per_s"] = (
            results["archive_prune"]["rows_per_s"] / results["plain_prune"]["rows_per_s"]
        )

        archive = open_archive(directory)
        files = archive.parquet_files()
        archive_bytes = sum(archive.file_path(n).stat().st_size for n in files)
        archived = results["archive_prune"]["deleted"]
        per = archive_bytes / archived
        results["archive"] = {
            "files": len(files),
            "bytes": archive_bytes,
            "bytes_per_envelope": per,
            "vs_json_text": per / results["sizes"]["json_text_bytes_per_envelope"],
            "vs_postgres": per / results["sizes"]["postgres_bytes_per_envelope"],
        }
        print(f"archive: {results['archive']}", flush=True)

        months = sorted({n.split("/")[0] for n in files})
        month = months[-1] if len(months) == 1 else months[-2]
        start = dt.datetime.strptime(month + "-01", "month=%Y-%m-%d").replace(tzinfo=UTC)
        end = (start + 32 * DAY).replace(day=1)
        spec = audit.QuerySpec(channel_id="C00042", since=start, until=end)
        found = len(list(query_archive(archive, spec)))
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            list(query_archive(archive, spec))
            runs.append(time.perf_counter() - t)
        results["query_one_channel_one_month"] = {
            "month": month,
            "rows": found,
            "median_s": statistics.median(runs),
            "max_s": max(runs),
        }
        print(f"query: {results['query_one_channel_one_month']}", flush=True)

        engine = create_engine(arch_url)
        t = time.perf_counter()
        report = verify_archive(engine, directory)
        elapsed = time.perf_counter() - t
        engine.dispose()
        assert report.ok, [f.line() for f in report.findings[:5]]
        results["verify_archive"] = {
            "envelopes": report.envelopes,
            "pruned_checked": report.pruned,
            "seconds": elapsed,
            "envelopes_per_s": report.envelopes / elapsed,
        }
        print(f"verify --archive: {results['verify_archive']}", flush=True)
        results["writer_choice"] = writer_choice(directory)
        print(f"writer choice: {results['writer_choice']}", flush=True)
    finally:
        if not args.keep:
            admin(
                args.postgres,
                f'DROP DATABASE IF EXISTS "{plain}" WITH (FORCE)',
                f'DROP DATABASE IF EXISTS "{archiving}" WITH (FORCE)',
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            )
            shutil.rmtree(directory.parent, ignore_errors=True)
    results["uptime_after"] = os.getloadavg()
    print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
