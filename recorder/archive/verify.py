"""``recorder verify --archive DIR``: the archive against its manifest and the prune log.

Names, each on a line of its own:

* **MISSING FILE** -- in the manifest as written, not in the directory;
* **ALTERED FILE** -- its size or SHA-256 differs from the manifest's
  (truncated, edited, replaced);
* **UNKNOWN FILE** -- a Parquet file the manifest does not list;
* **MODIFIED** envelope -- its archived text no longer has the digest beside
  it (and no logged erasure leads from that digest to the text's), or that digest is not the one the prune log (and, once sealed, the
  seal) recorded when it was deleted;
* **MISSING** envelope -- removed by an archiving prune run, under a policy
  it archived here, but in no readable file of the archive;
* **UNACCOUNTED** envelope -- in the archive, but no prune logged its removal
  and the live database does not hold it (planted: a file and its manifest
  row rewritten together).

The manifest rows themselves are tamper-evident through the prune log and
the seal: an envelope's digest is checked against what was recorded when it
was deleted, whatever the manifest now says.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recorder.archive import deps, manifest
from recorder.archive.errors import ArchiveError
from recorder.archive.files import file_sha256
from recorder.archive.layout import ArchiveDir, open_archive
from recorder.archive.reader import connect
from recorder.engine import is_sqlite, read_only, storage_errors
from recorder.erasure_check import ErasureLedger
from recorder.schema import envelopes, pruned_envelopes, sealed_envelopes

_FETCH = 5000


@dataclass(frozen=True, slots=True)
class ArchiveFinding:
    kind: str
    """``missing-file``, ``altered-file``, ``unknown-file``, ``modified``, ``missing`` or
    ``unaccounted``."""
    subject: str
    """The file name, or the envelope id."""
    detail: str

    def line(self) -> str:
        return f"{self.kind.replace('-', ' ').upper()} {self.subject}: {self.detail}"


@dataclass(slots=True)
class ArchiveVerifyReport:
    archive_id: str
    findings: list[ArchiveFinding] = field(default_factory=list)
    files: int = 0
    """Files in the manifest (written or complete)."""
    envelopes: int = 0
    """Envelopes read from the archive's readable files."""
    pruned: int = 0
    """Envelopes removed by archiving prune runs, checked against the archive."""
    still_live: int = 0
    """Archived envelopes no prune removed (a hold placed while they were being archived)."""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings

    def of_kind(self, kind: str) -> set[str]:
        return {f.subject for f in self.findings if f.kind == kind}

    def summary(self) -> str:
        count = len(self.findings)
        verdict = "OK" if self.ok else f"FAILED: {count} {'problem' if count == 1 else 'problems'}"
        return (
            f"archive {verdict}; {self.files} files, {self.envelopes} archived envelopes, "
            f"{self.pruned} pruned envelopes accounted for"
            + (f", {self.still_live} archived and still live" if self.still_live else "")
        )


def verify_archive(engine: Engine, directory: str | Path) -> ArchiveVerifyReport:
    """Check the archive at ``directory`` against the manifest and the prune log.

    Raises
    ------
    ArchiveError
        ``directory`` is not an archive.
    StorageUnavailable
        The database failed.
    """
    started = time.monotonic()
    archive = open_archive(directory)
    report = ArchiveVerifyReport(archive.archive_id)
    entries = manifest.entries(engine, archive_id=archive.archive_id)
    listed = {e.file_name: e for e in entries if e.state in (manifest.WRITTEN, manifest.COMPLETE)}
    report.files = len(listed)
    readable = _check_files(archive, listed, report)
    # What a run removed under a policy whose files it wrote or completed here:
    # a run may also delete other policies' envelopes unarchived, or into
    # another archive (a policy's own archive directory), and those are not
    # this one's. The writer counts too: a run interrupted while deleting a
    # file's envelopes removed some of them, and the next run completes it.
    runs = sorted(
        {(e.prune_run_id, e.policy_name) for e in listed.values()}
        | {
            (e.deleted_by_run_id, e.policy_name)
            for e in listed.values()
            if e.deleted_by_run_id is not None
        }
    )
    con = connect(archive, files=readable)
    try:
        _check_texts(engine, con, report)
        _check_pruned(engine, con, runs, report)
    finally:
        con.close()
    report.seconds = time.monotonic() - started
    return report


def _check_files(
    archive: ArchiveDir, listed: dict[str, manifest.ManifestEntry], report: ArchiveVerifyReport
) -> list[str]:
    """File-level findings; the files DuckDB can still read (altered ones included)."""
    readable: list[str] = []
    for name, entry in sorted(listed.items()):
        path = archive.file_path(name)
        if not path.exists():
            report.findings.append(
                ArchiveFinding(
                    "missing-file",
                    name,
                    f"in the manifest ({entry.row_count} envelopes, written "
                    f"{entry.written_at:%Y-%m-%d %H:%M}) but not in the archive",
                )
            )
            continue
        try:
            size, digest = file_sha256(path)
        except OSError as exc:
            report.findings.append(ArchiveFinding("missing-file", name, f"cannot be read: {exc}"))
            continue
        if digest != entry.file_sha256:
            how = "truncated" if entry.file_bytes and size < entry.file_bytes else "changed"
            report.findings.append(
                ArchiveFinding(
                    "altered-file",
                    name,
                    f"{how} since it was written: {size} bytes, SHA-256 {digest}; "
                    f"the manifest says {entry.file_bytes} bytes, {entry.file_sha256}",
                )
            )
        if _parquet_readable(path):
            readable.append(name)
    for name in archive.parquet_files():
        if name not in listed:
            report.findings.append(
                ArchiveFinding("unknown-file", name, "not in the archive manifest")
            )
    return readable


