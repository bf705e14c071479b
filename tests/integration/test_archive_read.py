"""Reading the archive: DuckDB queries and exports, and ``verify --archive``, on both engines."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy.engine import Engine

from recorder import audit, importer, retention, seal
from recorder.adapters.sql import SQLEventBuffer
from recorder.archive import ArchiveError, ArchiveOptions, open_archive
from recorder.archive.reader import connect, query_archive, run_sql
from recorder.archive.verify import verify_archive
from recorder.engine import create_engine
from tests.integration.archive_fixtures import fill

UTC = dt.timezone.utc
FEB = dt.datetime(2025, 2, 1, tzinfo=UTC)
MAR = dt.datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def archived(engine: Engine, tmp_path: Path) -> tuple[Path, list[audit.AuditRow]]:
    """60 envelopes sealed, then pruned into an archive; what they were before."""
    fill(engine, 60)
    before = list(audit.query_envelopes(engine, audit.QuerySpec()))
    seal.seal(engine, margin=dt.timedelta(0))
    retention.set_policy(engine, "default", keep="30d")
    directory = tmp_path / "archive"
    retention.prune(engine, batch_size=7, archive=ArchiveOptions(directory, file_rows=15))
    assert list(audit.query_envelopes(engine, audit.QuerySpec())) == []
    return directory, before


def test_archive_queries_give_what_the_live_query_gave(
    archived: tuple[Path, list[audit.AuditRow]],
) -> None:
    directory, before = archived
    archive = open_archive(directory)
    assert list(query_archive(archive, audit.QuerySpec())) == before
    spec = audit.QuerySpec(channel_id="C2", since=FEB, until=MAR)
    expected = [r for r in before if r.channel_id == "C2" and FEB <= r.received_at < MAR]
    assert expected
    assert list(query_archive(archive, spec)) == expected
    limited = audit.QuerySpec(user_id="U1", limit=5)
    assert list(query_archive(archive, limited)) == before[:5]


def test_exported_jsonl_reimports_the_exact_texts(
    archived: tuple[Path, list[audit.AuditRow]], tmp_path: Path
) -> None:
    directory, before = archived
    out = io.BytesIO()
    count = audit.export(query_archive(open_archive(directory), audit.QuerySpec()), "jsonl", out)
    assert count == len(before)
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    with SQLEventBuffer(fresh, upgrade=True) as buffer:
        report = importer.import_envelopes(buffer, io.BytesIO(out.getvalue()))
    assert report.new == len(before)
    target = create_engine(fresh)
    try:
        again = list(audit.query_envelopes(target, audit.QuerySpec()))
    finally:
        target.dispose()
    key = {r.envelope_id: (r.envelope_text, r.envelope_sha256) for r in before}
    assert {r.envelope_id: (r.envelope_text, r.envelope_sha256) for r in again} == key


def test_exported_archive_records_reimport_exactly_on_either_engine(
    archived: tuple[Path, list[audit.AuditRow]], tmp_path: Path, pg_url: str
) -> None:
    """`archive export --format archive` keeps received_at and digests through `recorder import`."""
    directory, before = archived
    out = io.BytesIO()
    audit.export(query_archive(open_archive(directory), audit.QuerySpec()), "archive", out)
    for target_url in (f"sqlite:///{tmp_path / 'fresh.db'}", pg_url):
        with SQLEventBuffer(target_url, upgrade=True) as buffer:
            report = importer.import_envelopes(buffer, io.BytesIO(out.getvalue()))
        assert (report.new, report.rejected) == (len(before), 0)
        target = create_engine(target_url)
        try:
            again = list(audit.query_envelopes(target, audit.QuerySpec()))
        finally:
            target.dispose()
        assert [dataclasses.replace(r, status="done") for r in before] == again


def test_sql_over_the_archive_is_read_only_and_confined_to_it(
    archived: tuple[Path, list[audit.AuditRow]], tmp_path: Path
) -> None:
    directory, _ = archived
    con = connect(open_archive(directory))
    try:
        columns, rows = run_sql(
            con, "SELECT channel_id, count(*) AS n FROM envelopes GROUP BY 1 ORDER BY 1"
        )
        assert columns == ["channel_id", "n"]
        assert list(rows) == [("C1", 20), ("C2", 20), ("C3", 20)]
        victim = open_archive(directory).parquet_files()[0]
        for attack, message in [
            (f"COPY (SELECT 1) TO '{directory / victim}' (FORMAT csv)", "not COPY"),
            ("SELECT 1; SELECT 2", "one statement, not 2"),
            ("SELECT * FROM read_csv('/etc/passwd')", "Permission"),
            (f"SELECT * FROM read_text('{tmp_path}/*')", "Permission"),
            ("SET enable_external_access = true", "not SET"),
        ]:
            with pytest.raises(ArchiveError, match=message):
                run_sql(con, attack)
    finally:
        con.close()
    # The COPY never ran: every file still reads as written.
    archive = open_archive(directory)
    assert all(pq.read_metadata(archive.file_path(n)).num_rows for n in archive.parquet_files())


def test_an_empty_archive_answers_with_no_rows(tmp_path: Path) -> None:
    archive = open_archive(tmp_path / "new", create=True)
    assert list(query_archive(archive, audit.QuerySpec())) == []
    con = connect(archive)
    try:
        _, rows = run_sql(con, "SELECT count(*) FROM envelopes")
        assert list(rows) == [(0,)]
    finally:
        con.close()


def test_verify_passes_on_an_intact_archive(
    engine: Engine, archived: tuple[Path, list[audit.AuditRow]]
) -> None:
    directory, before = archived
    report = verify_archive(engine, directory)
    assert report.ok, [f.line() for f in report.findings]
    assert (report.files, report.envelopes, report.pruned) == (
        len(open_archive(directory).parquet_files()),
        len(before),
        len(before),
    )


def _rewrite(path: Path, change: dict[str, str], *, digest: bool) -> str:
    """Edit one envelope's text inside a file (and, with ``digest``, its digest too)."""
    table = pq.read_table(path)
    rows = table.to_pylist()
    victim = rows[1]
    victim["envelope_text"] = victim["envelope_text"].replace("m", change["to"], 1)
    if digest:
        victim["envelope_sha256"] = seal.text_sha256(victim["envelope_text"])
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path, compression="zstd")
    return str(victim["envelope_id"])


