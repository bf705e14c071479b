"""Reading the fenced blocks of README.md and docs/*.md, and running them as written.

Shared by the modules that run the pages' snippets (``test_doc_*.py``):
shell lines run in a scratch directory with the installed ``recorder`` on
PATH, Python through ``exec``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: A fenced block, also one indented inside a list item (its text is dedented).
FENCE = re.compile(r"^( *)```([\w-]*)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
BIN = Path(sys.executable).parent


def blocks() -> list[tuple[str, str, str]]:
    """``(page, language, text)`` of every fenced block that names a language."""
    found = []
    for page in PAGES:
        for _indent, language, text in FENCE.findall(page.read_text(encoding="utf-8")):
            if language:
                found.append((str(page.relative_to(ROOT)), language, textwrap.dedent(text)))
    return found


def block(page: str, language: str, first: str) -> str:
    """The one block of ``page`` in ``language`` that starts with ``first``."""
    (text,) = [
        t for p, lang, t in blocks() if p == page and lang == language and t.startswith(first)
    ]
    return text


def shell_env(url: str, **extra: str) -> dict[str, str]:
    """This environment without RECORDER_* settings, the test's database and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RECORDER_DATABASE_URL"] = url
    env.update(extra)
    return env


def sh(script: str, cwd: Path, url: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with bash (errexit, pipefail) in ``cwd`` against ``url``."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=shell_env(url, **extra),
        capture_output=True,
        text=True,
        timeout=300,
    )


def console_steps(text: str) -> list[tuple[str, list[str]]]:
    """A ``console`` block as (command, the output lines shown after it) pairs.

    A command is a ``$ `` line with its ``\\`` continuation lines.
    """
    steps: list[tuple[str, list[str]]] = []
    continuing = False
    for line in text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif continuing:
            steps[-1] = (steps[-1][0] + "\n" + line, [])
        elif steps:
            steps[-1][1].append(line)
        continuing = bool(steps) and line.rstrip().endswith("\\")
    return steps


def console_commands(text: str) -> list[str]:
    """The commands of a ``console`` block."""
    return [command for command, _ in console_steps(text)]


def console_script(text: str) -> str:
    """A ``console`` block's commands as one script."""
    return "\n".join(console_commands(text))


def run_python(source: str, cwd: Path, **names: Any) -> dict[str, Any]:
    """``exec`` a snippet in ``cwd`` (not as ``__main__``) and return its namespace."""
    namespace: dict[str, Any] = {"__name__": "doc_snippet", **names}
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        exec(compile(source, "snippet", "exec"), namespace)
    finally:
        os.chdir(previous)
    return namespace
