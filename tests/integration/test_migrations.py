"""Migrations and schema.py agree, on PostgreSQL and SQLite, at every revision.

Revisions are read from the migration scripts, so a new migration is covered
by these tests the moment it is added: each one upgrades, downgrades one step
and upgrades again, and at head Alembic's ``compare_metadata`` finds no
difference from :data:`recorder.schema.metadata`.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from recorder import RecordResult, db
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.schema import metadata

REPO = Path(__file__).resolve().parents[2]
# Base first, head last; (revision, the revision it revises).
STEPS: list[tuple[str, str]] = [
    (script.revision, str(script.down_revision or "base"))
    for script in reversed(list(ScriptDirectory.from_config(db.alembic_config()).walk_revisions()))
]
HEAD = STEPS[-1][0]
RECORDER_TABLES = set(metadata.tables)
# Left behind on purpose by Alembic at base (empty): not a recorder table.
ALEMBIC_VERSION = "alembic_version"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with no schema at all, once per engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    url: str = request.getfixturevalue("pg_empty_url")
    return url


@pytest.fixture
def engine(empty_url: str) -> Iterator[Engine]:
    engine = create_engine(empty_url)
    yield engine
    engine.dispose()


def schema_differences(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": False}
        )
        return list(compare_metadata(context, metadata))


def tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


# Revisions that only replace PostgreSQL functions or their settings: nothing changes on SQLite.
FUNCTIONS_ONLY = {"0009", "0012"}
# Revisions that only drop a foreign key (0010: sealed_envelopes -> seal_blocks).
FOREIGN_KEYS_ONLY = {"0010"}
# Revisions that only set PostgreSQL storage parameters (0011: envelopes stored inline).
STORAGE_ONLY = {"0011"}


def columns(engine: Engine) -> set[tuple[str, str]]:
    """(table, column) of every column: what a migration adds, a table or a column."""
    inspector = sa.inspect(engine)
    return {
        (table, column["name"])
        for table in inspector.get_table_names()
        for column in inspector.get_columns(table)
    }


def foreign_keys(engine: Engine) -> set[tuple[str, str]]:
    """(table, referred table) of every foreign key: what FOREIGN_KEYS_ONLY revisions change."""
    inspector = sa.inspect(engine)
    return {
        (table, key["referred_table"])
        for table in inspector.get_table_names()
        for key in inspector.get_foreign_keys(table)
    }


def storage(engine: Engine) -> set[tuple[str, str]]:
    """(table, storage parameter) of every table (PostgreSQL): what STORAGE_ONLY revisions set."""
    if engine.dialect.name != "postgresql":
        return set()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT relname, unnest(reloptions) FROM pg_class "
                "WHERE relkind = 'r' AND relnamespace = current_schema()::regnamespace"
            )
        ).all()
    return {(table, option) for table, option in rows}


def functions(engine: Engine) -> set[str]:
    """The definition of each recorder function (PostgreSQL): what FUNCTIONS_ONLY revisions change."""
    if engine.dialect.name != "postgresql":
        return set()
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.text(
                    "SELECT pg_get_functiondef(p.oid) FROM pg_proc p WHERE p.proname LIKE "
                    "'recorder%' AND p.pronamespace = current_schema()::regnamespace"
                )
            ).scalars()
        )


def test_revisions_form_one_line_from_base_to_head() -> None:
    assert STEPS[0][1] == "base"
    for (_, down), (previous, _) in zip(STEPS[1:], STEPS, strict=False):
        assert down == previous
    assert db.head_revision() == HEAD


def test_upgrade_to_head_matches_schema_py(empty_url: str, engine: Engine) -> None:
    assert db.current_revision(empty_url) is None
    db.upgrade(empty_url)
    assert db.current_revision(empty_url) == HEAD
    assert schema_differences(engine) == []
    assert tables(engine) == RECORDER_TABLES | {ALEMBIC_VERSION}


def test_the_comparison_notices_a_drifted_schema(empty_url: str, engine: Engine) -> None:
    """Guards the check above against passing vacuously."""
    db.upgrade(empty_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_envelopes_team_id_received_at"))
        conn.execute(sa.text("ALTER TABLE envelopes ADD COLUMN stray_column integer"))
    differences = [str(diff) for diff in schema_differences(engine)]
    assert any("ix_envelopes_team_id_received_at" in diff for diff in differences), differences
    assert any("stray_column" in diff for diff in differences), differences


@pytest.mark.parametrize(("revision", "down_revision"), STEPS, ids=[rev for rev, _ in STEPS])
def test_each_revision_upgrades_downgrades_and_upgrades_again(
    empty_url: str, engine: Engine, revision: str, down_revision: str
) -> None:
    db.upgrade(empty_url, revision)
    assert db.current_revision(empty_url) == revision
    created = columns(engine)
    defined = functions(engine)
    keys = foreign_keys(engine)
    options = storage(engine)

    db.downgrade(empty_url, down_revision)
    assert db.current_revision(empty_url) == (None if down_revision == "base" else down_revision)
    remaining = columns(engine)
    if revision in FUNCTIONS_ONLY:
        assert remaining == created
        if engine.dialect.name == "postgresql":
            assert functions(engine) != defined, f"{revision} downgrade restored no function"
    elif revision in FOREIGN_KEYS_ONLY:
        assert remaining == created
        assert foreign_keys(engine) > keys, f"{revision} downgrade restored no foreign key"
    elif revision in STORAGE_ONLY:
        assert remaining == created
        if engine.dialect.name == "postgresql":
            assert storage(engine) < options, f"{revision} downgrade reset no storage parameter"
    else:
        assert remaining < created, f"{revision} downgrade removed no table or column"

    db.upgrade(empty_url, revision)
    assert columns(engine) == created
    assert functions(engine) == defined
    assert foreign_keys(engine) == keys
    assert storage(engine) == options
    db.upgrade(empty_url)
    assert schema_differences(engine) == []


def test_downgrade_to_base_leaves_no_recorder_tables_then_upgrade_again(
    empty_url: str, engine: Engine
) -> None:
    db.upgrade(empty_url)
    with SQLEventBuffer(engine) as buffer:
        assert buffer.record("e1", {"envelope_id": "e1", "type": "hello"}) is RecordResult.NEW

    db.downgrade(empty_url, "base")
    assert db.current_revision(empty_url) is None
    assert tables(engine) - {ALEMBIC_VERSION} == set()
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            leftovers = conn.execute(
                sa.text(
                    "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'public' AND relname <> 'alembic_version' "
                    "AND relname NOT LIKE 'alembic_version%'"
                )
            ).scalars()
            assert list(leftovers) == []
            types = conn.execute(
                sa.text(
                    "SELECT typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                    "WHERE n.nspname = 'public' AND t.typtype = 'e'"
                )
            ).scalars()
            assert list(types) == []

    db.upgrade(empty_url)
    assert db.current_revision(empty_url) == HEAD
    assert schema_differences(engine) == []
    with SQLEventBuffer(engine) as buffer:
        # The old row went with the table: the id is new again.
        assert buffer.record("e1", {"envelope_id": "e1", "type": "hello"}) is RecordResult.NEW


def test_upgrade_twice_is_idempotent_and_keeps_data(empty_url: str, engine: Engine) -> None:
    db.upgrade(empty_url)
    with SQLEventBuffer(engine) as buffer:
        assert buffer.record("kept", {"envelope_id": "kept", "type": "hello"}) is RecordResult.NEW
    db.upgrade(empty_url)
    db.upgrade(engine)
    assert db.current_revision(engine) == HEAD
    assert schema_differences(engine) == []
    with SQLEventBuffer(engine) as buffer:
        assert buffer.seen("kept")
        assert buffer.pending() == [{"envelope_id": "kept", "type": "hello"}]


def upgrade_when_released(url: str, start: Any, results: Any) -> None:
    """Worker process: wait for the others, then upgrade; report the error if any."""
    try:
        start.wait(timeout=120)
        db.upgrade(url)
        results.put("ok")
    except BaseException as exc:
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("processes", [2, 4])
def test_concurrent_upgrades_on_postgresql(pg_empty_url: str, processes: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(processes)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=upgrade_when_released, args=(pg_empty_url, start, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=180) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert outcomes == ["ok"] * processes
    assert db.current_revision(pg_empty_url) == HEAD
    engine = create_engine(pg_empty_url)
    try:
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


# -- the wheel ships its migrations


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, check=False, **kwargs)


@pytest.mark.slow
def test_installed_wheel_upgrades_a_database_outside_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(wheels),
            str(REPO),
        ]
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("envelope_recorder-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "recorder/_migrations/env.py" in names
    shipped = {
        Path(name).name for name in names if name.startswith("recorder/_migrations/versions/")
    }
    in_checkout = {path.name for path in (REPO / "migrations" / "versions").glob("*.py")}
    assert in_checkout <= shipped
    assert "recorder/py.typed" in names

    site = tmp_path / "site"
    installed = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--quiet",
            "--target",
            str(site),
            str(wheel),
        ]
    )
    assert installed.returncode == 0, installed.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RECORDER_") and key != "PYTHONPATH"
    }
    env["PYTHONPATH"] = str(site)
    database = elsewhere / "installed.db"
    url = f"sqlite:///{database}"

    where = _run(
        [
            sys.executable,
            "-c",
            "import recorder, recorder.db; print(recorder.__file__); print(recorder.db.migrations_dir())",
        ],
        cwd=elsewhere,
        env=env,
    )
    assert where.returncode == 0, where.stderr
    module_file, migrations = where.stdout.splitlines()
    # The installed copy, not the checkout, is what runs.
    assert Path(module_file).is_relative_to(site)
    assert Path(migrations) == site / "recorder" / "_migrations"

    upgraded = _run(
        [sys.executable, "-m", "recorder", "--database-url", url, "db", "upgrade"],
        cwd=elsewhere,
        env=env,
    )
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert database.is_file()
    assert db.current_revision(url) == HEAD
    engine = create_engine(url)
    try:
        assert schema_differences(engine) == []
    finally:
        engine.dispose()

    again = _run(
        [sys.executable, "-m", "recorder", "--database-url", url, "db", "upgrade"],
        cwd=elsewhere,
        env=env,
    )
    assert again.returncode == 0, again.stdout + again.stderr
