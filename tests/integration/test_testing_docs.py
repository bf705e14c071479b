"""Every Python example in docs/testing.md runs as written against the real clients."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)


def test_the_page_has_examples() -> None:
    assert len(EXAMPLES) >= 6


@pytest.mark.timeout(60)
@pytest.mark.parametrize("source", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_example_runs(source: str) -> None:
    before = {t for t in threading.enumerate() if t.name == "socket-mode-simulator"}
    namespace: dict[str, object] = {"__name__": "docs_testing_example"}
    exec(compile(source, str(DOC), "exec"), namespace)
    after = {t for t in threading.enumerate() if t.name == "socket-mode-simulator"}
    assert after <= before, "the example left a simulator running"
