"""The archive's optional dependencies, imported on first use.

pyarrow writes the Parquet files (streaming one row group per batch, from
Python rows, with no staging file) and DuckDB reads them (SQL over every
file at once, SHA-256 inside the engine). Both come with the ``archive``
extra; without it the archive commands fail with one line naming the extra.
"""

from __future__ import annotations

from types import ModuleType

from recorder.errors import MissingDependency

EXTRA = "archive"


def pyarrow() -> tuple[ModuleType, ModuleType]:
    """``pyarrow`` and ``pyarrow.parquet``."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependency("pyarrow", EXTRA) from exc
    return pa, pq


def duckdb() -> ModuleType:
    try:
        import duckdb as module
    except ImportError as exc:
        raise MissingDependency("duckdb", EXTRA) from exc
    return module
