"""What the commands print for people: examples in every help, bars, progress, counts."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
from pathlib import Path

import click
from click.testing import CliRunner

from recorder.adapters.sql import SQLEventBuffer
from recorder.cli import main
from tests.acceptance.conftest import clean_env, command, ok


def leaf_commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            found += leaf_commands(cmd, (*path, name))
        else:
            found.append((*path, name))
    return found


def test_every_subcommand_help_shows_an_example() -> None:
    runner = CliRunner()
    missing = []
    for path in leaf_commands(main):
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, result.output
        example = re.search(r"\n  Examples?:(.+?)\n\nOptions:", result.output, flags=re.S)
        if example is None or f" {path[-1]}" not in " ".join(example.group(1).split()):
            missing.append(" ".join(path))
    assert not missing, f"no example in the help of: {', '.join(missing)}"


def test_report_share_bars_are_drawn_to_their_percentage(sqlite_url: str, tmp_path: Path) -> None:
    with SQLEventBuffer(sqlite_url) as buffer:
        for n in range(10):
            channel = "C1" if n < 7 else "C2"
            buffer.record(
                f"e{n}",
                {
                    "type": "events_api",
                    "payload": {"event": {"type": "message", "channel": channel, "user": "U1"}},
                },
            )
    page = tmp_path / "r.html"
    ok(sqlite_url, "report", "--html", str(page))
    cells = re.findall(
        r'<div class="bar" style="width:([\d.]+)%"></div></div><span>([\d.]+)%</span>',
        page.read_text(),
    )
    assert ("70.0", "70.0") in cells
    assert ("30.0", "30.0") in cells
    assert all(width == label for width, label in cells)


def test_rejected_lines_never_overwrite_the_progress_bar(sqlite_url: str, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    good = json.dumps({"envelope_id": "ok-1", "type": "events_api"})
    path.write_text(f"{good}\n{{broken\n")
    leader, follower = pty.openpty()
    try:
        result = subprocess.run(
            command("import", str(path)),
            stdout=subprocess.PIPE,
            stderr=follower,
            env=clean_env(sqlite_url),
            timeout=120,
        )
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    text = shown.decode()
    assert result.returncode == 1
    assert "importing" in text
    # The bar is finished (its last redraw) before the rejected line is written.
    assert text.rindex("importing") < text.index("line 2: envelope is not valid JSON")
    assert text.rstrip().endswith(
        "line 2: envelope is not valid JSON: "
        + text.rstrip().split("line 2: envelope is not valid JSON: ")[-1]
    )
