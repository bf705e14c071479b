"""The ``recorder`` command, run in a subprocess as users run it, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from recorder import db
from recorder.adapters.sql import SQLEventBuffer
from tests.acceptance.conftest import assert_one_line_error
from tests.acceptance.conftest import run_recorder as run
from tests.conftest import closed_port

UTC = dt.timezone.utc


def envelope(n: int, **event: Any) -> dict[str, Any]:
    return {
        "envelope_id": f"env-{n:04d}",
        "type": "events_api",
        "accepts_response_payload": False,
        "payload": {
            "team_id": event.pop("team", "T1"),
            "event_id": event.pop("event_id", f"Ev{n:04d}"),
            "event": {"type": "message", "channel": "C1", "user": "U1", **event},
        },
    }


def jsonl_ids(output: bytes) -> list[str]:
    return [json.loads(line)["envelope_id"] for line in output.splitlines()]


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with no schema yet."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    url: str = request.getfixturevalue("pg_empty_url")
    return url


def test_db_upgrade_is_idempotent_and_current_reports_it(empty_url: str) -> None:
    head = db.head_revision()
    before = run(empty_url, "db", "current")
    if empty_url.startswith("sqlite"):
        # Reading never creates a database: a missing file is a mistyped path.
        assert "no database at" in assert_one_line_error(before, 1)
    else:
        assert before.returncode == 0, before.stderr
        assert before.stdout.decode().startswith("none")
    for _ in range(2):
        result = run(empty_url, "db", "upgrade")
        assert result.returncode == 0, result.stderr
        assert f"at revision {head}" in result.stdout.decode()
    after = run(empty_url, "db", "current", script=True)
    assert after.stdout.decode().strip() == f"{head} (up to date)"


def test_import_then_query_jsonl_gives_back_the_exact_lines(
    database_url: str, tmp_path: Path
) -> None:
    # Lines written the way different producers write JSON: spacing, key
    # order, raw UTF-8 or \u escapes, a NUL escape that jsonb cannot hold.
    good = [
        json.dumps(envelope(1, text="plain")),
        json.dumps(envelope(2, text="héllo 🎉"), ensure_ascii=False),
        json.dumps(envelope(3, text="héllo"), indent=None, separators=(",", ":")),
        '{ "type":"events_api" , "envelope_id" : "env-0004", "payload": {"event_id": "Ev0004", '
        '"event": {"type": "message", "text": "nul \\u0000 here"}}}',
        json.dumps(envelope(5, text="'; DROP TABLE envelopes; --")),
    ]
    retry = json.dumps({**envelope(6, event_id="Ev0002"), "retry_attempt": 1})
    lines = [good[0], good[1], "{broken", "", good[2], good[3], good[1], retry, good[4]]
    path = tmp_path / "in.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode())

    result = run(database_url, "import", str(path))
    assert result.stdout.decode().splitlines()[0] == "imported: 5 new, 2 duplicate, 1 rejected"
    assert result.returncode == 1, "a rejected line makes the exit status 1"
    assert result.stderr.decode().startswith("line 3: envelope is not valid JSON")

    exported = run(database_url, "query", "--format", "jsonl")
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == ("\n".join(good) + "\n").encode()

    again = run(database_url, "import", "-", stdin=exported.stdout, script=True)
    assert again.returncode == 0, again.stderr
    assert again.stdout.decode().strip() == "imported: 0 new, 5 duplicate, 0 rejected"
    assert again.stderr == b"", "no progress bar when stderr is not a terminal"


def test_query_filters_by_each_option(database_url: str) -> None:
    now = dt.datetime.now(UTC)
    times = iter(
        [now - dt.timedelta(days=10), now - dt.timedelta(hours=30), now - dt.timedelta(minutes=5)]
        + [now - dt.timedelta(minutes=1)] * 3
    )
    with SQLEventBuffer(database_url, clock=lambda: next(times)) as buffer:
        buffer.record("env-0000", envelope(0, team="T0", channel="C0", user="U0"))
        buffer.record("env-0001", envelope(1, channel="C9"))
        buffer.record("env-0002", envelope(2, user="U7", type="reaction_added"))
        buffer.record(
            "cmd-1",
            {
                "envelope_id": "cmd-1",
                "type": "slash_commands",
                "payload": {"team_id": "T1", "channel_id": "C1", "user_id": "U1", "command": "/x"},
            },
        )
        buffer.record("env-0004", envelope(4))
        buffer.record("env-0005", envelope(5))
    old = (now - dt.timedelta(days=10)).date().isoformat()

    cases: list[tuple[list[str], list[str]]] = [
        (["--team", "T0"], ["env-0000"]),
        (["--channel", "C9"], ["env-0001"]),
        (["--user", "U7"], ["env-0002"]),
        (["--type", "slash_commands"], ["cmd-1"]),
        (["--event-type", "reaction_added"], ["env-0002"]),
        (["--since", "7d"], ["env-0001", "env-0002", "cmd-1", "env-0004", "env-0005"]),
        (["--since", "2h", "--until", "3m"], ["env-0002"]),
        (["--until", "24h"], ["env-0000", "env-0001"]),
        (["--since", old, "--until", f"{old}T23:59:59.999999Z"], ["env-0000"]),
        (["--limit", "2"], ["env-0000", "env-0001"]),
        (
            ["--team", "T1", "--type", "events_api", "--since", "1h"],
            ["env-0002", "env-0004", "env-0005"],
        ),
    ]
    for options, expected in cases:
        result = run(database_url, "query", "--format", "jsonl", *options)
        assert result.returncode == 0, (options, result.stderr)
        assert jsonl_ids(result.stdout) == expected, options


def test_csv_json_and_table_outputs(database_url: str, tmp_path: Path) -> None:
    lines = [json.dumps(envelope(i, text=f'line, "{i}"\nnext')) for i in range(3)]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert run(database_url, "import", str(path)).returncode == 0

    as_csv = run(database_url, "query", "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout.decode(), newline="")))
    assert [r["envelope_text"] for r in rows] == lines
    assert [r["channel_id"] for r in rows] == ["C1"] * 3
    assert all(dt.datetime.fromisoformat(r["received_at"]).tzinfo for r in rows)

    as_json = run(database_url, "query", "--format", "json", "--limit", "2")
    objects = json.loads(as_json.stdout)
    assert [o["envelope"] for o in objects] == [json.loads(line) for line in lines[:2]]
    assert objects[0]["event_type"] == "message"

    table = run(database_url, "query", "--team", "T1").stdout.decode().splitlines()
    assert table[0].split()[:3] == ["RECEIVED", "(UTC)", "TYPE"]
    assert "env-0001" in table[2]
    assert table[-1] == "(3 rows)"


def test_sqlite_is_migrated_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(envelope(1)) + "\n")
    # The default URL, sqlite:///recorder.db, is relative to the working directory.
    result = run(None, "import", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "recorder.db").is_file()
    assert jsonl_ids(run(None, "query", "--format", "jsonl", cwd=tmp_path).stdout) == ["env-0001"]


def test_postgresql_without_schema_says_to_run_db_upgrade(
    pg_empty_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(envelope(1)) + "\n")
    line = assert_one_line_error(run(pg_empty_url, "import", str(path)), 1)
    assert "recorder db upgrade" in line
    line = assert_one_line_error(run(pg_empty_url, "query"), 1)
    assert "recorder db upgrade" in line


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["query", "--since", "yesterday"], 2, "'yesterday' is not a time"),
        (["query", "--until", "2026-02-30"], 2, "is not a time"),
        (["query", "--format", "xml"], 2, "'xml' is not one of"),
        (["query", "--limit", "-1"], 2, "--limit"),
        (["import", "/nonexistent/file.jsonl"], 2, "No such file or directory"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_usage_mistakes_get_one_line_and_status_2(
    sqlite_url: str, args: list[str], status: int, message: str
) -> None:
    line = assert_one_line_error(run(sqlite_url, *args), status)
    assert message in line


def test_unreachable_database_is_one_line_with_the_password_masked() -> None:
    url = f"postgresql://auditor:S3cretPassw0rd@127.0.0.1:{closed_port()}/recorder"
    for args in (["query"], ["db", "upgrade"]):
        result = run(url, *args)
        line = assert_one_line_error(result, 1)
        assert "S3cretPassw0rd" not in result.stderr.decode() + result.stdout.decode()
        assert "auditor:***@127.0.0.1" in line
        assert "Connection refused" in line or "connection failed" in line


def test_bad_settings_name_the_variable(tmp_path: Path) -> None:
    env_url = f"sqlite:///{tmp_path / 'x.db'}"
    result = run(env_url, "--database-url", "mysql://u:pw12345@h/db", "query")
    line = assert_one_line_error(result, 2)
    assert "--database-url" in line
    assert "pw12345" not in line
    result = run("oracle://nope", "query")
    assert "RECORDER_DATABASE_URL" in assert_one_line_error(result, 2)
    bad = run(env_url, "query", env={"RECORDER_MAX_ENVELOPE_BYTES": "lots"})
    assert "RECORDER_MAX_ENVELOPE_BYTES" in assert_one_line_error(bad, 2)


def test_max_envelope_bytes_from_the_environment(sqlite_url: str, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    small, large = envelope(1), {**envelope(2), "pad": "x" * 3000}
    path.write_text(json.dumps(small) + "\n" + json.dumps(large) + "\n")
    result = run(sqlite_url, "import", str(path), env={"RECORDER_MAX_ENVELOPE_BYTES": "2048"})
    assert result.returncode == 1
    assert result.stdout.decode().splitlines()[0] == "imported: 1 new, 0 duplicate, 1 rejected"
    assert "line 2: " in result.stderr.decode()
    assert "2,048" in result.stderr.decode()


def test_help_lists_the_subcommands() -> None:
    result = run(None, "--help", script=True)
    assert result.returncode == 0
    text = result.stdout.decode()
    for name in ("db", "import", "query"):
        assert f"  {name}" in text
    assert make_url("sqlite:///recorder.db").database == "recorder.db"


def test_bare_recorder_prints_the_help_and_exits_0() -> None:
    result = run(None, script=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith("Usage: recorder")
    assert "postgresql://user:pass@host/db" in result.stdout.decode()
    assert result.stderr == b""


def test_a_mistake_in_the_global_options_is_one_line_with_status_2() -> None:
    line = assert_one_line_error(run(None, "--bogus", "query"), 2)
    assert "No such option '--bogus'" in line
