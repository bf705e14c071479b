"""Writing one Parquet file of envelopes durably, and reading back what a manifest needs.

The columns are the audit columns of ``recorder query`` (every reporting
column, ``received_at``, ``status``, ``envelope_sha256`` and the exact
``envelope_text``), zstd-compressed, one row group per prune batch, with
min/max statistics so a time-range query skips what it does not need.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recorder import statements
from recorder.archive import deps
from recorder.archive.errors import ArchiveError
from recorder.archive.layout import ArchiveDir, fsync_directory, remove_quietly

COLUMNS: tuple[str, ...] = statements.AUDIT_COLUMNS
_TIMESTAMP_COLUMNS = frozenset({"received_at"})
_INTEGER_COLUMNS = frozenset({"retry_attempt"})
COMPRESSION = "zstd"
#: Columns with few distinct values are dictionary-encoded; the unique ones
#: (ids, digests, texts) are not: a dictionary would only be built and dropped.
DICTIONARY_COLUMNS = [
    "envelope_type",
    "event_type",
    "team_id",
    "enterprise_id",
    "api_app_id",
    "channel_id",
    "user_id",
    "retry_reason",
    "status",
]
_HASH_CHUNK = 1 << 20


def arrow_schema() -> Any:
    pa, _ = deps.pyarrow()
    fields = []
    for name in COLUMNS:
        if name in _TIMESTAMP_COLUMNS:
            kind = pa.timestamp("us", tz="UTC")
        elif name in _INTEGER_COLUMNS:
            kind = pa.int32()
        else:
            kind = pa.string()
        fields.append(pa.field(name, kind, nullable=name not in ("envelope_id", "received_at")))
    return pa.schema(fields)


class MembersDigest:
    """SHA-256 over ``envelope_id NUL received_at NUL envelope_sha256 NUL`` for each row.

    ``received_at`` is in whole microseconds since the Unix epoch, in
    decimal; an envelope id never holds NUL (:mod:`recorder.envelope`
    refuses it), so the sequence is unambiguous. Kept in the manifest beside
    the file's own digest: the file's digest proves the bytes, this one
    proves which envelopes (and which versions of them) the file holds,
    whatever its encoding. Computed by Arrow, a batch at a time.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.count = 0
        self.first: dt.datetime | None = None
        self.last: dt.datetime | None = None

    def add(self, ids: Any, received_at: Any, digests: Any) -> None:
        """One batch: Arrow arrays of envelope ids, received_at times and digests."""
        if len(ids) == 0:
            return
        pa, _ = deps.pyarrow()
        import pyarrow.compute as pc

        micros = received_at.cast(pa.int64()).cast(pa.string())
        empty = pa.array([""] * len(ids), type=pa.string())
        # Each row becomes "id NUL micros NUL digest NUL"; a string array's
        # data buffer holds its values back to back, between two offsets.
        rows = pc.binary_join_element_wise(ids, micros, digests, empty, "\x00")
        offsets, data = rows.buffers()[1:3]
        start = struct.unpack_from("<i", offsets, 4 * rows.offset)[0]
        end = struct.unpack_from("<i", offsets, 4 * (rows.offset + len(rows)))[0]
        self._hash.update(memoryview(data)[start:end])
        self.count += len(ids)
        bounds = pc.min_max(received_at)
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        self.first = low if self.first is None else min(self.first, low)
        self.last = high if self.last is None else max(self.last, high)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@dataclass(frozen=True, slots=True)
class FileStats:
    """What the manifest records of a complete file."""

    row_count: int
    first_received_at: dt.datetime | None
    last_received_at: dt.datetime | None
    file_bytes: int
    file_sha256: str
    members_sha256: str


def file_sha256(path: Path) -> tuple[int, str]:
    """The size and hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class ParquetFile:
    """One archive file being written: rows go in batches; :meth:`commit` makes it durable.

    Until :meth:`commit` returns, the file exists only under a temporary
    name that no reader looks at; :meth:`abort` removes it.
    """

    def __init__(self, archive: ArchiveDir, name: str, metadata: dict[str, str]) -> None:
        pa, pq = deps.pyarrow()
        self._pa = pa
        self.archive = archive
        self.name = name
        self.final = archive.file_path(name)
        self.temp = archive.temp_path(name)
        self.members = MembersDigest()
        self._schema = arrow_schema().with_metadata(
            {f"recorder.{k}": v for k, v in metadata.items()}
        )
        try:
            _make_directory(self.final.parent, archive.path)
            self._writer = pq.ParquetWriter(
                str(self.temp),
                self._schema,
                compression=COMPRESSION,
                use_dictionary=DICTIONARY_COLUMNS,
                write_statistics=True,
            )
        except OSError as exc:
            raise ArchiveError(f"cannot write {self.temp}: {exc}") from exc

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        """Append rows (values in :data:`COLUMNS` order) as one row group."""
        if not rows:
            return
        columns = list(zip(*rows, strict=True))
        arrays = [
            self._pa.array(values, type=field.type)
            for values, field in zip(columns, self._schema, strict=True)
        ]
        table = self._pa.Table.from_arrays(arrays, schema=self._schema)
        self.members.add(
            table.column("envelope_id").combine_chunks(),
            table.column("received_at").combine_chunks(),
            table.column("envelope_sha256").combine_chunks(),
        )
        try:
            self._writer.write_table(table)
        except OSError as exc:
            raise ArchiveError(f"cannot write {self.temp}: {exc}") from exc

    def commit(self) -> FileStats:
        """Close, fsync, rename into place, fsync the directory; the file's manifest facts."""
        try:
            self._writer.close()
            with open(self.temp, "rb+") as handle:
                os.fsync(handle.fileno())
            size, digest = file_sha256(self.temp)
            os.replace(self.temp, self.final)
            fsync_directory(self.final.parent)
        except OSError as exc:
            raise ArchiveError(f"cannot complete {self.final}: {exc}") from exc
        return FileStats(
            row_count=self.members.count,
            first_received_at=self.members.first,
            last_received_at=self.members.last,
            file_bytes=size,
            file_sha256=digest,
            members_sha256=self.members.hexdigest(),
        )

    def abort(self) -> None:
        # The file is being thrown away: a failure to close it changes nothing.
        with contextlib.suppress(Exception):
            self._writer.close()
        remove_quietly(self.temp)


def _make_directory(directory: Path, root: Path) -> None:
    if directory.is_dir():
        return
    directory.mkdir(parents=True, exist_ok=True)
    # The new partition's entry in the archive root must survive a crash too.
    fsync_directory(root)


def read_stats(path: Path) -> FileStats:
    """Recompute a complete file's manifest facts from its contents."""
    _, pq = deps.pyarrow()
    members = MembersDigest()
    try:
        parquet = pq.ParquetFile(str(path))
        for batch in parquet.iter_batches(
            columns=["envelope_id", "received_at", "envelope_sha256"]
        ):
            members.add(*batch.columns)
        size, digest = file_sha256(path)
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"cannot read {path}: {exc}") from exc
    return FileStats(
        row_count=members.count,
        first_received_at=members.first,
        last_received_at=members.last,
        file_bytes=size,
        file_sha256=digest,
        members_sha256=members.hexdigest(),
    )


def read_ids(path: Path) -> list[str]:
    """The envelope ids a complete file holds, in file order."""
    _, pq = deps.pyarrow()
    try:
        table = pq.read_table(str(path), columns=["envelope_id"])
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"cannot read {path}: {exc}") from exc
    ids: list[str] = table.column("envelope_id").to_pylist()
    return ids


def chunked(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
