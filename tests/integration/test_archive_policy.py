"""A policy's own archive directory (``retention set --archive``), on PostgreSQL and SQLite.

Scheduled prunes archive what such a policy expires with no option; the
command line and RECORDER_ARCHIVE_DIR take precedence; nothing deletes its
envelopes unarchived, not even the database-side functions (pg_cron).
"""

from __future__ import annotations

import datetime as dt
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recorder import db, retention, seal, verify
from recorder.archive import ArchiveOptions, open_archive
from recorder.archive.verify import verify_archive
from recorder.engine import create_engine
from recorder.prune import ArchiveRequired
from recorder.schema import pruned_envelopes
from tests.integration.archive_fixtures import START, archived_rows, fill, live_rows
from tests.integration.conftest import ConnectAs
from tests.integration.test_docs_sql import sql_blocks

UTC = dt.timezone.utc
HOLD_UNTIL = dt.datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def channel_of(text: str) -> str:
    return text.split('"channel":"')[1].split('"')[0]


def pruned_by_policy(engine: Engine) -> dict[str, set[str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(pruned_envelopes.c.policy_name, pruned_envelopes.c.envelope_id)
        ).all()
    out: dict[str, set[str]] = {}
    for policy, envelope_id in rows:
        out.setdefault(policy, set()).add(envelope_id)
    return out


def three_policies(engine: Engine, directory: Path) -> None:
    """C1 and C2 archived (the default policy's directory); C3 pruned unarchived."""
    retention.set_policy(engine, "default", keep="30d", archive_dir=directory)
    retention.set_policy(engine, "c3", keep="30d", channel_id="C3", priority=5)
    retention.add_hold(engine, "case-1", reason="notice", channel_id="C2", until=HOLD_UNTIL)


def test_a_policy_archive_dir_archives_by_default_and_verifies_clean(
    engine: Engine, tmp_path: Path
) -> None:
    fill(engine, 60)
    before = live_rows(engine)
    seal.seal(engine, margin=dt.timedelta(0))
    directory = tmp_path / "policy-archive"
    three_policies(engine, directory)
    (policy, *_) = [p for p in retention.list_policies(engine) if p.name == "default"]
    assert policy.archive_dir == str(directory)

    report = retention.prune(engine, batch_size=7)  # no archive option: the policy's own

    assert report.status == "completed", report.error
    channels = {i: channel_of(text) for i, (_, _, text) in before.items()}
    held = {i for i, (at, _, _) in before.items() if channels[i] == "C2" and at < HOLD_UNTIL}
    plain = {i for i in before if channels[i] == "C3"}
    archived_ids = [r["envelope_id"] for r in archived_rows(directory)]
    assert held, "the hold covers some envelopes"
    # Legal holds still keep envelopes live: never archived and deleted while held.
    assert set(live_rows(engine)) == held
    assert len(archived_ids) == len(set(archived_ids))
    assert set(archived_ids) == set(before) - held - plain
    assert pruned_by_policy(engine) == {"default": set(archived_ids), "c3": plain}
    assert report.archive is not None
    assert report.archive.archived == len(archived_ids)
    for row in archived_rows(directory):
        assert row["envelope_text"] == before[row["envelope_id"]][2]

    # The archive accounts for exactly what the policy archived, nothing of c3's.
    checked = verify_archive(engine, directory)
    assert checked.ok, [f.line() for f in checked.findings]
    assert checked.pruned == len(archived_ids)
    assert checked.envelopes == len(archived_ids)
    sealed = verify.verify(engine)
    assert sealed.ok, sealed.findings


def test_the_command_line_archive_takes_precedence_over_the_policy(
    engine: Engine, tmp_path: Path
) -> None:
    fill(engine, 12)
    retention.set_policy(engine, "default", keep="30d", archive_dir=tmp_path / "policy")
    elsewhere = tmp_path / "elsewhere"
    report = retention.prune(engine, archive=ArchiveOptions(elsewhere, file_rows=5))
    assert report.status == "completed", report.error
    assert not (tmp_path / "policy").exists(), "nothing went to the policy's directory"
    assert len(archived_rows(elsewhere)) == 12
    assert live_rows(engine) == {}
    assert verify_archive(engine, elsewhere).ok


def test_file_options_without_a_directory_apply_to_the_policy_archive(
    engine: Engine, tmp_path: Path
) -> None:
    fill(engine, 9)
    directory = tmp_path / "a"
    retention.set_policy(engine, "default", keep="30d", archive_dir=directory)
    retention.prune(engine, archive=ArchiveOptions(None, file_rows=4, partition="day"))
    rows = archived_rows(directory)
    assert len(rows) == 9
    assert all(r["_file"].startswith("day=") for r in rows)
    assert max(sum(1 for r in rows if r["_file"] == f) for f in {r["_file"] for r in rows}) <= 4


def test_a_policy_that_cannot_archive_deletes_nothing(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(engine, 12)
    before = set(live_rows(engine))
    three_policies(engine, tmp_path / "a")
    # As if the archive extra were not installed: importing pyarrow fails.
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)

    with pytest.raises(ArchiveRequired, match="retention policy default requires archiving"):
        retention.prune(engine)

    # Nothing at all went, not even the unarchived policy's envelopes.
    assert set(live_rows(engine)) == before
    assert pruned_by_policy(engine) == {}
    (run,) = retention.read_prune_log(engine)
    assert run.status == "failed"
    assert run.error is not None
    assert "pip install 'envelope-recorder[archive]'" in run.error
    # A dry run needs no archive: it only counts.
    monkeypatch.undo()
    dry = retention.prune(engine, dry_run=True)
    assert dry.deleted["default"] > 0


def test_a_stored_relative_directory_is_refused_not_guessed(engine: Engine, tmp_path: Path) -> None:
    fill(engine, 3)
    with pytest.raises(retention.RetentionError, match="must be an absolute path"):
        retention.set_policy(engine, "default", keep="30d", archive_dir="relative/dir")
    retention.set_policy(engine, "default", keep="30d", archive_dir=tmp_path / "a")
    # Written by other means (SQL): the prune refuses rather than archive somewhere.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE retention_policies SET archive_dir = 'relative/dir'"))
    with pytest.raises(ArchiveRequired, match="must be an absolute path"):
        retention.prune(engine)
    assert len(live_rows(engine)) == 3


def test_the_policy_archive_is_shown_and_logged(engine: Engine, tmp_path: Path) -> None:
    retention.set_policy(engine, "default", keep="30d", archive_dir=tmp_path / "a")
    retention.set_policy(engine, "default", keep="30d")
    (policy,) = retention.list_policies(engine)
    assert policy.archive_dir is None
    create, update = retention.read_change_log(engine)
    assert create.details is not None
    assert update.details is not None
    assert create.details["after"]["archive_dir"] == str(tmp_path / "a")
    assert "archive_dir" not in update.details["after"]
    assert update.details["before"]["archive_dir"] == str(tmp_path / "a")


@pytest.mark.postgres
def test_the_database_side_prune_never_deletes_policy_archived_rows(
    pg_url: str, owner: Engine, roles: dict[str, str], connect_as: ConnectAs, tmp_path: Path
) -> None:
    fill(owner, 30)
    before = live_rows(owner)
    channels = {i: channel_of(text) for i, (_, _, text) in before.items()}
    directory = tmp_path / "a"
    retention.set_policy(owner, "default", keep="30d", archive_dir=directory)
    retention.set_policy(owner, "c3", keep="30d", channel_id="C3", priority=5)
    plain = {i for i in before if channels[i] == "C3"}
    pruner = connect_as(roles["pruner"])

    # The pg_cron procedure of docs/retention.md, as the pruner: c3 only.
    (procedure,) = [b for b in sql_blocks("retention.md") if "CREATE OR REPLACE PROCEDURE" in b]
    with owner.begin() as conn:
        conn.execute(sa.text(procedure))
    with pruner.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("CALL recorder_prune(4)"))
    assert set(live_rows(owner)) == set(before) - plain
    assert pruned_by_policy(owner) == {"c3": plain}

    # Every function a caller could use to delete refuses the archived policy.
    with pruner.begin() as conn:
        run = conn.execute(
            sa.text("SELECT run_id FROM recorder_prune_begin(false, 'mallory', 'h')")
        ).scalar_one()
    victims = sorted(set(before) - plain)
    calls = {
        "SELECT * FROM recorder_prune_batch(:run, 'default', NULL, NULL, 100)": (
            "requires archiving"
        ),
        "SELECT * FROM recorder_prune_delete(:run, 'default', :ids)": "requires archiving",
        # Naming a file the manifest does not have as written.
        "SELECT * FROM recorder_prune_delete_archived(:run, 'default', 'x', 'f.parquet', :ids)": (
            "not in the manifest as written"
        ),
    }
    for statement, message in calls.items():
        with pytest.raises(sa.exc.DBAPIError) as info, pruner.begin() as conn:
            conn.execute(sa.text(statement), {"run": run, "ids": victims})
        assert isinstance(info.value.orig, psycopg.errors.ObjectNotInPrerequisiteState)
        assert message in str(info.value.orig)
    # A run's policy snapshot decides: removing the archive setting after the
    # run began does not open that run up.
    retention.set_policy(owner, "default", keep="30d")
    with pytest.raises(sa.exc.DBAPIError, match="requires archiving"), pruner.begin() as conn:
        conn.execute(
            sa.text("SELECT * FROM recorder_prune_batch(:run, 'default', NULL, NULL, 100)"),
            {"run": run},
        )
    assert set(live_rows(owner)) == set(before) - plain
    with pruner.begin() as conn:
        conn.execute(
            sa.text("SELECT recorder_prune_finish(:run, 'completed', 0, 0, NULL)"), {"run": run}
        )

    # recorder prune, as the same role, archives them and then deletes them.
    retention.set_policy(owner, "default", keep="30d", archive_dir=directory)
    report = retention.prune(pruner, batch_size=6)
    assert report.status == "completed", report.error
    assert live_rows(owner) == {}
    assert {r["envelope_id"] for r in archived_rows(directory)} == set(before) - plain
    checked = verify_archive(owner, directory)
    assert checked.ok, [f.line() for f in checked.findings]
    assert checked.pruned == len(before) - len(plain)


