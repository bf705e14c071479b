"""``prune(archive=...)``: archive before delete, on real PostgreSQL and SQLite."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recorder import retention, seal, verify
from recorder.archive import ArchiveError, ArchiveOptions, open_archive
from recorder.archive import manifest as archive_manifest
from recorder.archive.files import read_stats
from recorder.engine import create_engine
from recorder.schema import archive_files, pruned_envelopes
from tests.integration.archive_fixtures import START, archived_rows, fill, live_rows

UTC = dt.timezone.utc


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def test_prune_archives_every_envelope_before_deleting_it(engine: Engine, tmp_path: Path) -> None:
    fill(engine, 120)
    before = live_rows(engine)
    retention.set_policy(engine, "default", keep="30d")
    # C2 before March is under a legal hold: never archived-and-deleted while held.
    retention.add_hold(
        engine,
        "case-1",
        reason="preservation notice",
        channel_id="C2",
        until=dt.datetime(2025, 3, 1, tzinfo=UTC),
    )
    directory = tmp_path / "archive"
    report = retention.prune(engine, batch_size=4, archive=ArchiveOptions(directory, file_rows=10))

    assert report.status == "completed"
    held = {i for i, (at, _, _) in before.items() if at < dt.datetime(2025, 3, 1, tzinfo=UTC)} & {
        i for i in before if _channel(before[i][2]) == "C2"
    }
    assert held, "the hold covers some envelopes"
    assert set(live_rows(engine)) == held
    archived = archived_rows(directory)
    ids = [row["envelope_id"] for row in archived]
    assert len(ids) == len(set(ids)), "no envelope is in two files"
    assert set(ids) == set(before) - held
    assert report.deleted_total == len(ids)
    assert report.archive is not None
    assert report.archive.archived == len(ids)
    for row in archived:
        at, sha, text = before[row["envelope_id"]]
        assert (row["received_at"], row["envelope_sha256"], row["envelope_text"]) == (at, sha, text)
        # Files never span two months, and are where their month says.
        assert row["_file"].startswith(f"month={at:%Y-%m}/")
    assert Counter(r["_file"] for r in archived).most_common(1)[0][1] <= 10

    entries = archive_manifest.entries(engine)
    archive = open_archive(directory)
    assert {e.file_name for e in entries} == set(archive.parquet_files())
    for entry in entries:
        assert entry.state == "complete"
        assert entry.archive_id == archive.archive_id
        stats = read_stats(archive.file_path(entry.file_name))
        assert (entry.file_sha256, entry.row_count, entry.members_sha256) == (
            stats.file_sha256,
            stats.row_count,
            stats.members_sha256,
        )
        assert entry.deleted_count == entry.row_count
        assert entry.deleted_by_run_id == report.run_id
    with engine.connect() as conn:
        logged = set(conn.execute(sa.select(pruned_envelopes.c.envelope_id)).scalars())
    assert logged == set(ids)


def test_seal_verification_still_passes_after_an_archiving_prune(
    engine: Engine, tmp_path: Path
) -> None:
    fill(engine, 30)
    seal.seal(engine, margin=dt.timedelta(0))
    retention.set_policy(engine, "default", keep="30d")
    retention.prune(engine, archive=ArchiveOptions(tmp_path / "a"))
    result = verify.verify(engine)
    assert result.ok, result.findings
    assert result.pruned == 30


def test_day_partitions_and_a_second_run_adds_to_the_same_archive(
    engine: Engine, tmp_path: Path
) -> None:
    fill(engine, 20, step=dt.timedelta(hours=7))
    retention.set_policy(engine, "default", keep="30d")
    directory = tmp_path / "a"
    retention.prune(
        engine,
        archive=ArchiveOptions(directory, partition="day"),
        now=START + dt.timedelta(days=33),
    )
    first = set(open_archive(directory).parquet_files())
    assert all(
        name.startswith("day=2025-01-") or name.startswith("day=2025-02-0") for name in first
    )
    retention.prune(engine, archive=ArchiveOptions(directory, partition="day"))
    rows = archived_rows(directory)
    assert len(rows) == 20 == len({r["envelope_id"] for r in rows})
    for row in rows:
        assert row["_file"].startswith(f"day={row['received_at']:%Y-%m-%d}/")
    assert live_rows(engine) == {}


def test_a_dry_run_archives_nothing(engine: Engine, tmp_path: Path) -> None:
    fill(engine, 5)
    retention.set_policy(engine, "default", keep="30d")
    report = retention.prune(engine, dry_run=True, archive=ArchiveOptions(tmp_path / "a"))
    assert report.deleted_total == 5
    assert len(live_rows(engine)) == 5
    assert not (tmp_path / "a").exists()


def test_a_written_file_whose_bytes_changed_is_not_used_to_delete(
    engine: Engine, tmp_path: Path
) -> None:
    """A file left `written` by a crash and edited since: the rerun refuses to delete from it."""
    fill(engine, 6)
    retention.set_policy(engine, "default", keep="30d")
    directory = tmp_path / "a"
    retention.prune(engine, archive=ArchiveOptions(directory))
    entry = archive_manifest.entries(engine)[0]
    # Put the manifest back to the crash state: written, envelopes not yet deleted.
    with engine.begin() as conn:
        conn.execute(sa.update(archive_files).values(state="written"))
    path = open_archive(directory).file_path(entry.file_name)
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ArchiveError, match="changed since it was written"):
        retention.prune(engine, archive=ArchiveOptions(directory))
    assert retention.read_prune_log(engine)[-1].status == "failed"


def test_unfinished_files_of_another_archive_stop_the_run(engine: Engine, tmp_path: Path) -> None:
    fill(engine, 3)
    retention.set_policy(engine, "default", keep="30d")
    retention.prune(engine, archive=ArchiveOptions(tmp_path / "one"))
    with engine.begin() as conn:
        conn.execute(sa.update(archive_files).values(state="written"))
    with pytest.raises(ArchiveError, match="run `recorder prune --archive` with that archive"):
        retention.prune(engine, archive=ArchiveOptions(tmp_path / "two"))


def test_bad_options_are_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="between 1 and"):
        ArchiveOptions(tmp_path, file_rows=0)
    with pytest.raises(ArchiveError, match="unknown archive partition 'week'"):
        ArchiveOptions(tmp_path, partition="week")
    (tmp_path / "plain").mkdir()
    with pytest.raises(
        ArchiveError, match=r"no archive at .*plain: it has no recorder-archive\.json"
    ):
        open_archive(tmp_path / "plain")


def _channel(text: str) -> str:
    import json

    return str(json.loads(text)["payload"]["event"]["channel"])


def test_files_hold_at_most_file_rows_even_with_bigger_batches(
    engine: Engine, tmp_path: Path
) -> None:
    fill(engine, 30, step=dt.timedelta(hours=1))
    retention.set_policy(engine, "default", keep="30d")
    directory = tmp_path / "archive"
    retention.prune(engine, batch_size=100, archive=ArchiveOptions(directory, file_rows=8))
    sizes = Counter(r["_file"] for r in archived_rows(directory))
    assert sorted(sizes.values()) == [6, 8, 8, 8]


def test_a_run_with_nothing_to_archive_makes_no_directory(engine: Engine, tmp_path: Path) -> None:
    fill(engine, 3)
    retention.set_policy(engine, "default", keep="3650d")
    report = retention.prune(engine, archive=ArchiveOptions(tmp_path / "a"))
    assert report.status == "completed"
    assert not (tmp_path / "a").exists()
