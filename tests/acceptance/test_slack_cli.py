"""``recorder demo`` and ``recorder listen``, run in a subprocess as users run them."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
from pathlib import Path

import sqlalchemy as sa

from recorder.adapters.sql import SQLEventBuffer
from recorder.testing import SocketModeSimulator
from tests.acceptance.conftest import CONSOLE_SCRIPT, clean_env


def test_demo_records_the_stream_and_says_how_to_query_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "--database-url", url, "demo"],
        capture_output=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=60,
    )
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
    lines = {
        line.split("  ")[1].strip(): line for line in out.splitlines() if line.startswith("  ")
    }
    assert "recorded (new)           43" in out
    assert "dropped as duplicate     12" in out
    assert "handled successfully     43   still pending: 0" in out
    assert "frames acked             55" in out
    assert any("query --type slash_commands" in line for line in lines.values())
    # The demo's database now answers audit queries, with nothing left behind in cwd.
    with SQLEventBuffer(url) as buffer:
        assert buffer.count_pending() == 0
        with buffer.engine.connect() as conn:
            types: dict[str, int] = dict(
                conn.execute(
                    sa.text("SELECT envelope_type, count(*) FROM envelopes GROUP BY envelope_type")
                ).all()
            )
    assert types == {"events_api": 35, "interactive": 4, "slash_commands": 4}
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("demo.db")) == []


def test_demo_on_a_used_database_touches_only_its_own_envelopes(tmp_path: Path) -> None:
    """A bot's pending work in the database is neither recovered nor counted by the demo."""
    url = f"sqlite:///{tmp_path / 'used.db'}"
    long_ago = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    with SQLEventBuffer(url, clock=lambda: long_ago) as buffer:
        buffer.record("bot-work-1", {"type": "slash_commands", "payload": {"command": "/deploy"}})
    env = clean_env()
    venv_script = os.path.relpath(CONSOLE_SCRIPT, tmp_path)
    for run in range(2):
        result = subprocess.run(
            [venv_script, "--database-url", url, "demo"],
            capture_output=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
        out = result.stdout.decode()
        assert result.returncode == 0, out + result.stderr.decode()
        assert "handled successfully     43   still pending: 0" in out
        assert "handled exactly once" in out
        # The follow-up commands run as the demo was run (no venv activated).
        suggested = [line.strip() for line in out.splitlines() if "query --type" in line]
        assert suggested == [f"{venv_script} --database-url {url} query --type slash_commands"]
        follow = subprocess.run(
            suggested[0].split(), capture_output=True, env=env, cwd=tmp_path, timeout=60
        )
        assert follow.returncode == 0, follow.stderr.decode()
        assert f"({4 * (run + 1) + 1} rows)" in follow.stdout.decode()  # and the bot's own
    with SQLEventBuffer(url) as buffer, buffer.engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT status, attempts, claimed_at FROM envelopes "
                "WHERE envelope_id = 'bot-work-1'"
            )
        ).one()
        assert tuple(row) == ("pending", 1, None), "the demo never claims others' envelopes"
        assert buffer.count_pending() == 1


def test_demo_over_http_records_each_delivery_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "--database-url", url, "demo", "--http"],
        capture_output=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=60,
    )
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
    assert "refused as forged         2" in out
    assert "recorded (new)           34" in out
    assert "dropped as duplicate     20" in out
    assert "listener runs            34" in out
    assert "answered 200             54" in out
    with SQLEventBuffer(url) as buffer:
        assert buffer.count_pending() == 0
        with buffer.engine.connect() as conn:
            types: dict[str, int] = dict(
                conn.execute(
                    sa.text("SELECT envelope_type, count(*) FROM envelopes GROUP BY envelope_type")
                ).all()
            )
    assert types == {"events_api": 28, "interactive": 3, "slash_commands": 3}
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("demo.db")) == []

    # HTTP records answer the audit commands unchanged, and are sealed like any other.
    def recorder(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CONSOLE_SCRIPT), "--database-url", url, *args],
            capture_output=True,
            text=True,
            env=clean_env(),
            cwd=tmp_path,
            timeout=60,
        )

    commands = recorder("query", "--type", "slash_commands", "--format", "jsonl")
    assert commands.returncode == 0, commands.stderr
    lines = commands.stdout.splitlines()
    assert len(lines) == 3
    assert all('"command":"/deploy"' in line and "[redacted]" in line for line in lines)
    stats = recorder("stats", "--by", "event-type", "--format", "csv")
    assert stats.returncode == 0, stats.stderr
    assert "/deploy" in stats.stdout
    assert "block_actions" in stats.stdout
    assert recorder("seal", "--margin", "0").returncode == 0
    assert recorder("verify").returncode == 0
    with SQLEventBuffer(url) as buffer, buffer.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE envelopes SET envelope_text = replace(envelope_text, 'api', 'API') "
                "WHERE envelope_type = 'slash_commands'"
            )
        )
    tampered = recorder("verify")
    assert tampered.returncode == 1
    assert "slash_commands:" in tampered.stdout + tampered.stderr


def test_listen_records_everything_until_sigterm(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    with SocketModeSimulator(redeliver_after=None, seed=21) as sim:
        process = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "--database-url", url, "listen", "--slack-api-url", sim.api_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(SLACK_APP_TOKEN=sim.app_token),
            cwd=tmp_path,
        )
        try:
            sim.wait_for_connections(1, timeout=30)
            envelopes = [sim.envelopes.message(f"archived {i}") for i in range(10)]
            envelopes.append(sim.envelopes.slash_command("/deploy", "api"))
            for envelope in envelopes:
                sim.send(envelope)
            sim.retransmit(envelopes[0]["envelope_id"])
            # Each frame was recorded (and counted) before its ack; SIGTERM waits for the rest.
            sim.wait_for_acks(12, timeout=10)
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    text = stderr.decode()
    assert process.returncode == 0, text
    assert "Traceback" not in text
    assert "stopped: 12 frames, 11 recorded, 0 spooled, 1 duplicates" in text
    with SQLEventBuffer(url) as buffer:
        assert all(buffer.seen(e["envelope_id"]) for e in envelopes)
        assert buffer.count_pending() == 0


def test_listen_without_an_app_token_is_a_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "--database-url", f"sqlite:///{tmp_path / 'a.db'}", "listen"],
        capture_output=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=60,
    )
    stderr = result.stderr.decode().strip().splitlines()
    assert result.returncode == 1
    assert stderr[-1] == "error: no app token: set SLACK_APP_TOKEN or pass --app-token"
    assert "Traceback" not in result.stderr.decode()
