"""``recorder seal``, ``recorder verify`` and ``recorder db grant``, run in a subprocess."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from tests.acceptance.conftest import run_text as run

UTC = dt.timezone.utc
HOUR_AGO = dt.datetime.now(UTC) - dt.timedelta(hours=1)


def record(url: str, count: int) -> None:
    engine = create_engine(url)
    buffer = SQLEventBuffer(engine, clock=lambda: HOUR_AGO)
    for n in range(count):
        buffer.record(f"e{n}", {"type": "events_api", "payload": {"n": n}})
    engine.dispose()


def test_seal_then_verify_then_tamper_fails_naming_the_envelope(database_url: str) -> None:
    record(database_url, 5)
    sealed = run(database_url, "seal", "--block-size", "2")
    assert sealed.returncode == 0, sealed.stderr
    assert sealed.stdout.startswith("sealed 5 envelopes in 3 new blocks")
    digest = sealed.stdout.split("digest ")[-1].strip()

    latest = run(database_url, "verify", "--latest")
    assert latest.returncode == 0, latest.stderr
    assert latest.stdout.strip() == digest

    ok = run(database_url, "verify", "--anchor", digest)
    assert ok.returncode == 0, ok.stdout
    assert ok.stdout.startswith("OK; 3 blocks, 5 sealed envelopes")

    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM envelopes WHERE envelope_id = 'e3'"))
    engine.dispose()
    failed = run(database_url, "verify")
    assert failed.returncode == 1
    assert "DELETED e3: sealed in block 2" in failed.stdout
    assert "FAILED: 1 problem;" in failed.stdout
    assert "Traceback" not in failed.stderr

    as_json = run(database_url, "verify", "--format", "json")
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 1
    assert [(f["kind"], f["envelope_id"]) for f in report["findings"]] == [("deleted", "e3")]
    assert run(database_url, "verify", "--latest").returncode == 1


def test_seal_respects_the_margin(sqlite_url: str) -> None:
    record(sqlite_url, 3)
    result = run(sqlite_url, "seal", "--margin", "7200", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"sealed": 0, "blocks": [], "latest": None}


def test_db_grant_prints_its_sql_and_runs_it(pg_url: str) -> None:
    printed = run(pg_url, "db", "grant", "--writer", "bot", "--reader", "audit", "--print-sql")
    assert printed.returncode == 0, printed.stderr
    assert (
        'GRANT UPDATE (status, completed_at, attempts, claimed_at) ON TABLE envelopes TO "bot";'
        in printed.stdout
    )
    assert "GRANT SELECT ON TABLE envelopes" in printed.stdout

    role = f"rec_cli_{uuid.uuid4().hex[:8]}"
    libpq = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        granted = run(pg_url, "db", "grant", "--reader", role)
        assert granted.returncode == 0, granted.stderr
        assert granted.stdout.startswith(f"granted reader {role}")
        missing = run(pg_url, "db", "grant", "--reader", "rec_no_such_role")
        assert missing.returncode == 1
        assert missing.stderr.startswith("error: no such role: rec_no_such_role")
    finally:
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


@pytest.mark.parametrize("args", [["seal", "--block-size", "0"], ["db", "grant"]])
def test_usage_mistakes_are_one_line_errors(sqlite_url: str, args: list[str]) -> None:
    result = run(sqlite_url, *args)
    assert result.returncode in (1, 2)
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_a_backdated_row_fails_verify_and_is_sealed_only_when_named(
    sqlite_url: str, tmp_path: Path
) -> None:
    record(sqlite_url, 3)
    assert run(sqlite_url, "seal").returncode == 0
    engine = create_engine(sqlite_url)
    behind = SQLEventBuffer(engine, clock=lambda: HOUR_AGO + dt.timedelta(minutes=10))
    behind.record("late-1", {"type": "events_api", "payload": {}})
    behind.record("late-2", {"type": "events_api", "payload": {}})
    engine.dispose()

    failed = run(sqlite_url, "verify")
    assert failed.returncode == 1
    assert "INSERTED late-1: received_at" in failed.stdout
    assert "INSERTED late-2: received_at" in failed.stdout
    assert run(sqlite_url, "seal").stdout.startswith("sealed 0 envelopes")

    refused = run(sqlite_url, "seal", "--adopt-late", "late-1", "--adopt-late", "e0")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: cannot adopt 1 of the 2 envelopes named: e0")
    assert run(sqlite_url, "verify").returncode == 1

    adopted = run(sqlite_url, "seal", "--adopt-late", "late-1")
    assert adopted.stdout.startswith("sealed 1 envelope in 1 new block (1 adopted late)")
    listed = tmp_path / "late.txt"
    listed.write_text("late-2\n\n")
    assert run(sqlite_url, "seal", "--adopt-late-from", str(listed)).returncode == 0
    assert run(sqlite_url, "verify").returncode == 0
