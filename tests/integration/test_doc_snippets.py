"""The code snippets of README.md and docs/*.md, run exactly as written.

Every fenced block with a language is accounted for here: run by this module
(shell lines in a scratch directory with the installed ``recorder`` on PATH,
Python through ``exec``), run by another module (the page's own test module,
named in ``RUN_ELSEWHERE``, or one of ``OTHER_RUNNERS``, each listing the
blocks it runs in ``RUNS``), or listed in ``NOT_RUN`` with the reason it
cannot run in a test (it installs packages, configures a host's scheduler,
needs a production server or pg_cron). A new snippet that is in none of these
fails :func:`test_every_snippet_is_accounted_for`, so docs cannot drift
silently.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from recorder.adapters.sql import SQLEventBuffer
from tests.integration import test_doc_roles, test_doc_slack, test_doc_walkthroughs
from tests.integration.doc_snippets import (
    block,
    blocks,
    console_script,
    run_python,
    sh,
)

#: Blocks other test modules run as written (page -> language -> module).
RUN_ELSEWHERE = {
    ("docs/reporting.md", "sql"): "tests/integration/test_docs_sql.py",
    ("docs/http.md", "python"): "tests/integration/test_http_docs.py",
    ("docs/testing.md", "python"): "tests/integration/test_testing_docs.py",
}

#: Blocks no test runs, each with why (a first line identifies the block).
NOT_RUN = {
    "python3 -m venv .venv && .venv/bin/pip install": "installs the package from the network",
    "bash .ci/run": "the whole CI run (this suite is part of it)",
    "pip install 'envelope-recorder": "installs from a package index",
    "export RECORDER_DATABASE_URL=postgresql://recorder@db.internal": "a production server",
    "$ pip install 'envelope-recorder[archive]'      # pyarrow an": "installs from a package index",
    "# /etc/cron.d/recorder-prune: every night at 03:17, at most ": "scheduler or server configuration for a host",
    "# /etc/systemd/system/recorder-prune.service": "scheduler or server configuration for a host",
    "# /etc/systemd/system/recorder-prune.timer": "scheduler or server configuration for a host",
    "$ systemctl enable --now recorder-prune.timer": "scheduler or server configuration for a host",
    "apiVersion: batch/v1": "scheduler or server configuration for a host",
    "CREATE OR REPLACE PROCEDURE recorder_prune(batch_size intege": "needs the pg_cron extension on the server",
    "SELECT cron.schedule('recorder-prune', '17 3 * * *', 'CALL r": "needs the pg_cron extension on the server",
    "-- what pg_cron did": "needs the pg_cron extension on the server",
    '{"envelope_id":"E1","type":"events_api","recorder_erasure":{': "an example of stored data, not code",
    "# postgresql.conf": "scheduler or server configuration for a host",
    "recorder prune --archive /mnt/snaplock/recorder --max-seconds": "needs a WORM (SnapLock) mount",
    "# once: versioning and a default retention on the bucket": "needs an S3 bucket and the aws CLI",
}

#: Modules that run blocks of the pages, each with ``RUNS``: (page, first line) pairs.
OTHER_RUNNERS = (test_doc_roles, test_doc_slack, test_doc_walkthroughs)

RUN_HERE: dict[tuple[str, str], str] = {}


def runs_here(page: str, language: str, first_line: str) -> None:
    """Record that a test below runs the block of ``page`` starting with ``first_line``."""
    RUN_HERE[(page, first_line)] = language


def test_every_snippet_is_accounted_for() -> None:
    unaccounted = []
    for page, language, text in blocks():
        if (page, language) in RUN_ELSEWHERE:
            continue
        if any(text.startswith(prefix) for prefix in NOT_RUN):
            continue
        run_by_others = [run for module in OTHER_RUNNERS for run in module.RUNS]
        if any(p == page and text.startswith(first) for p, first in [*RUN_HERE, *run_by_others]):
            continue
        unaccounted.append(f"{page} ({language}): {text.splitlines()[0][:80]}")
    assert unaccounted == [], "\n".join(unaccounted)


def archive_block(first: str) -> str:
    return block("docs/reporting.md", "sh", first)


ROUND_TRIP = "recorder query --format archive --since 2026-01-01 > archive.jsonl"
BACKFILL = "recorder import --received-at event-time history.jsonl"
REPLAY = "recorder replay --handler replay_handlers:reindex"
runs_here("docs/reporting.md", "sh", ROUND_TRIP)
runs_here("docs/reporting.md", "sh", BACKFILL)
runs_here("docs/reporting.md", "sh", REPLAY)


def test_reporting_archive_round_trip_runs_as_written(pg_url: str, tmp_path: Path) -> None:
    times = iter(
        dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=i) for i in range(50)
    )
    with SQLEventBuffer(pg_url, clock=lambda: next(times)) as buffer:
        for n in range(5):
            buffer.record(
                f"d{n}",
                {"envelope_id": f"d{n}", "type": "events_api", "payload": {"n": n, "t": "é"}},
            )
    result = sh(archive_block(ROUND_TRIP), tmp_path, pg_url)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "archive.jsonl").read_text().splitlines()
    assert len(lines) == 5
    assert json.loads(lines[0])["received_at"] == "2026-03-01T00:00:00.000000Z"
    assert (tmp_path / "copy.db").is_file()


def test_reporting_backfill_runs_as_written(tmp_path: Path) -> None:
    history = [
        {
            "envelope_id": f"h{n}",
            "type": "events_api",
            "payload": {"event_id": f"Ev{n}", "event_time": 1_700_000_000 + 60 * n},
        }
        for n in range(3)
    ]
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in history))
    result = sh(archive_block(BACKFILL), tmp_path, f"sqlite:///{tmp_path / 'recorder.db'}")
    assert result.returncode == 0, result.stderr
    assert "imported: 3 new, 0 duplicate, 0 rejected" in result.stdout
    assert [json.loads(line)["envelope_id"] for line in result.stdout.splitlines()[2:]] == [
        "h0",
        "h1",
        "h2",
    ]


def test_reporting_replay_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / "replay_handlers.py").write_text(
        "def reindex(envelope):\n    open('reindexed.log', 'a').write(envelope['envelope_id'] + '\\n')\n"
    )
    url = f"sqlite:///{tmp_path / 'recorder.db'}"
    when = dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)
    with SQLEventBuffer(url, clock=lambda: when) as buffer:
        for n in range(2):
            buffer.record(
                f"c{n}",
                {
                    "envelope_id": f"c{n}",
                    "type": "slash_commands",
                    "payload": {"command": "/deploy"},
                },
            )
    result = sh(archive_block(REPLAY), tmp_path, url)
    assert result.returncode == 0, result.stderr
    assert "dry run: would replay 2 envelopes" in result.stdout
    assert "replay run #1: replayed 2 envelopes" in result.stdout
    assert (tmp_path / "reindexed.log").read_text().split() == ["c0", "c1"]


ADAPTER = "from recorder import RecordResult, InvalidEnvelope, StorageUnavailable"
runs_here("README.md", "python", ADAPTER)


def test_readme_adapter_contract_snippet_runs_as_written(tmp_path: Path) -> None:
    source = block("README.md", "python", ADAPTER)
    handled: list[str] = []
    namespace: dict[str, Any] = {
        # What the snippet takes from the surrounding bot: an envelope and its code.
        "envelope": {"envelope_id": "readme-1", "type": "events_api", "payload": {}},
        "handle": lambda envelope: handled.append(envelope["envelope_id"]),
    }
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(source, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert handled == ["readme-1"]
    assert (tmp_path / "recorder.db").is_file(), "SQLite is created on first use"


README_RETENTION = "recorder retention set default --keep 400d"
runs_here("README.md", "sh", README_RETENTION)
RETENTION_POLICIES = "$ recorder retention set default --keep 400d"
RETENTION_HOLDS = "$ recorder hold add case-2291"
RETENTION_PRUNE = "$ recorder prune --dry-run"
for first in (RETENTION_POLICIES, RETENTION_HOLDS, RETENTION_PRUNE):
    runs_here("docs/retention.md", "console", first)


def test_readme_retention_commands_run_as_written(tmp_path: Path) -> None:
    result = sh(block("README.md", "sh", README_RETENTION), tmp_path, "sqlite:///recorder.db")
    assert result.returncode == 0, result.stderr
    assert "created policy dms: keep 30d of channel_id=D0123ABCD, priority 10" in result.stdout
    assert (tmp_path / "report.html").is_file()


def test_retention_page_walk_through_runs_as_written(tmp_path: Path) -> None:
    url = "sqlite:///recorder.db"
    for first in (RETENTION_POLICIES, RETENTION_HOLDS, RETENTION_PRUNE):
        result = sh(console_script(block("docs/retention.md", "console", first)), tmp_path, url)
        assert result.returncode == 0, f"{first}: {result.stderr}"
    assert "prune runs:" in result.stdout


README_HTTP = "# slack_bolt (HTTP mode, App or AsyncApp)"
runs_here("README.md", "python", README_HTTP)
REDACTION = "from recorder.adapters import SQLEventBuffer\nfrom recorder.redaction import"
runs_here("docs/security.md", "python", REDACTION)
REDACT_ENV = "RECORDER_REDACT=off"
runs_here("docs/security.md", "sh", REDACT_ENV)
LOG_MASKING = "import logging\nfrom recorder.masking import SecretMaskingFilter"
runs_here("docs/security.md", "python", LOG_MASKING)


def test_readme_http_snippet_runs_as_written(tmp_path: Path) -> None:
    run_python(block("README.md", "python", README_HTTP), tmp_path)
    assert (tmp_path / "recorder.db").is_file()


def test_security_redaction_snippets_run_as_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    run_python(block("docs/security.md", "python", REDACTION), tmp_path, url=url)
    result = sh(block("docs/security.md", "sh", REDACT_ENV), tmp_path, url)
    assert result.returncode == 0, result.stderr


def test_security_log_masking_snippet_runs_as_written(tmp_path: Path) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        namespace = run_python(block("docs/security.md", "python", LOG_MASKING), tmp_path)
    finally:
        root.handlers[:], root.level = handlers, level
    stream = io.StringIO()
    handler = namespace["handler"]
    handler.setStream(stream)
    record = logging.LogRecord(
        "slack_sdk", logging.INFO, __file__, 1, "token %s", ("xoxb-1-2-abc",), None
    )
    handler.handle(record)
    assert "xoxb-1-2-abc" not in stream.getvalue()
    assert stream.getvalue().startswith("token ")