def test_verify_names_deleted_truncated_edited_and_planted_files(
    engine: Engine, archived: tuple[Path, list[audit.AuditRow]]
) -> None:
    directory, _ = archived
    archive = open_archive(directory)
    names = archive.parquet_files()
    assert len(names) >= 5
    deleted, truncated, edited, forged, _ = names[:5]
    gone = {
        envelope_id
        for name in (deleted, truncated)
        for envelope_id in pq.read_table(archive.file_path(name)).column("envelope_id").to_pylist()
    }
    archive.file_path(deleted).unlink()
    data = archive.file_path(truncated).read_bytes()
    archive.file_path(truncated).write_bytes(data[: len(data) // 2])
    edited_id = _rewrite(archive.file_path(edited), {"to": "M"}, digest=False)
    forged_id = _rewrite(archive.file_path(forged), {"to": "X"}, digest=True)
    planted = directory / "month=2025-01" / "r999999-00001-abcdef.parquet"
    shutil.copy(archive.file_path(names[-1]), planted)

    report = verify_archive(engine, directory)
    lines = [f.line() for f in report.findings]
    assert report.of_kind("missing-file") == {deleted}
    assert report.of_kind("altered-file") == {truncated, edited, forged}
    assert any(line.startswith(f"ALTERED FILE {truncated}: truncated") for line in lines)
    assert report.of_kind("unknown-file") == {planted.relative_to(directory).as_posix()}
    # The edited text no longer matches its digest; the forged one matches a
    # digest that is not the one sealed and logged when it was pruned.
    assert {edited_id, forged_id} <= report.of_kind("modified")
    # The deleted file's envelopes are missing, and so are the truncated one's (unreadable).
    assert report.of_kind("missing") == gone
    assert not report.ok


def test_verify_refuses_a_directory_that_is_not_an_archive(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="no archive at"):
        verify_archive(engine, tmp_path)


def test_verify_names_an_envelope_planted_in_a_file_whose_manifest_row_was_redigested(
    engine: Engine, archived: tuple[Path, list[audit.AuditRow]]
) -> None:
    """Attack: someone who can write the archive and the manifest (the pruner keeps writes on
    ``archive_files`` for ``prune --archive``) adds a self-consistent envelope to a file and
    puts the file's new size and digest in the manifest; re-import would bring it to life."""
    import sqlalchemy as sa

    from recorder.archive.files import file_sha256
    from recorder.schema import archive_files

    directory, _ = archived
    archive = open_archive(directory)
    name = archive.parquet_files()[0]
    path = archive.file_path(name)
    table = pq.read_table(path)
    rows = table.to_pylist()
    text = '{"envelope_id":"Ev-PLANTED","payload":{"event":{"text":"never sent"}}}'
    planted = dict(rows[0], envelope_id="Ev-PLANTED", envelope_text=text)
    planted["envelope_sha256"] = seal.text_sha256(text)
    pq.write_table(pa.Table.from_pylist([*rows, planted], schema=table.schema), path)
    size, digest = file_sha256(path)
    with engine.begin() as conn:
        conn.execute(
            sa.update(archive_files)
            .where(archive_files.c.file_name == name)
            .values(file_bytes=size, file_sha256=digest, row_count=len(rows) + 1)
        )

    report = verify_archive(engine, directory)
    assert report.of_kind("unaccounted") == {"Ev-PLANTED"}, [f.line() for f in report.findings]
    assert not report.ok


class _Interrupted(Exception):
    pass


def test_verify_checks_what_an_interrupted_run_deleted_from_a_file_the_next_finished(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(engine, 20)
    retention.set_policy(engine, "default", keep="30d")
    directory = tmp_path / "archive"

    def fail_after_the_first_batch(name: str) -> None:
        if name == "archive.batch-deleted":
            raise _Interrupted  # a crash with part of the file's envelopes deleted

    monkeypatch.setattr("recorder.archive.archiver.failpoints.reach", fail_after_the_first_batch)
    with pytest.raises(_Interrupted):
        retention.prune(engine, batch_size=4, archive=ArchiveOptions(directory, file_rows=10))
    monkeypatch.undo()
    rerun = retention.prune(engine, batch_size=4, archive=ArchiveOptions(directory, file_rows=10))
    assert rerun.status == "completed", rerun.error
    assert rerun.archive is not None
    assert len(rerun.archive.recovered) == 1
    runs = retention.read_prune_log(engine)
    assert [r.deleted_total for r in runs] == [4, 16]

    report = verify_archive(engine, directory)
    assert report.ok, [f.line() for f in report.findings]
    # All 20 removals, the interrupted run's 4 included, are checked against the
    # archive; none is taken for an archived envelope still live.
    assert (report.pruned, report.envelopes, report.still_live) == (20, 20, 0)

    # And a removal of that run missing from the archive is named.
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO pruned_envelopes (prune_run_id, envelope_id, envelope_sha256, received_at,"
            " policy_name, pruned_at) SELECT prune_run_id, 'never-archived', envelope_sha256,"
            " received_at, policy_name, pruned_at FROM pruned_envelopes"
            f" WHERE prune_run_id = {runs[0].id} LIMIT 1"
        )
    assert verify_archive(engine, directory).of_kind("missing") == {"never-archived"}
