"""Where the archive keeps things on disk, and how a file is made durable.

An archive is a directory with a marker file, ``recorder-archive.json``,
that holds its id (the manifest rows name it, so the directory may be
mounted anywhere), and one sub-directory per UTC month (``month=2026-11``)
or day (``day=2026-11-30``) of ``received_at``, holding Parquet files. A
file is written under a hidden temporary name, fsynced, renamed into place
and its directory fsynced: a name ending in ``.parquet`` always holds a
complete file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from recorder.archive.errors import ArchiveError

MARKER = "recorder-archive.json"
FORMAT_VERSION = 1
SUFFIX = ".parquet"
TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"
PARTITIONS = ("month", "day")
UTC = dt.timezone.utc


@dataclass(frozen=True, slots=True)
class ArchiveDir:
    """An archive directory and the id its marker file holds."""

    path: Path
    archive_id: str

    def file_path(self, name: str) -> Path:
        """The absolute path of a manifest file name (a path relative to the archive)."""
        return self.path / name

    def temp_path(self, name: str) -> Path:
        final = self.file_path(name)
        return final.with_name(f"{TEMP_PREFIX}{final.name}{TEMP_SUFFIX}")

    def parquet_files(self) -> list[str]:
        """Every complete file in the archive (temporary ones excluded), sorted."""
        return sorted(
            p.relative_to(self.path).as_posix()
            for p in self.path.glob(f"*/*{SUFFIX}")
            if not p.name.startswith(TEMP_PREFIX)
        )

    def glob(self) -> str:
        """The pattern DuckDB reads: every complete file, in every partition."""
        # Temporary files end in .tmp, so this never matches a half-written one.
        return str(self.path / "*" / f"*{SUFFIX}")


def open_archive(directory: str | os.PathLike[str], *, create: bool = False) -> ArchiveDir:
    """The archive at ``directory``; with ``create``, make it (and the directory) if need be.

    Raises
    ------
    ArchiveError
        Not a directory, not an archive (and not asked to create one), or a
        marker file that is not ours.
    """
    path = Path(directory).expanduser().absolute()
    marker = path / MARKER
    if not marker.exists():
        if not create:
            if not path.is_dir():
                raise ArchiveError(f"no archive at {path}: no such directory")
            raise ArchiveError(f"no archive at {path}: it has no {MARKER}")
        _create(path)
    try:
        data = json.loads(marker.read_text("utf-8"))
        archive_id = data["archive_id"]
        if not isinstance(archive_id, str) or not archive_id:
            raise ValueError("archive_id is not a non-empty string")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArchiveError(f"{marker} is not a recorder archive marker: {exc}") from exc
    return ArchiveDir(path, archive_id)


def _create(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not path.is_dir():
            raise ArchiveError(f"{path} is not a directory")
        body = json.dumps(
            {
                "archive_id": str(uuid.uuid4()),
                "format": FORMAT_VERSION,
                "created_at": dt.datetime.now(UTC).isoformat(),
            },
            indent=2,
        )
        temp = path / f"{TEMP_PREFIX}{MARKER}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        write_durably(temp, body.encode())
        try:
            # link() fails if another process made the marker first: theirs wins.
            os.link(temp, path / MARKER)
        except FileExistsError:
            pass
        finally:
            temp.unlink()
        fsync_directory(path)
    except OSError as exc:
        raise ArchiveError(f"cannot create an archive at {path}: {exc}") from exc


def write_durably(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_directory(path: Path) -> None:
    """Make a rename or a new entry in ``path`` survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def partition_of(received_at: dt.datetime, partition: str) -> tuple[str, dt.datetime]:
    """The partition directory a time falls in, and the (exclusive) end of that partition."""
    at = received_at.astimezone(UTC)
    if partition == "day":
        start = dt.datetime(at.year, at.month, at.day, tzinfo=UTC)
        return f"day={start:%Y-%m-%d}", start + dt.timedelta(days=1)
    if partition == "month":
        start = dt.datetime(at.year, at.month, 1, tzinfo=UTC)
        end = dt.datetime(at.year + at.month // 12, at.month % 12 + 1, 1, tzinfo=UTC)
        return f"month={start:%Y-%m}", end
    raise ArchiveError(f"unknown partition {partition!r}; choose one of {', '.join(PARTITIONS)}")


def new_file_name(partition_dir: str, prune_run_id: int, sequence: int) -> str:
    """A fresh file name: the run and its sequence, plus a random part against collisions."""
    return f"{partition_dir}/r{prune_run_id:06d}-{sequence:05d}-{secrets.token_hex(3)}{SUFFIX}"


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