def test_a_scheduled_prune_with_two_policy_archives_keeps_them_apart(
    engine: Engine, tmp_path: Path
) -> None:
    fill(engine, 24)
    before = live_rows(engine)
    channels = {i: channel_of(text) for i, (_, _, text) in before.items()}
    retention.set_policy(engine, "default", keep="30d", archive_dir=tmp_path / "a")
    retention.set_policy(
        engine, "c1", keep="30d", channel_id="C1", priority=5, archive_dir=tmp_path / "b"
    )
    report = retention.prune(engine, now=START + dt.timedelta(days=400))
    assert report.status == "completed", report.error
    in_a = {r["envelope_id"] for r in archived_rows(tmp_path / "a")}
    in_b = {r["envelope_id"] for r in archived_rows(tmp_path / "b")}
    assert in_b == {i for i in before if channels[i] == "C1"}
    assert in_a == set(before) - in_b
    for directory in (tmp_path / "a", tmp_path / "b"):
        checked = verify_archive(engine, directory)
        assert checked.ok, [f.line() for f in checked.findings]


@pytest.mark.postgres
def test_upgrading_to_0008_carries_the_pruners_grant_to_the_new_function(
    pg_empty_url: str,
) -> None:
    """A pruner granted before 0008 can still prune --archive after the upgrade."""
    suffix = uuid.uuid4().hex[:8]
    pruner, other = f"rec_old_pruner_{suffix}", f"rec_other_{suffix}"
    engine = create_engine(pg_empty_url)
    try:
        db.upgrade(engine, "0007")
        with engine.begin() as conn:
            for role in (pruner, other):
                conn.execute(sa.text(f'CREATE ROLE "{role}"'))
            # What `recorder db grant --pruner` gave at 0007.
            conn.execute(
                sa.text(
                    "GRANT EXECUTE ON FUNCTION recorder_prune_delete(integer, text, text[]) "
                    f'TO "{pruner}"'
                )
            )
        db.upgrade(engine)
        signature = "recorder_prune_delete_archived(integer, text, text, text, text[])"
        with engine.connect() as conn:
            allowed = {
                role: conn.execute(
                    sa.text("SELECT has_function_privilege(:role, :f, 'EXECUTE')"),
                    {"role": role, "f": signature},
                ).scalar_one()
                for role in (pruner, other)
            }
        assert allowed == {pruner: True, other: False}
    finally:
        with engine.begin() as conn:
            for role in (pruner, other):
                conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
                conn.execute(sa.text(f'DROP ROLE "{role}"'))
        engine.dispose()


