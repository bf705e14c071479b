"""The command-line walk-throughs of README.md and docs/*.md, run exactly as written.

Each test prepares a scratch directory and database with what the page
assumes already exists (envelopes, a spool, an archive, a legal hold), runs
the page's commands unchanged, and checks what they did, and the output the
page shows wherever it is deterministic. The PostgreSQL role blocks are in
``test_doc_roles.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from recorder.adapters.sql import SQLEventBuffer
from recorder.archive.archiver import ArchiveOptions
from recorder.engine import create_engine
from recorder.holds import add_hold
from recorder.policies import set_policy
from recorder.prune import prune
from recorder.slack.spool import Spool
from recorder.testing import SocketModeSimulator
from tests.integration.doc_snippets import (
    block,
    console_commands,
    console_steps,
    sh,
    shell_env,
)

UTC = dt.timezone.utc
SUBJECT = "U0123ABCD"

README_CLI = "$ recorder db upgrade                  # create or upgrade t"
README_ERASE = 'recorder erase --user U0123ABCD --reason "DSR-2026-117" --dr'
SECURITY_SEAL = "recorder seal                                  # "
SECURITY_ERASE = README_ERASE
RETENTION_ERASE = '$ recorder erase --user U0123ABCD --reason "DSR-2026-117"'
RETENTION_ARCHIVE = "$ recorder prune --archive archive"
RETENTION_COLD = "$ recorder retention set default --keep 90d"

#: The blocks this module runs: (page, first line).
RUNS = [
    ("README.md", README_CLI),
    ("README.md", README_ERASE),
    ("docs/security.md", SECURITY_SEAL),
    ("docs/security.md", SECURITY_ERASE),
    ("docs/retention.md", RETENTION_ERASE),
    ("docs/retention.md", RETENTION_ARCHIVE),
    ("docs/retention.md", RETENTION_COLD),
]


def message(
    n: int, *, user: str = "U0OTHER", channel: str = "C0456", text: str = "hello"
) -> dict[str, Any]:
    return {
        "envelope_id": f"E{n:05d}",
        "type": "events_api",
        "payload": {
            "team_id": "T1",
            "event_id": f"Ev{n:05d}",
            "event": {"type": "message", "user": user, "channel": channel, "text": text},
        },
    }


def record_at(url: str, when: dt.datetime, envelopes: list[dict[str, Any]]) -> None:
    """Record ``envelopes`` a second apart from ``when``."""
    times = iter(when + dt.timedelta(seconds=i) for i in range(len(envelopes)))
    with SQLEventBuffer(url, clock=lambda: next(times)) as buffer:
        for envelope in envelopes:
            buffer.record(envelope["envelope_id"], envelope)


def run_step(command: str, cwd: Path, url: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """One command of a walk-through, without errexit: some end with status 1 on purpose."""
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=shell_env(url, **extra),
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_steps(text: str, cwd: Path, url: str) -> list[subprocess.CompletedProcess[str]]:
    """Run a console block's commands in order, each to status 0, checking shown output."""
    results = []
    for command, shown in console_steps(text):
        result = run_step(command, cwd, url)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        if shown:
            assert result.stdout.splitlines() == shown, command
        results.append(result)
    return results


# -- README: the `recorder` command


