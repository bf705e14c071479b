"""The import rules of docs/architecture.md, checked on the source (no imports run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "recorder"

#: Applications inside recorder.slack that compose concrete pieces on purpose:
#: they may pick an adapter (``recorder listen``, ``recorder demo``).
SLACK_APPLICATIONS = {"recorder.slack.archive", "recorder.slack.demo", "recorder.slack.http_demo"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy and TYPE_CHECKING imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "recorder" or name.startswith("recorder.")}


MODULES = {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(rule: str, sources: list[str], forbidden: list[str]) -> list[str]:
    return [
        f"{source} imports {target} ({rule})"
        for source in sources
        for target in sorted(MODULES[source])
        if any(under(target, f) for f in forbidden)
    ]


def test_the_walk_found_the_package() -> None:
    assert "recorder.adapter" in MODULES
    assert "recorder.slack.recording" in MODULES
    assert "recorder.adapters.sql" in MODULES["recorder.adapters"]


ADAPTERS = ["recorder.adapters.memory", "recorder.adapters.sql", "recorder.adapters.redis"]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapters_do_not_import_each_other(adapter: str) -> None:
    others = [a for a in ADAPTERS if a != adapter]
    assert violations("adapters stand alone", [adapter], others) == []


def test_the_contract_imports_only_errors_and_envelope() -> None:
    allowed = {"recorder.errors", "recorder.errors.InvalidEnvelope", "recorder.envelope"}
    extra = {
        name for name in MODULES["recorder.adapter"] if not any(under(name, a) for a in allowed)
    }
    assert extra == set()


def test_the_slack_layer_depends_on_protocols_not_adapters() -> None:
    library = [
        name for name in MODULES if under(name, "recorder.slack") and name not in SLACK_APPLICATIONS
    ] + ["recorder.http"]
    assert violations("depend on recorder.adapter's protocols", library, ADAPTERS) == []


def test_nothing_outside_the_test_kit_imports_it() -> None:
    sources = [name for name in MODULES if not under(name, "recorder.testing")]
    assert violations("the test kit is for tests", sources, ["recorder.testing"]) == []


def test_lower_layers_never_import_upper_ones() -> None:
    upper = ["recorder.slack", "recorder.http", "recorder.cli", "recorder.testing"]
    lower = [
        name
        for name in MODULES
        if not any(under(name, u) for u in upper)
        and name not in ("recorder", "recorder.__main__")
        and not under(name, "recorder.simulator")
    ]
    assert violations("layers point down", lower, upper) == []


def test_only_the_command_imports_the_cli() -> None:
    sources = [n for n in MODULES if not under(n, "recorder.cli") and n != "recorder.__main__"]
    assert violations("the CLI is the top", sources, ["recorder.cli"]) == []
