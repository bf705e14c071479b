"""The CLI package's layering: command modules never import the group or each other."""

from __future__ import annotations

import ast
from pathlib import Path

import recorder.cli

CLI_DIR = Path(recorder.cli.__file__).parent
SHARED = {
    "recorder.cli.errors",
    "recorder.cli.options",
    "recorder.cli.output",
    "recorder.cli.storage",
}
COMMAND_MODULES = sorted(
    p
    for p in CLI_DIR.glob("*.py")
    if p.stem not in {"__init__", "app", "errors", "options", "output", "storage"}
)


def _cli_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "recorder.cli":
                names.update(f"recorder.cli.{alias.name}" for alias in node.names)
            elif node.module.startswith("recorder.cli"):
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("recorder.cli"))
    return names


def test_command_modules_import_only_the_shared_helpers() -> None:
    assert COMMAND_MODULES, CLI_DIR
    for path in COMMAND_MODULES:
        assert _cli_imports(path) <= SHARED, path.name


def test_the_group_and_helpers_import_no_command_module() -> None:
    for name in ("app", "errors", "options", "output", "storage"):
        assert _cli_imports(CLI_DIR / f"{name}.py") <= SHARED, name


def test_every_command_module_is_registered() -> None:
    registered = {
        command.callback.__module__
        for command in recorder.cli.main.commands.values()
        if command.callback is not None
    }
    assert registered == {f"recorder.cli.{p.stem}" for p in COMMAND_MODULES}
