"""SQLite works on first use; PostgreSQL is migrated only by ``recorder db upgrade``."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from recorder import db
from recorder.adapter import RecordResult
from recorder.adapters.sql import SQLEventBuffer
from recorder.errors import SchemaMissing

ENVELOPE = {"type": "events_api", "payload": {"event": {"type": "message"}}}


def test_a_new_sqlite_file_is_created_and_migrated_without_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'recorder.db'}"
    (tmp_path / "fresh").mkdir()
    with SQLEventBuffer(url) as buffer:
        assert buffer.record("e1", ENVELOPE) is RecordResult.NEW
        assert buffer.record("e1", ENVELOPE) is RecordResult.DUPLICATE
    assert db.current_revision(url) == db.head_revision()


def test_an_older_sqlite_schema_is_brought_to_the_newest_revision(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db.upgrade(url, "0001")
    assert db.current_revision(url) == "0001" != db.head_revision()
    with SQLEventBuffer(url) as buffer:
        assert buffer.record("e1", ENVELOPE) is RecordResult.NEW
    assert db.current_revision(url) == db.head_revision()


def test_upgrade_false_never_migrates(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bare.db'}"
    with SQLEventBuffer(url, upgrade=False) as buffer, pytest.raises(SchemaMissing):
        buffer.record("e1", ENVELOPE)
    assert db.current_revision(url) is None


def test_postgresql_is_never_migrated_implicitly_and_says_what_to_run(pg_empty_url: str) -> None:
    with (
        SQLEventBuffer(pg_empty_url) as buffer,
        pytest.raises(SchemaMissing, match="run `recorder db upgrade`"),
    ):
        buffer.record("e1", ENVELOPE)
    assert db.current_revision(pg_empty_url) is None


def _record_in_child(url: str, n: int) -> None:
    with SQLEventBuffer(url) as buffer:
        assert buffer.record(f"p{n}", ENVELOPE) is RecordResult.NEW


def test_processes_starting_together_on_a_new_file_all_record(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_record_in_child, args=(url, n)) for n in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
    assert [child.exitcode for child in children] == [0, 0, 0, 0]
    with SQLEventBuffer(url) as buffer:
        assert all(buffer.seen(f"p{n}") for n in range(4))
