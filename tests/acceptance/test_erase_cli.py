"""``recorder erase`` in a subprocess, on SQLite and PostgreSQL: dry run, erase, holds, resume,
the spool, query shows tombstones, verify passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from recorder.adapters.memory import MemoryEventBuffer
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.slack.spool import Spool
from tests.integration.erasure_envelopes import SUBJECT, generate


def run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    env["RECORDER_DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "recorder", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def ok(url: str, *args: str) -> str:
    result = run(url, *args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def test_erase_end_to_end(database_url: str, tmp_path: Path) -> None:
    engine = create_engine(database_url)
    generated = generate(160)
    buffer = SQLEventBuffer(engine)
    for g in generated:
        buffer.record(g.envelope_id, g.envelope)
    engine.dispose()
    subjects = sum(1 for g in generated if g.subject)
    mentioning = sum(1 for g in generated if g.mentions_subject)
    held = sum(
        1 for g in generated if (g.subject or g.mentions_subject) and g.channel == "C0RANDOM"
    )

    dry = ok(database_url, "erase", "--user", SUBJECT, "--reason", "ticket 9", "--dry-run")
    assert f"would erase {subjects} envelopes of {SUBJECT}" in dry
    assert f"touch {mentioning} that mention them" in dry
    assert "C0GENERAL" in dry
    plan = json.loads(ok(database_url, "erase", "--user", SUBJECT, "--dry-run", "--format", "json"))
    assert sum(r["envelopes"] for r in plan["rows"] if r["kind"] == "subject") == subjects

    ok(database_url, "hold", "add", "random", "--reason", "case 1", "--channel", "C0RANDOM")
    spool = Spool(tmp_path / "spool.db")
    envelope = {"type": "events_api", "payload": {"event": {"user": SUBJECT}}}
    spool.record(MemoryEventBuffer().parse("s-1", envelope))
    spool.close()
    out = json.loads(
        ok(
            database_url,
            "erase",
            "--user",
            SUBJECT,
            "--reason",
            "ticket 9",
            "--actor",
            "dpo@example.com",
            "--spool",
            str(tmp_path / "spool.db"),
            "--format",
            "json",
        )
    )
    assert out["status"] == "deferred"
    assert out["deferred"] == held
    assert out["deferred_by_hold"] == {"random": held}
    assert out["erased"] + out["scrubbed"] == subjects + mentioning - held
    assert out["spooled"] == 1

    exported = ok(database_url, "query", "--format", "jsonl")
    erased_lines = [
        json.loads(line) for line in exported.splitlines() if "recorder_erasure" in line
    ]
    assert len(erased_lines) == out["erased"]
    assert f'"{SUBJECT}"' not in "".join(
        line for line in exported.splitlines() if "C0RANDOM" not in line
    )
    verified = json.loads(run(database_url, "verify", "--format", "json").stdout)
    assert verified["ok"]
    assert verified["erased"] == out["erased"] + out["scrubbed"] + out["spooled"]
    table = ok(database_url, "query", "--limit", "1000")
    assert table.count("(erased)") == out["erased"]
    ok(database_url, "report", "--html", str(tmp_path / "report.html"))
    page = (tmp_path / "report.html").read_text()
    assert f"<b>{out['erased'] + out['scrubbed']}</b>erased (right to erasure)" in page

    ok(database_url, "hold", "release", "random")
    resumed = ok(database_url, "erase", "--resume")
    assert f"erased {sum(1 for g in generated if g.subject and g.channel == 'C0RANDOM')}" in resumed
    assert f'"{SUBJECT}"' not in ok(database_url, "query", "--format", "jsonl")
    assert "OK" in ok(database_url, "verify")
    ok(database_url, "report", "--html", str(tmp_path / "after.html"))
    assert f"<code>{SUBJECT}</code>" not in (tmp_path / "after.html").read_text()


def test_erase_refuses_bad_requests_with_one_line(database_url: str) -> None:
    for args, message in [
        (("erase", "--user", "bob", "--reason", "r"), "not a Slack user id"),
        (("erase", "--user", SUBJECT), "--reason"),
        (("erase", "--reason", "r"), "--user"),
        (("erase", "--resume", "--user", SUBJECT), "--resume takes no"),
    ]:
        result = run(database_url, *args)
        assert result.returncode != 0
        assert message in result.stderr
        assert "Traceback" not in result.stderr