def import_file(path: Path, *, new: int, duplicate: int, rejected: int) -> dict[str, int]:
    """A JSON Lines file with that many new, duplicate and malformed lines; counts by kind."""
    lines, kinds = [], {"C0123": 0, "slash_commands": 0}
    for n in range(new):
        if n % 25 == 0:
            envelope: dict[str, Any] = {
                "envelope_id": f"cmd{n}",
                "type": "slash_commands",
                "payload": {"command": "/deploy", "text": f"v{n}", "channel_id": "C0999"},
            }
            kinds["slash_commands"] += 1
        else:
            channel = "C0123" if n % 10 == 1 else "C0999"
            envelope = message(n, channel=channel)
            kinds["C0123"] += channel == "C0123"
        lines.append(json.dumps(envelope))
    lines += lines[:duplicate]
    lines += [
        "not json",
        "{}",
        '{"envelope_id": ""}',
        "[1, 2]",
        '{"envelope_id": "a", "envelope_id": "b"}',
    ]
    assert len(lines) == new + duplicate + rejected
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return kinds


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_readme_command_walk_through_runs_as_written(tmp_path: Path) -> None:
    text = block("README.md", "console", README_CLI)
    url = "sqlite:///recorder.db"
    kinds = import_file(tmp_path / "envelopes.jsonl", new=9875, duplicate=120, rejected=5)
    # U42's envelopes of May 2026, recorded before the walk-through starts.
    may = [message(90_000 + i, user="U42") for i in range(3)]
    record_at(f"sqlite:///{tmp_path / 'recorder.db'}", dt.datetime(2026, 5, 10, tzinfo=UTC), may)
    (tmp_path / "mybot").mkdir()
    (tmp_path / "mybot" / "__init__.py").write_text("")
    (tmp_path / "mybot" / "handlers.py").write_text(
        "def on_event(envelope):\n"
        "    with open('replayed.log', 'a') as log:\n"
        "        log.write(envelope['envelope_id'] + '\\n')\n"
    )
    steps = console_steps(text)
    assert [command.split("#")[0].split()[:2] for command, _ in steps] == [
        ["recorder", "db"],
        ["recorder", "db"],
        ["recorder", "import"],
        ["recorder", "query"],
        ["recorder", "query"],
        ["recorder", "listen"],
        ["recorder", "demo"],
        ["recorder", "replay"],
        ["recorder", "demo"],
    ]
    for command, shown in steps:
        if command.startswith("recorder listen"):
            listen_and_stop(command, tmp_path, url)
            continue
        result = run_step(command, tmp_path, url)
        # A rejected line makes `recorder import` exit 1, as the README says.
        expected = 1 if command.startswith("recorder import") else 0
        assert result.returncode == expected, f"{command}: {result.stderr}"
        if shown:
            assert result.stdout.splitlines() == shown, command
        if command.startswith("recorder replay"):
            commands_then = stored_ids(tmp_path / "recorder.db", "slash_commands")
        if command.startswith("recorder db current"):
            assert result.stdout.rstrip().endswith("(up to date)"), result.stdout
    week = (tmp_path / "week.jsonl").read_text().splitlines()
    assert len(week) == kinds["C0123"]
    assert {json.loads(line)["payload"]["event"]["channel"] for line in week} == {"C0123"}
    may_rows = (tmp_path / "may.csv").read_text().splitlines()
    assert len(may_rows) == 1 + len(may)
    assert all(m["envelope_id"] in (tmp_path / "may.csv").read_text() for m in may)
    # Every slash command recorded by then (the imported ones and the demo's), each once.
    replayed = (tmp_path / "replayed.log").read_text().split()
    assert sorted(replayed) == sorted(commands_then)
    assert sum(envelope_id.startswith("cmd") for envelope_id in replayed) == kinds["slash_commands"]


def stored_ids(path: Path, envelope_type: str) -> list[str]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT envelope_id FROM envelopes WHERE envelope_type = :type")
            return list(conn.execute(query, {"type": envelope_type}).scalars())
    finally:
        engine.dispose()


def listen_and_stop(command: str, cwd: Path, url: str) -> None:
    """`recorder listen` against the simulator: record one envelope, then SIGTERM."""
    with SocketModeSimulator(redeliver_after=None) as sim:
        env = shell_env(
            url, SLACK_APP_TOKEN=sim.app_token, RECORDER_LISTEN_SLACK_API_URL=sim.api_url
        )
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            sim.wait_for_connections(1, timeout=60)
            envelope = sim.send(sim.envelopes.message("archived by recorder listen"))
            sim.wait_until_acked([envelope], timeout=30)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "stopped: " in stderr
    assert "1 recorded" in stderr
    engine = create_engine(f"sqlite:///{cwd / 'recorder.db'}")
    try:
        with engine.connect() as conn:
            stored = conn.execute(
                sa.text("SELECT count(*) FROM envelopes WHERE envelope_id = :id"), {"id": envelope}
            ).scalar_one()
    finally:
        engine.dispose()
    assert stored == 1


