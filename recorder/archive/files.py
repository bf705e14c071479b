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
import json
import os
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


def _timestamp(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class MembersDigest:
    """SHA-256 over one JSON line ``[envelope_id, received_at, envelope_sha256]`` per row.

    Kept in the manifest beside the file's own digest: the file's digest
    proves the bytes, this one proves which envelopes (and which versions of
    them) the file holds, whatever its encoding.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.count = 0
        self.first: dt.datetime | None = None
        self.last: dt.datetime | None = None

    def add(self, envelope_id: str, received_at: dt.datetime, sha256: str) -> None:
        line = json.dumps([envelope_id, _timestamp(received_at), sha256], separators=(",", ":"))
        self._hash.update(line.encode() + b"\n")
        self.count += 1
        if self.first is None or received_at < self.first:
            self.first = received_at
        if self.last is None or received_at > self.last:
            self.last = received_at

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
                str(self.temp), self._schema, compression=COMPRESSION, write_statistics=True
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
        index = {name: i for i, name in enumerate(COLUMNS)}
        for envelope_id, received_at, sha in zip(
            columns[index["envelope_id"]],
            columns[index["received_at"]],
            columns[index["envelope_sha256"]],
            strict=True,
        ):
            self.members.add(envelope_id, received_at, sha)
        try:
            self._writer.write_table(self._pa.Table.from_arrays(arrays, schema=self._schema))
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
            for envelope_id, received_at, sha in zip(
                *(c.to_pylist() for c in batch.columns), strict=True
            ):
                members.add(envelope_id, received_at, sha)
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
