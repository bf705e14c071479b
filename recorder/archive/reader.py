"""Reading the archive with DuckDB: SQL over every file at once, and audit exports.

:func:`connect` opens an in-memory DuckDB whose view ``envelopes`` covers
every complete file of the archive (the audit columns of ``recorder
query``), then locks DuckDB down: file access is limited to those files, the
configuration cannot be changed back, and :func:`run_sql` accepts one
SELECT (or EXPLAIN) statement only, so a query can neither write into the
archive nor read anything else on the machine.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

from recorder.archive import deps
from recorder.archive.errors import ArchiveError
from recorder.archive.files import COLUMNS
from recorder.archive.layout import ArchiveDir
from recorder.audit import AuditRow, QuerySpec

VIEW = "envelopes"
FETCH_ROWS = 2000
_EMPTY_COLUMNS = ", ".join(
    f"{name} {'TIMESTAMPTZ' if name == 'received_at' else 'INTEGER' if name == 'retry_attempt' else 'VARCHAR'}"
    for name in COLUMNS
)
_FILTERS = ("team_id", "channel_id", "user_id", "envelope_type", "event_type")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(archive: ArchiveDir, *, files: Sequence[str] | None = None) -> Any:
    """A locked-down DuckDB connection with the view ``envelopes`` over the archive's files."""
    duckdb = deps.duckdb()
    names = archive.parquet_files() if files is None else list(files)
    paths = [str(archive.file_path(name)) for name in names]
    con = duckdb.connect(":memory:")
    try:
        # UTC, whatever the machine's zone: received_at prints as stored.
        con.execute("SET TimeZone = 'UTC'")
        if paths:
            listed = ", ".join(_literal(p) for p in paths)
            con.execute(
                f"CREATE VIEW {VIEW} AS SELECT {', '.join(COLUMNS)} "
                f"FROM read_parquet([{listed}], hive_partitioning = false)"
            )
            con.execute(f"SET allowed_paths = [{listed}]")
        else:
            con.execute(f"CREATE TABLE {VIEW} ({_EMPTY_COLUMNS})")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except duckdb.Error as exc:
        con.close()
        raise ArchiveError(f"cannot open the archive at {archive.path}: {exc}") from exc
    return con


def run_sql(con: Any, sql: str) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
    """Run one read-only statement; its column names and its rows, streamed.

    Raises
    ------
    ArchiveError
        Not exactly one SELECT or EXPLAIN statement, or DuckDB refused it.
    """
    duckdb = deps.duckdb()
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise ArchiveError(f"archive query: {_first_line(exc)}") from exc
    if len(statements) != 1:
        raise ArchiveError(f"archive query: give one statement, not {len(statements)}")
    kind = str(statements[0].type).rsplit(".", 1)[-1]
    if kind not in ("SELECT", "EXPLAIN"):
        raise ArchiveError(f"archive query: only SELECT statements read the archive, not {kind}")
    try:
        result = con.execute(sql)
    except duckdb.Error as exc:
        raise ArchiveError(f"archive query: {_first_line(exc)}") from exc
    columns = [d[0] for d in result.description]

    def rows() -> Iterator[tuple[Any, ...]]:
        while batch := result.fetchmany(FETCH_ROWS):
            yield from batch

    return columns, rows()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def query_archive(archive: ArchiveDir, spec: QuerySpec) -> Iterator[AuditRow]:
    """The archived envelopes ``spec`` selects, oldest first, as ``recorder query`` gives them.

    Filters on the time range go to DuckDB as bounds on ``received_at``, so
    row groups (and files) outside it are skipped by their statistics.
    """
    duckdb = deps.duckdb()
    conditions: list[str] = []
    params: list[Any] = []
    for name in _FILTERS:
        value = getattr(spec, name)
        if value is not None:
            conditions.append(f"{name} = ?")
            params.append(value)
    if spec.since is not None:
        conditions.append("received_at >= ?")
        params.append(spec.since.astimezone(dt.timezone.utc))
    if spec.until is not None:
        conditions.append("received_at < ?")
        params.append(spec.until.astimezone(dt.timezone.utc))
    sql = f"SELECT {', '.join(COLUMNS)} FROM {VIEW}"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    sql += " ORDER BY received_at, envelope_id"
    if spec.limit is not None:
        sql += f" LIMIT {int(spec.limit)}"
    con = connect(archive)
    try:
        try:
            result = con.execute(sql, params)
        except duckdb.Error as exc:
            raise ArchiveError(f"reading the archive: {_first_line(exc)}") from exc
        while batch := result.fetchmany(FETCH_ROWS):
            for row in batch:
                values = dict(zip(COLUMNS, row, strict=True))
                values["received_at"] = values["received_at"].astimezone(dt.timezone.utc)
                yield AuditRow(**values)
    finally:
        con.close()