@pytest.mark.postgres
def test_a_forged_manifest_row_gets_past_the_database_but_not_verify(
    owner: Engine, roles: dict[str, str], connect_as: ConnectAs, tmp_path: Path
) -> None:
    """What docs/retention.md says the requirement does not stop, and what still catches it."""
    fill(owner, 8)
    directory = tmp_path / "a"
    retention.set_policy(owner, "default", keep="30d", archive_dir=directory)
    pruner = connect_as(roles["pruner"])
    victims = sorted(live_rows(owner))
    retention.prune(pruner, now=START + dt.timedelta(days=31))  # archives the first few
    survivors = sorted(live_rows(owner))
    assert 0 < len(survivors) < len(victims)
    archive_id = open_archive(directory).archive_id
    with pruner.begin() as conn:
        run = conn.execute(
            sa.text("SELECT run_id FROM recorder_prune_begin(false, 'mallory', 'h')")
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO archive_files (archive_id, file_name, state, policy_name,"
                " prune_run_id, deleted_by_run_id, created_at, written_at, row_count,"
                " file_sha256)"
                " VALUES (:a, 'month=2025-02/forged.parquet', 'written', 'default', :run, :run,"
                " now(), now(), 3, 'x')"
            ),
            {"a": archive_id, "run": run},
        )
    with pruner.begin() as conn:
        gone = conn.execute(
            sa.text(
                "SELECT * FROM recorder_prune_delete_archived("
                ":run, 'default', :a, 'month=2025-02/forged.parquet', :ids)"
            ),
            {"run": run, "a": archive_id, "ids": survivors},
        ).all()
    assert {row.envelope_id for row in gone} == set(survivors)
    assert pruned_by_policy(owner)["default"] == set(victims)
    checked = verify_archive(owner, directory)
    assert checked.of_kind("missing-file") == {"month=2025-02/forged.parquet"}
    assert checked.of_kind("missing") == set(survivors)


