"""The console examples of docs/retention.md's archive sections run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from recorder import db
from recorder.engine import create_engine
from tests.integration.archive_fixtures import fill

DOC = Path(__file__).resolve().parents[2] / "docs" / "retention.md"


def archive_commands() -> list[str]:
    text = DOC.read_text()
    section = text[text.index("## Archive before delete") : text.index("## Scheduling")]
    commands: list[str] = []
    for block in re.findall(r"```console\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("$ "):
                commands.append(line[2:])
    return commands


def test_the_archive_examples_run(tmp_path: Path) -> None:
    commands = archive_commands()
    assert len(commands) >= 9
    url = f"sqlite:///{tmp_path / 'recorder.db'}"
    engine = create_engine(url)
    try:
        db.upgrade(engine)
        fill(engine, 40)
    finally:
        engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    env["RECORDER_DATABASE_URL"] = url
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    outputs = []
    for command in commands:
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, (command, result.stderr)
        outputs.append(result.stdout)
    assert any("archived 40 envelopes" in out for out in outputs)
    assert (tmp_path / "jan.jsonl").read_text().count("\n") == 40
    assert "archive OK" in outputs[-1]