# -- Sealing and erasure


def test_security_seal_and_anchor_run_as_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'recorder.db'}"
    record_at(url, dt.datetime.now(UTC) - dt.timedelta(hours=1), [message(n) for n in range(4)])
    result = sh(block("docs/security.md", "sh", SECURITY_SEAL), tmp_path, url)
    assert result.returncode == 0, result.stderr
    assert re.search(r"latest block 1 digest [0-9a-f]{64}", result.stdout), result.stdout
    (anchor,) = (tmp_path / "anchors").read_text().split()
    assert anchor in result.stdout


def erasure_scene(tmp_path: Path) -> str:
    """A database with SUBJECT's envelopes and a mention, an archive and a spool holding more."""
    url = f"sqlite:///{tmp_path / 'recorder.db'}"
    old = [message(n, user=SUBJECT if n % 2 else "U0OTHER") for n in range(4)]
    record_at(url, dt.datetime(2025, 1, 10, tzinfo=UTC), old)
    engine = create_engine(url)
    try:
        set_policy(engine, "default", keep="90d")
        prune(engine, archive=ArchiveOptions(tmp_path / "archive"))
    finally:
        engine.dispose()
    live = [
        message(100, user=SUBJECT, channel="C0123ABCD"),
        message(101, user=SUBJECT, channel="C0456"),
        message(102, text=f"thanks <@{SUBJECT}>"),
        message(103),
    ]
    record_at(url, dt.datetime.now(UTC) - dt.timedelta(days=1), live)
    with SQLEventBuffer(url) as buffer:
        spooled = message(200, user=SUBJECT)
        Spool(tmp_path / "bot-spool.db").record(
            buffer.parse(spooled["envelope_id"], json.dumps(spooled))
        )
    return url


def spool_text(path: Path) -> str:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            return "".join(conn.execute(sa.text("SELECT envelope_text FROM envelopes")).scalars())
    finally:
        engine.dispose()