def _parquet_readable(path: Path) -> bool:
    _, pq = deps.pyarrow()
    try:
        pq.read_metadata(str(path))
    except (OSError, ValueError):
        return False
    return True


def _check_texts(engine: Engine, con: Any, report: ArchiveVerifyReport) -> None:
    """Every archived text still has the digest stored beside it (computed inside DuckDB),
    or logged erasures lead from that digest (the original's, which a row keeps) to it."""
    duckdb = deps.duckdb()
    try:
        report.envelopes = int(con.execute("SELECT count(*) FROM envelopes").fetchone()[0])
        bad = con.execute(
            "SELECT envelope_id, envelope_sha256, sha256(envelope_text) FROM envelopes "
            "WHERE sha256(envelope_text) IS DISTINCT FROM envelope_sha256 ORDER BY envelope_id"
        ).fetchall()
    except duckdb.Error as exc:
        raise ArchiveError(f"reading the archive: {exc}") from exc
    ledger = None
    for envelope_id, stored, actual in bad:
        if ledger is None:
            with storage_errors("reading the erasure log"), read_only(engine) as conn:
                ledger = ErasureLedger.load(conn, ("done", "spooled", "archived"))
        if ledger.accounts_for(envelope_id, stored, actual):
            continue
        report.findings.append(
            ArchiveFinding(
                "modified",
                envelope_id,
                f"archived text has SHA-256 {actual}, its archived digest is {stored}",
            )
        )


def _check_pruned(
    engine: Engine, con: Any, runs: list[tuple[int, str]], report: ArchiveVerifyReport
) -> None:
    """Merge, in envelope-id byte order, the archive with what archiving runs removed."""
    # DuckDB, PostgreSQL's "C" collation, SQLite and Python all order by code point.
    archived = _archived_digests(con)
    current = next(archived, None)
    previous: tuple[str, set[str]] = ("", set())
    unpruned: list[str] = []
    for envelope_id, logged, sealed in _pruned_digests(engine, runs):
        report.pruned += 1
        while current is not None and current[0] < envelope_id:
            unpruned.append(current[0])
            current = next(archived, None)
        # An id pruned twice (recorded again after its first removal) meets
        # the same archived rows again.
        digests: set[str] = set(previous[1]) if previous[0] == envelope_id else set()
        while current is not None and current[0] == envelope_id:
            digests.add(current[1])
            current = next(archived, None)
        previous = (envelope_id, digests)
        if not digests:
            report.findings.append(
                ArchiveFinding(
                    "missing", envelope_id, "removed by an archiving prune run, not in the archive"
                )
            )
            continue
        expected = sealed or logged
        if digests != {expected} or logged != expected:
            report.findings.append(
                ArchiveFinding(
                    "modified",
                    envelope_id,
                    f"archived with SHA-256 {', '.join(sorted(digests))}; "
                    f"{'sealed' if sealed else 'logged when pruned'} as {expected}",
                )
            )
    while current is not None:
        unpruned.append(current[0])
        current = next(archived, None)
    _check_unpruned(engine, unpruned, report)


def _check_unpruned(engine: Engine, ids: list[str], report: ArchiveVerifyReport) -> None:
    """An archived envelope no archiving run removed must still be live (or pruned later).

    Only a hold placed while its batch was being archived leaves one legitimately
    (few rows); anything else was planted, whatever the manifest now says.
    """
    report.still_live += len(ids)
    known: set[str] = set()
    with storage_errors("reading envelopes the archive holds"), read_only(engine) as conn:
        for start in range(0, len(ids), _FETCH):
            chunk = sorted(set(ids[start : start + _FETCH]))
            for table in (envelopes, pruned_envelopes):
                known.update(
                    conn.execute(
                        sa.select(table.c.envelope_id).where(table.c.envelope_id.in_(chunk))
                    ).scalars()
                )
    for envelope_id in dict.fromkeys(ids):
        if envelope_id not in known:
            report.still_live -= 1
            report.findings.append(
                ArchiveFinding(
                    "unaccounted",
                    envelope_id,
                    "in the archive, but no prune logged its removal and the database "
                    "does not hold it",
                )
            )


def _archived_digests(con: Any) -> Iterator[tuple[str, str]]:
    result = con.execute("SELECT envelope_id, envelope_sha256 FROM envelopes ORDER BY envelope_id")
    while batch := result.fetchmany(_FETCH):
        yield from batch


def _pruned_digests(
    engine: Engine, runs: list[tuple[int, str]]
) -> Iterator[tuple[str, str, str | None]]:
    if not runs:
        return
    p = pruned_envelopes.c
    sealed = (
        sa.select(sa.func.min(sealed_envelopes.c.envelope_sha256))
        .where(sealed_envelopes.c.envelope_id == p.envelope_id)
        .scalar_subquery()
    )
    key = p.envelope_id if is_sqlite(engine) else p.envelope_id.collate("C")
    stmt = (
        sa.select(p.envelope_id, p.envelope_sha256, sealed)
        .where(sa.tuple_(p.prune_run_id, p.policy_name).in_(runs))
        .order_by(key)
    )
    with storage_errors("reading the prune log"), read_only(engine) as conn:
        result = conn.execution_options(yield_per=_FETCH).execute(stmt)
        for row in result:
            yield row[0], row[1], row[2]
