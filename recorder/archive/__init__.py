"""The cold tier: envelopes written to Parquet files before a prune deletes them.

``recorder prune --archive DIR`` (:func:`recorder.retention.prune` with
``archive=ArchiveOptions(DIR)``), or a prune of a policy set with
``retention set --archive DIR``, archives before it deletes;
``recorder archive query|export`` reads the files with DuckDB;
``recorder verify --archive DIR`` checks them against the manifest and the
prune log. Needs the ``archive`` extra (pyarrow and DuckDB).
"""

from recorder.archive.archiver import ArchiveOptions, ArchiveProgress
from recorder.archive.errors import ArchiveError
from recorder.archive.layout import ArchiveDir, open_archive

__all__ = ["ArchiveDir", "ArchiveError", "ArchiveOptions", "ArchiveProgress", "open_archive"]
