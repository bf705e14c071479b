"""kill -9 during ``recorder prune --archive``: after a rerun nothing is lost, nothing doubled.

The prune runs in a real subprocess. It freezes itself (SIGSTOP) at a named
point (``RECORDER_FAILPOINT``), the test sees it stopped and sends SIGKILL,
then runs the same command again to the end. Also: kills at random moments.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from recorder import retention
from recorder.archive import manifest
from recorder.engine import create_engine
from recorder.schema import pruned_envelopes
from tests.integration.archive_fixtures import archived_rows, fill, live_rows

PRUNE = ("prune", "--batch-size", "3", "--archive-file-rows", "7")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def start(url: str, directory: Path, failpoint: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    env["RECORDER_DATABASE_URL"] = url
    if failpoint:
        env["RECORDER_FAILPOINT"] = failpoint
    return subprocess.Popen(
        [sys.executable, "-m", "recorder", *PRUNE, "--archive", str(directory)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_stopped(process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited before the failpoint: {process.communicate()}"
        with open(f"/proc/{process.pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.02)
    raise AssertionError("the prune never reached its failpoint")


def kill9(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL


def finish(url: str, directory: Path) -> str:
    process = start(url, directory)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out


def assert_nothing_lost_nothing_doubled(
    engine: Engine, directory: Path, before: dict[str, tuple[object, ...]]
) -> None:
    archived = archived_rows(directory)
    counts = Counter(row["envelope_id"] for row in archived)
    assert [i for i, n in counts.items() if n > 1] == [], "an envelope is in two files"
    assert live_rows(engine) == {}, "the rerun finished the prune"
    assert set(counts) == set(before), "every envelope is in the archive"
    for row in archived:
        at, sha, text = before[row["envelope_id"]]
        assert (row["received_at"], row["envelope_sha256"], row["envelope_text"]) == (at, sha, text)
    with engine.connect() as conn:
        logged = Counter(r.envelope_id for r in conn.execute(pruned_envelopes.select()).all())
    assert set(logged) == set(before)
    assert max(logged.values()) == 1, "each deletion logged once"
    entries = manifest.entries(engine)
    on_disk = {row["_file"] for row in archived}
    assert {e.file_name for e in entries if e.state == "complete"} == on_disk
    assert {e.state for e in entries} <= {"complete", "abandoned"}
    assert not list(directory.glob("*/.*.tmp")), "no temporary file is left behind"


def assert_crash_state(engine: Engine, directory: Path, point: str, total: int) -> None:
    """The kill landed where it was meant to: the state the rerun must finish."""
    states = Counter(e.state for e in manifest.entries(engine))
    last = manifest.entries(engine)[-1]
    final = directory / last.file_name
    temp = final.with_name(f".{final.name}.tmp")
    live = len(live_rows(engine))
    if point == "archive.file-begun":
        assert last.state == "writing"
        assert not final.exists()
        assert not temp.exists()
    elif point == "archive.rows-written":
        assert last.state == "writing"
        assert temp.exists()
        assert not final.exists()
    elif point == "archive.file-renamed":
        assert last.state == "writing"
        assert final.exists()
        assert not temp.exists()
    elif point == "archive.file-written":
        assert last.state == "written"
        assert live == total - 7
    elif point == "archive.batch-deleted":
        assert last.state == "written"
        assert live == total - 7 - 3
    else:
        assert states == {"complete": 1}
        assert live == total - 7


@pytest.mark.slow
@pytest.mark.parametrize(
    "failpoint",
    [
        "archive.file-begun:2",  # named in the manifest, nothing on disk
        "archive.rows-written:2",  # half a file, under its temporary name
        "archive.file-renamed:2",  # complete on disk, manifest still says writing
        "archive.file-written:2",  # manifest says written, nothing deleted yet
        "archive.batch-deleted:4",  # part of a file's envelopes deleted
        "archive.file-complete:1",  # one file done, the next not started
    ],
)
def test_kill_9_at_each_step_then_rerun(
    database_url: str, engine: Engine, tmp_path: Path, failpoint: str
) -> None:
    fill(engine, 40)
    retention.set_policy(engine, "default", keep="30d")
    before = live_rows(engine)
    directory = tmp_path / "archive"
    process = start(database_url, directory, failpoint)
    wait_stopped(process)
    kill9(process)
    assert set(live_rows(engine)) | {r["envelope_id"] for r in archived_rows(directory)} == set(
        before
    ), "after the kill, every envelope is live or archived"
    assert_crash_state(engine, directory, failpoint.split(":")[0], len(before))
    out = finish(database_url, directory)
    assert "prune run" in out
    assert_nothing_lost_nothing_doubled(engine, directory, before)


@pytest.mark.slow
def test_kill_9_at_random_moments(database_url: str, engine: Engine, tmp_path: Path) -> None:
    fill(engine, 150, step=__import__("datetime").timedelta(hours=3))
    retention.set_policy(engine, "default", keep="30d")
    before = live_rows(engine)
    directory = tmp_path / "archive"
    rng = random.Random(14)
    for _ in range(4):
        process = start(database_url, directory)
        time.sleep(rng.uniform(0.8, 2.5))
        if process.poll() is not None:
            break
        kill9(process)
        assert set(live_rows(engine)) | {r["envelope_id"] for r in archived_rows(directory)} == set(
            before
        )
    finish(database_url, directory)
    assert_nothing_lost_nothing_doubled(engine, directory, before)