def test_readme_erasure_commands_run_as_written(tmp_path: Path) -> None:
    url = erasure_scene(tmp_path)
    result = sh(block("README.md", "sh", README_ERASE), tmp_path, url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("dry run: would erase 2 envelopes of U0123ABCD") for line in lines)
    assert "erasure 1: erased 2 envelopes, scrubbed 1, deferred 0" in lines
    assert "resumed: erased 0 envelopes, scrubbed 0, deferred 0" in lines
    assert (
        "erasure 2: erased 0 envelopes, scrubbed 0, deferred 0, 1 in the spool, 2 in the archive"
        in lines
    )
    assert SUBJECT not in spool_text(tmp_path / "bot-spool.db")
    verified = sh("recorder verify && recorder verify --archive archive", tmp_path, url)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_security_erasure_commands_run_as_written(tmp_path: Path) -> None:
    url = erasure_scene(tmp_path)
    result = sh(block("docs/security.md", "sh", SECURITY_ERASE), tmp_path, url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "erasure 1: erased 2 envelopes, scrubbed 1, deferred 0, 1 in the spool" in lines
    assert SUBJECT not in spool_text(tmp_path / "bot-spool.db")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            actor = conn.execute(sa.text("SELECT actor FROM erasures")).scalar_one()
    finally:
        engine.dispose()
    assert actor == "dpo@example.com"


def test_retention_erasure_walk_through_shows_its_output(tmp_path: Path) -> None:
    """The page's figures: 412 + 35 outside the hold, 8 + 1 inside it."""
    url = f"sqlite:///{tmp_path / 'recorder.db'}"
    outside = [message(n, user=SUBJECT) for n in range(412)]
    outside += [message(1000 + n, text=f"cc <@{SUBJECT}>") for n in range(35)]
    record_at(url, dt.datetime(2026, 5, 1, tzinfo=UTC), outside)
    held = [message(2000 + n, user=SUBJECT, channel="C0123ABCD") for n in range(8)]
    held.append(message(3000, channel="C0123ABCD", text=f"cc <@{SUBJECT}>"))
    record_at(url, dt.datetime(2026, 2, 1, tzinfo=UTC), held)
    engine = create_engine(url)
    try:
        add_hold(
            engine,
            "case-2291",
            reason="Smith v. Example, preservation notice 2026-04-02",
            channel_id="C0123ABCD",
            since=dt.datetime(2026, 1, 1, tzinfo=UTC),
            until=dt.datetime(2026, 4, 1, tzinfo=UTC),
        )
    finally:
        engine.dispose()
    run_steps(block("docs/retention.md", "console", RETENTION_ERASE), tmp_path, url)


# -- Retention: the cold archive


def test_retention_archive_commands_run_as_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'recorder.db'}"
    record_at(url, dt.datetime(2025, 1, 5, tzinfo=UTC), [message(n) for n in range(3)])
    engine = create_engine(url)
    try:
        set_policy(engine, "default", keep="90d")
    finally:
        engine.dispose()
    text = block("docs/retention.md", "console", RETENTION_ARCHIVE)
    (first, _), (scheduled, _) = console_steps(text)
    result = run_step(first, tmp_path, url)
    assert result.returncode == 0, result.stderr
    assert "archived 3 envelopes in 1 files" in result.stdout
    record_at(url, dt.datetime(2025, 2, 5, tzinfo=UTC), [message(n) for n in range(10, 12)])
    result = run_step(scheduled, tmp_path, url)
    assert result.returncode == 0, result.stderr
    assert "archived 2 envelopes in 1 files" in result.stdout
    verified = run_step("recorder verify --archive archive", tmp_path, url)
    assert "2 files, 5 archived envelopes" in verified.stdout, verified.stderr


def test_retention_cold_tier_walk_through_runs_as_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'recorder.db'}"
    january = [message(n, channel="C0123ABCD") for n in range(5)]
    january += [message(10 + n, channel="C0456") for n in range(3)]
    record_at(url, dt.datetime(2025, 1, 10, tzinfo=UTC), january)
    record_at(url, dt.datetime(2024, 12, 10, tzinfo=UTC), [message(20, channel="C0123ABCD")])
    record_at(url, dt.datetime.now(UTC), [message(30, channel="C0123ABCD")])
    text = block("docs/retention.md", "console", RETENTION_COLD)
    results = dict(zip(console_commands(text), run_steps(text, tmp_path, url), strict=True))

    def step(prefix: str) -> subprocess.CompletedProcess[str]:
        (result,) = [r for command, r in results.items() if command.startswith(prefix)]
        return result

    pruned, query = step("recorder prune"), step("recorder archive query")
    export = step("recorder archive export archive --channel C0123ABCD")
    imported, verified = step("recorder import"), step("recorder verify --archive")
    assert "archived 9 envelopes" in pruned.stdout
    rows = [line.split() for line in query.stdout.splitlines()]
    assert ["C0123ABCD", "6"] in rows
    assert ["C0456", "3"] in rows
    exported = [json.loads(line) for line in export.stdout.splitlines()]
    assert sorted(e["envelope_id"] for e in exported) == sorted(
        e["envelope_id"] for e in january[:5]
    )
    assert len((tmp_path / "jan.jsonl").read_text().splitlines()) == 8
    assert "imported: 8 new, 0 duplicate, 0 rejected" in imported.stdout
    assert "archive OK" in verified.stdout
