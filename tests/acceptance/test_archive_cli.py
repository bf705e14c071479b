"""``recorder prune --archive``, ``recorder archive query|export``, ``recorder verify --archive``.

Each runs as a subprocess on an SQLite file, as an operator would run it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recorder import audit, db, retention, seal
from recorder.archive import open_archive
from recorder.engine import create_engine
from tests.integration.archive_fixtures import fill


def run(
    url: str, *args: str, pythonpath: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    env["RECORDER_DATABASE_URL"] = url
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(
        [sys.executable, "-m", "recorder", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def ok(url: str, *args: str) -> str:
    result = run(url, *args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def one_error(result: subprocess.CompletedProcess[str], status: int = 1) -> str:
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def pruned(tmp_path: Path) -> tuple[str, Path, list[audit.AuditRow]]:
    url = f"sqlite:///{tmp_path / 'recorder.db'}"
    engine = create_engine(url)
    try:
        db.upgrade(engine)
        fill(engine, 30)
        before = list(audit.query_envelopes(engine, audit.QuerySpec()))
        seal.seal(engine, margin=dt.timedelta(0))
        retention.set_policy(engine, "default", keep="30d")
    finally:
        engine.dispose()
    directory = tmp_path / "archive"
    out = ok(url, "prune", "--archive", str(directory), "--archive-file-rows", "8")
    assert "deleted 30 envelopes" in out
    assert "archived 30 envelopes in 4 files" in out
    return url, directory, before


def test_query_export_and_verify_from_the_command_line(
    pruned: tuple[str, Path, list[audit.AuditRow]],
) -> None:
    url, directory, before = pruned
    out = ok(
        url,
        "archive",
        "query",
        str(directory),
        "SELECT count(*) AS n FROM envelopes",
        "--format",
        "csv",
    )
    assert out == "n\n30\n"  # CRLF, read in text mode
    out = ok(
        url,
        "archive",
        "query",
        str(directory),
        "SELECT channel_id, count(*) AS n FROM envelopes GROUP BY 1 ORDER BY 1",
    )
    assert out.splitlines()[1:] == [
        "C1          10",
        "C2          10",
        "C3          10",
        "(3 rows)",
    ]
    exported = ok(url, "archive", "export", str(directory), "--channel", "C1", "--format", "jsonl")
    assert exported.splitlines() == [r.envelope_text for r in before if r.channel_id == "C1"]
    as_json = json.loads(
        ok(url, "archive", "export", str(directory), "--limit", "2", "--format", "json")
    )
    assert [row["envelope_id"] for row in as_json] == [r.envelope_id for r in before[:2]]

    out = ok(url, "verify", "--archive", str(directory))
    assert "archive OK; 4 files, 30 archived envelopes, 30 pruned envelopes accounted for" in out

    victim = open_archive(directory).parquet_files()[2]
    (directory / victim).unlink()
    result = run(url, "verify", "--archive", str(directory))
    assert result.returncode == 1
    assert f"MISSING FILE {victim}: in the manifest (8 envelopes, written " in result.stdout
    assert "archive FAILED" in result.stdout
    report = json.loads(run(url, "verify", "--archive", str(directory), "--format", "json").stdout)
    assert report["archive"]["ok"] is False
    assert {f["kind"] for f in report["archive"]["findings"]} == {"missing-file", "missing"}


def test_archive_export_reimports_with_received_at_and_digests(
    pruned: tuple[str, Path, list[audit.AuditRow]], tmp_path: Path
) -> None:
    url, directory, before = pruned
    exported = ok(url, "archive", "export", str(directory), "--format", "archive")
    (tmp_path / "cold.jsonl").write_text(exported)
    fresh = f"sqlite:///{tmp_path / 'restored.db'}"
    out = ok(fresh, "import", str(tmp_path / "cold.jsonl"))
    assert "30 new" in out
    assert ok(fresh, "query", "--format", "archive") == exported
    records = [json.loads(line) for line in exported.splitlines()]
    assert [(r["envelope_id"], r["envelope_sha256"]) for r in records] == [
        (b.envelope_id, b.envelope_sha256) for b in before
    ]


def test_mistakes_are_one_line_errors(
    pruned: tuple[str, Path, list[audit.AuditRow]], tmp_path: Path
) -> None:
    url, directory, _ = pruned
    line = one_error(run(url, "archive", "query", str(directory), "DELETE FROM envelopes"))
    assert line == "error: archive query: only SELECT statements read the archive, not DELETE"
    line = one_error(run(url, "archive", "query", str(directory), "SELEC nonsense"))
    assert line.startswith("error: archive query: Parser Error")
    line = one_error(run(url, "archive", "export", str(tmp_path)))
    assert line == f"error: no archive at {tmp_path}: it has no recorder-archive.json"
    line = one_error(run(url, "verify", "--archive", str(tmp_path / "nowhere")))
    assert line == f"error: no archive at {tmp_path / 'nowhere'}: no such directory"
    one_error(run(url, "prune", "--archive", str(directory), "--archive-partition", "week"), 2)


def test_without_the_extra_the_error_names_it(tmp_path: Path) -> None:
    """pyarrow and DuckDB made unimportable: each command says which extra to install."""
    blocked = tmp_path / "blocked"
    for name in ("pyarrow", "duckdb"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    url = f"sqlite:///{tmp_path / 'recorder.db'}"
    ok(url, "db", "upgrade")
    result = run(url, "prune", "--archive", str(tmp_path / "a"), pythonpath=str(blocked))
    assert one_error(result) == (
        "error: pyarrow is not installed; install it with: pip install 'envelope-recorder[archive]'"
    )
    assert not (tmp_path / "a").exists()
    archive = open_archive(tmp_path / "b", create=True)
    result = run(url, "archive", "query", str(archive.path), "SELECT 1", pythonpath=str(blocked))
    assert one_error(result) == (
        "error: duckdb is not installed; install it with: pip install 'envelope-recorder[archive]'"
    )


def test_a_policy_archive_directory_from_the_command_line(tmp_path: Path) -> None:
    """retention set --archive: stored absolute, listed, used by a plain prune, never skipped."""
    url = f"sqlite:///{tmp_path / 'recorder.db'}"
    engine = create_engine(url)
    try:
        db.upgrade(engine)
        fill(engine, 30)
    finally:
        engine.dispose()
    directory = tmp_path / "cold"
    created = run(
        url, "retention", "set", "default", "--keep", "30d", "--archive", "cold", cwd=tmp_path
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == (
        f"created policy default: keep 30d of everything, priority 0, archived to {directory}"
    )
    listed = ok(url, "retention", "list").splitlines()
    assert listed[0].split() == ["NAME", "KEEP", "PRIORITY", "MATCH", "ARCHIVE"]
    assert listed[1].split() == ["default", "30d", "0", "everything", str(directory)]
    (described,) = json.loads(ok(url, "retention", "list", "--format", "json"))
    assert described["archive_dir"] == str(directory)

    # Without the archive extra the policy's envelopes are not deleted: an error, and nothing gone.
    blocked = tmp_path / "blocked"
    (blocked / "pyarrow").mkdir(parents=True)
    (blocked / "pyarrow" / "__init__.py").write_text("raise ImportError('no pyarrow here')\n")
    line = one_error(run(url, "prune", pythonpath=str(blocked)))
    assert line == (
        f"error: retention policy default requires archiving before delete (to {directory}), "
        "and this run cannot archive: pyarrow is not installed; install it with: "
        "pip install 'envelope-recorder[archive]'; nothing was deleted"
    )
    engine = create_engine(url)
    try:
        assert len(list(audit.query_envelopes(engine, audit.QuerySpec()))) == 30
    finally:
        engine.dispose()

    pruned = ok(url, "prune")
    assert "deleted 30 envelopes; held 0; skipped 0; archived 30 envelopes in" in pruned
    assert "archive OK" in ok(url, "verify", "--archive", str(directory))

    # Setting the policy again without --archive drops the requirement (set
    # replaces every field); the command says so, rather than only logging it.
    dropped = run(url, "retention", "set", "default", "--keep", "60d")
    assert dropped.returncode == 0, dropped.stderr
    assert dropped.stdout.strip() == "updated policy default: keep 60d of everything, priority 0"
    assert dropped.stderr.strip() == (
        f"warning: policy default no longer archives what it expires (it archived to "
        f"{directory}); pass --archive {directory} to keep that"
    )
    kept = run(url, "retention", "set", "default", "--keep", "60d", "--archive", str(directory))
    assert kept.returncode == 0, kept.stderr
    assert kept.stderr == ""