@pytest.mark.postgres
def test_archiving_required_after_a_run_began_stops_its_database_side_deletes(
    pg_url: str, owner: Engine, roles: dict[str, str], connect_as: ConnectAs, tmp_path: Path
) -> None:
    fill(owner, 12)
    before = set(live_rows(owner))
    retention.set_policy(owner, "default", keep="30d")
    pruner = connect_as(roles["pruner"])
    # A scheduled (pg_cron) run begins while the policy needs no archive ...
    with pruner.begin() as conn:
        run = conn.execute(
            sa.text("SELECT run_id FROM recorder_prune_begin(false, 'cron', 'h')")
        ).scalar_one()
    with pruner.begin() as conn:
        conn.execute(
            sa.text("SELECT * FROM recorder_prune_batch(:run, 'default', NULL, NULL, 4)"),
            {"run": run},
        )
    assert len(live_rows(owner)) == len(before) - 4
    # ... then the policy is made to require archiving: from then on none of
    # its envelopes goes unarchived, not even in the run that started before.
    retention.set_policy(owner, "default", keep="30d", archive_dir=tmp_path / "a")
    for statement in (
        "SELECT * FROM recorder_prune_batch(:run, 'default', NULL, NULL, 100)",
        "SELECT * FROM recorder_prune_delete(:run, 'default', :ids)",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="requires archiving"), pruner.begin() as conn:
            conn.execute(sa.text(statement), {"run": run, "ids": sorted(before)})
    assert len(live_rows(owner)) == len(before) - 4


def test_archiving_required_during_a_library_run_stops_its_plain_deletes(
    engine: Engine, tmp_path: Path
) -> None:
    fill(engine, 12)
    before = set(live_rows(engine))
    retention.set_policy(engine, "default", keep="30d")
    changed: list[int] = []

    def require_archive(progress: retention.PruneProgress) -> None:
        # Between two batches of the run, someone sets the policy's archive.
        if not changed:
            retention.set_policy(engine, "default", keep="30d", archive_dir=tmp_path / "a")
            changed.append(progress.deleted)

    with pytest.raises(ArchiveRequired, match="requires archiving"):
        retention.prune(engine, batch_size=4, on_progress=require_archive)
    assert changed == [4]
    assert len(live_rows(engine)) == len(before) - 4
    (run,) = retention.read_prune_log(engine)
    assert run.status == "failed"
    # The next run archives the rest before deleting it.
    report = retention.prune(engine)
    assert report.status == "completed", report.error
    assert live_rows(engine) == {}
    assert len(archived_rows(tmp_path / "a")) == len(before) - 4


class _Interrupted(Exception):
    pass


def test_two_spellings_of_one_policy_archive_directory_are_one_archive(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(engine, 24)
    before = set(live_rows(engine))
    (tmp_path / "sub").mkdir()
    retention.set_policy(engine, "default", keep="30d", archive_dir=tmp_path / "a")
    retention.set_policy(
        engine, "c1", keep="30d", channel_id="C1", priority=5, archive_dir=f"{tmp_path}/sub/../a"
    )

    def interrupt(name: str) -> None:
        if name == "archive.file-written":
            raise _Interrupted  # a crash with a written file not yet deleted from

    monkeypatch.setattr("recorder.archive.archiver.failpoints.reach", interrupt)
    with pytest.raises(_Interrupted):
        retention.prune(engine, batch_size=4)
    monkeypatch.undo()
    # The next run finishes that file through the archive both policies share.
    report = retention.prune(engine, batch_size=4)
    assert report.status == "completed", report.error
    assert live_rows(engine) == {}
    assert {r["envelope_id"] for r in archived_rows(tmp_path / "a")} == before
    checked = verify_archive(engine, tmp_path / "a")
    assert checked.ok, [f.line() for f in checked.findings]
