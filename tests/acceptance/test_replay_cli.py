"""``recorder replay`` as users run it: a handler module in the working directory."""

from __future__ import annotations

from pathlib import Path

from recorder.adapters.sql import SQLEventBuffer
from tests.acceptance.conftest import assert_one_line_error, run_text

HANDLERS = """
import json, pathlib

def handle(envelope):
    with pathlib.Path("handled.log").open("a") as log:
        log.write(envelope["envelope_id"] + "\\n")
    if envelope["payload"].get("text") == "boom":
        raise RuntimeError("the deploy service said no")
"""


def test_replay_runs_the_handler_names_failures_and_resumes(
    sqlite_url: str, tmp_path: Path
) -> None:
    (tmp_path / "mybot_handlers.py").write_text(HANDLERS)
    with SQLEventBuffer(sqlite_url) as buffer:
        for n, text in enumerate(["api", "boom", "web"]):
            envelope = {"envelope_id": f"s{n}", "type": "slash_commands"}
            buffer.record(f"s{n}", {**envelope, "payload": {"command": "/deploy", "text": text}})
        buffer.record("m0", {"type": "events_api", "payload": {"event": {"type": "message"}}})

    args = ["replay", "--handler", "mybot_handlers:handle", "--type", "slash_commands"]
    preview = run_text(sqlite_url, *args, "--dry-run", cwd=tmp_path)
    assert preview.returncode == 0, preview.stderr
    assert "(3 rows)" in preview.stdout
    assert preview.stdout.strip().endswith("dry run: would replay 3 envelopes")
    assert not (tmp_path / "handled.log").exists()

    result = run_text(sqlite_url, *args, "--actor", "ops", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["failed s1: RuntimeError: the deploy service said no"]
    assert result.stdout.strip() == "replay run #1: replayed 3 envelopes, 1 failure"
    assert (tmp_path / "handled.log").read_text().split() == ["s0", "s1", "s2"]

    missing = run_text(sqlite_url, "replay", "--handler", "nowhere:handle", cwd=tmp_path)
    assert "cannot import 'nowhere'" in assert_one_line_error(missing, 2)
    shapeless = run_text(sqlite_url, "replay", "--handler", "mybot_handlers", cwd=tmp_path)
    assert "is not module:function" in assert_one_line_error(shapeless, 2)
