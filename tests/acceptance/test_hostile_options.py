"""Every ``recorder`` command, every option, hostile values: one ``error:`` line, never a traceback.

The sweep walks the command tree as click knows it (so a command added later
is swept too) and runs each command once per hostile value of each of its
options, in process through click's runner for speed: usage mistakes must
exit with status 2, runtime failures with 1, and anything that is not a
clean exit (an exception escaping the command) fails the test. The cases
issue #10 names are also run through the real ``recorder`` console script.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from recorder import db, retention
from recorder.cli import main
from recorder.engine import create_engine
from recorder.schema import retention_policies
from tests.acceptance.conftest import assert_one_line_error, run_recorder
from tests.conftest import closed_port

NON_UTF8 = b"C\xff\xfe".decode("utf-8", "surrogateescape")
HOSTILE_TEXT = [
    NON_UTF8,
    "",
    " ",
    "-",
    "x" * 5000,
    "'; DROP TABLE envelopes; --",
    "1000000d",
    "9999-12-31T23:00-05:00",
    "0001-01-01T00:00+01:00",
    "../../../etc/passwd",
]
HOSTILE_NUMBERS = ["-1", "0", "99999999999999999999999999", "1e309", "nan", "abc", NON_UTF8]
HOSTILE_URLS = [
    "postgresql://u:pw@h:port/db",
    "postgresql://u:pw@[::1/db",
    "mysql://u:pw@h/db",
    "not a url",
    "sqlite:////nonexistent/folder/x.db",
    NON_UTF8,
]
# Values that would start real work unrelated to the attack: never swept.
BENIGN = {
    "listen": ["--slack-api-url", "SLACK_API_URL", "--app-token", "xapp-hostile"],
}


def leaves(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaves(command, (*path, name))
        else:
            yield (*path, name)


def command_at(path: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def required_args(command: click.Command, tmp_path: Path) -> list[str]:
    """Benign values for what the command requires, so parsing reaches each option."""
    args: list[str] = []
    for param in command.params:
        if isinstance(param, click.Argument):
            continue
        if param.required and isinstance(param, click.Option):
            args += [param.opts[0], benign_value(param, tmp_path)]
    for param in command.params:
        if isinstance(param, click.Argument):
            args.append(benign_value(param, tmp_path))
    return args


def benign_value(param: click.Parameter, tmp_path: Path) -> str:
    if isinstance(param.type, click.Choice):
        return str(param.type.choices[0])
    if isinstance(param.type, click.File | click.Path):
        empty = tmp_path / "empty.jsonl"
        empty.touch()
        return str(empty)
    if param.name == "keep":
        return "30d"
    return "hostile-test"


def hostile_values(param: click.Parameter, tmp_path: Path) -> list[str]:
    if param.name == "database_url":
        return HOSTILE_URLS
    if isinstance(param.type, click.Choice):
        return ["nope", "", NON_UTF8]
    if isinstance(param.type, click.types.IntParamType | click.types.FloatParamType):
        return HOSTILE_NUMBERS
    if isinstance(param.type, click.File | click.Path):
        return [str(tmp_path / "missing" / "folder" / "x"), str(tmp_path), "", NON_UTF8]
    return HOSTILE_TEXT


def cases(tmp_path: Path) -> Iterator[tuple[tuple[str, ...], list[str]]]:
    for path in leaves(main):
        command = command_at(path)
        base = required_args(command, tmp_path)
        for param in command.params:
            if isinstance(param, click.Option) and (param.is_flag or param.hidden):
                continue
            for value in hostile_values(param, tmp_path):
                if isinstance(param, click.Argument):
                    args = [value if a == benign_value(param, tmp_path) else a for a in base]
                else:
                    args = [*base, param.opts[0], value]
                yield path, args


@pytest.fixture
def runner(tmp_path: Path) -> CliRunner:
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    db.upgrade(url)
    return CliRunner(
        env={
            "RECORDER_DATABASE_URL": url,
            "SLACK_APP_TOKEN": "xapp-hostile",
        }
    )


def test_every_option_of_every_command_fails_cleanly(runner: CliRunner, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{closed_port()}/"
    swept: set[tuple[str, ...]] = set()
    problems: list[str] = []
    for path, args in cases(tmp_path):
        if path == ("listen",):
            args = [*args, "--slack-api-url", closed]
        if path == ("demo",) and "--database-url" not in args:
            continue  # the demo with a good database is the demo test's business
        result = runner.invoke(main, [*path, *args], catch_exceptions=True)
        swept.add(path)
        shown = f"recorder {' '.join(path)} {' '.join(repr(a)[:60] for a in args)}"
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            problems.append(f"{shown}: {type(result.exception).__name__}: {result.exception}")
            continue
        if result.exit_code not in (0, 1, 2):
            problems.append(f"{shown}: exit status {result.exit_code}")
        elif result.exit_code and not result.stderr.startswith("error: "):
            problems.append(f"{shown}: stderr {result.stderr[:200]!r}")
        elif "Traceback" in result.stderr + result.stdout:
            problems.append(f"{shown}: a traceback")
    assert swept == set(leaves(main))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "--since", "1000000d"], "'1000000d' ago is before the year 1"),
        (["query", "--until", "9999-12-31T23:00-05:00"], "outside the years 1-9999"),
        (["hold", "add", "h", "--reason", "r", "--since", "1000000d"], "before the year 1"),
        (["retention", "set", "p", "--keep", "99999999999d"], "longer than the maximum of 100y"),
        (["retention", "set", "p", "--keep", "999999d", "--channel", "C"], "100y (36500d)"),
        (["retention", "set", "p", "--keep", "soon"], "'soon' is not a retention period"),
        (["db", "upgrade", "--revision", "9999"], "'9999' is not a revision"),
        (["query", "--channel", NON_UTF8], "argument 'C\\xff\\xfe' is not valid UTF-8"),
        (
            ["--database-url", "postgresql://u:S3cret@h:port/db", "query"],
            "'postgresql://u:***@h:port/db'",
        ),
        (
            ["query", "--database-url", "postgresql://u:S3cret@[::1/db"],
            "postgresql://u:***@[::1/db",
        ),
        (["--database-url", "mysql://u:S3cret@h/db", "query"], "unsupported database 'mysql'"),
    ],
)
def test_usage_mistakes_named_in_the_issue_exit_2_with_the_value(
    sqlite_url: str, tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_recorder(sqlite_url, *args, script=True, cwd=tmp_path)
    line = assert_one_line_error(result, 2)
    assert message in line
    assert "S3cret" not in line


def test_runtime_failures_named_in_the_issue_exit_1(sqlite_url: str, tmp_path: Path) -> None:
    report = run_recorder(sqlite_url, "report", "--html", str(tmp_path / "no" / "r.html"))
    assert "folder" in assert_one_line_error(report, 2)
    unreachable = run_recorder(
        sqlite_url,
        "listen",
        "--slack-api-url",
        f"http://127.0.0.1:{closed_port()}/",
        env={"SLACK_APP_TOKEN": "xapp-1-test"},
        cwd=tmp_path,
    )
    assert "could not connect to Slack" in assert_one_line_error(unreachable, 1)
    missing = f"sqlite:///{tmp_path / 'typo.db'}"
    for args in (["seal"], ["verify"], ["db", "current"], ["query"], ["stats"]):
        assert "no database at" in assert_one_line_error(run_recorder(missing, *args), 1)
    assert not (tmp_path / "typo.db").exists()


def test_a_policy_stored_beyond_any_period_never_stops_pruning(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        retention.set_policy(engine, "short", keep="1d", channel_id="C1", actor="ops")
        with engine.begin() as conn:
            conn.execute(
                sa.insert(retention_policies).values(
                    name="forever",
                    keep_seconds=10**17,
                    channel_id="C2",
                    priority=0,
                    created_at=dt.datetime.now(dt.timezone.utc),
                    updated_at=dt.datetime.now(dt.timezone.utc),
                )
            )
        report = retention.prune(engine, actor="ops")
    finally:
        engine.dispose()
    assert report.status == "completed", report.error
    assert report.cutoffs["forever"].year == 1
