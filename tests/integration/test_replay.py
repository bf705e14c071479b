"""``recorder.replay``: handlers run again over stored envelopes, logged, resumable, read-only."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

import recorder
from recorder.adapter import RecordResult
from recorder.adapters.sql import SQLEventBuffer
from recorder.audit import QuerySpec
from recorder.schema import envelopes, replay_runs, replayed_envelopes

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 2, 1, 12, tzinfo=UTC)


def slash(n: int, command: str = "/deploy") -> dict[str, Any]:
    return {
        "envelope_id": f"r-{n:03d}",
        "type": "slash_commands",
        "payload": {"command": command, "text": f"service {n}", "channel_id": "C1"},
    }


def seed(url: str, count: int = 8) -> SQLEventBuffer:
    now = [T0]
    buffer = SQLEventBuffer(url, clock=lambda: now[0])
    # Recorded newest first, so "oldest first" is not insertion order.
    for n in range(count):
        now[0] = T0 + dt.timedelta(minutes=10 * (count - n))
        buffer.record(f"r-{n:03d}", slash(n, "/deploy" if n % 2 == 0 else "/status"))
    return buffer


def stored_state(buffer: SQLEventBuffer) -> list[tuple[Any, ...]]:
    with buffer.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(envelopes).order_by("envelope_id"))]


def log(buffer: SQLEventBuffer) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with buffer.engine.connect() as conn:
        runs = conn.execute(
            sa.select(replay_runs.c.id, replay_runs.c.status, replay_runs.c.handler)
        ).all()
        each = conn.execute(
            sa.select(
                replayed_envelopes.c.run_id,
                replayed_envelopes.c.envelope_id,
                replayed_envelopes.c.error,
            ).order_by(replayed_envelopes.c.replayed_at)
        ).all()
    return [tuple(r) for r in runs], [tuple(r) for r in each]


def test_replay_calls_the_handler_oldest_first_and_changes_nothing(database_url: str) -> None:
    buffer = seed(database_url)
    buffer.complete("r-002")
    before = stored_state(buffer)
    seen: list[dict[str, Any]] = []

    def handler(envelope: dict[str, Any]) -> None:
        seen.append(envelope)
        envelope["payload"]["text"] = "mutated by the handler"  # must not reach storage

    report = recorder.replay(
        buffer.engine, handler, QuerySpec(event_type="/deploy"), handler_name="t:h"
    )
    assert [e["envelope_id"] for e in seen] == ["r-006", "r-004", "r-002", "r-000"]
    assert seen[-1] == {
        **slash(0),
        "payload": {**slash(0)["payload"], "text": "mutated by the handler"},
    }
    assert report.replayed == 4
    assert not report.failed
    assert report.summary() == f"replay run #{report.run_id}: replayed 4 envelopes"
    assert stored_state(buffer) == before
    # Live dedupe is untouched: a redelivery of a replayed envelope is still a duplicate.
    assert buffer.record("r-000", slash(0)) is RecordResult.DUPLICATE
    assert buffer.count_pending() == 7
    runs, each = log(buffer)
    assert runs == [(report.run_id, "completed", "t:h")]
    assert [e[1] for e in each] == ["r-006", "r-004", "r-002", "r-000"]
    buffer.close()


def test_failures_are_logged_and_the_replay_goes_on(database_url: str) -> None:
    buffer = seed(database_url, 4)

    def handler(envelope: dict[str, Any]) -> None:
        if envelope["envelope_id"] == "r-002":
            raise ValueError("downstream said no")

    report = recorder.replay(buffer.engine, handler, handler_name="t:flaky")
    assert report.replayed == 4
    assert report.failed == [("r-002", "ValueError: downstream said no")]
    assert report.summary().endswith("replayed 4 envelopes, 1 failure")
    _, each = log(buffer)
    assert {e[1]: e[2] for e in each}["r-002"] == "ValueError: downstream said no"
    buffer.close()


class Interrupted(BaseException):
    """Stands in for Ctrl-C (or a kill) in the middle of a run."""


def test_an_interrupted_run_is_resumed_without_replaying_twice(database_url: str) -> None:
    buffer = seed(database_url, 8)
    calls: list[str] = []

    def crashes_on_fourth(envelope: dict[str, Any]) -> None:
        if len(calls) == 3:
            raise Interrupted
        calls.append(envelope["envelope_id"])

    with pytest.raises(Interrupted):
        recorder.replay(buffer.engine, crashes_on_fourth, handler_name="t:h", actor="ops")
    runs, each = log(buffer)
    assert runs[0][1] == "interrupted"
    assert len(each) == 3

    # Other filters are another run, and do not resume this one.
    other = recorder.replay(
        buffer.engine, lambda e: None, QuerySpec(event_type="/status"), handler_name="t:h"
    )
    assert not other.resumed

    preview = recorder.replay(buffer.engine, calls.append, handler_name="t:h", dry_run=True)
    assert (preview.resumed, preview.skipped, len(preview.would_replay)) == (True, 3, 5)
    assert len(calls) == 3, "a dry run calls nothing"

    resumed = recorder.replay(
        buffer.engine, lambda e: calls.append(e["envelope_id"]), handler_name="t:h"
    )
    assert (resumed.resumed, resumed.skipped, resumed.replayed) == (True, 3, 5)
    assert resumed.run_id == runs[0][0]
    assert calls == [f"r-{n:03d}" for n in range(7, -1, -1)], "each envelope exactly once, in order"
    runs, each = log(buffer)
    assert dict((r[0], r[1]) for r in runs)[resumed.run_id] == "completed"
    # Completed: the next replay is a new run over everything.
    again = recorder.replay(buffer.engine, lambda e: None, handler_name="t:h")
    assert (again.resumed, again.replayed) == (False, 8)
    buffer.close()


def test_limit_counts_over_the_whole_resumed_run(database_url: str) -> None:
    buffer = seed(database_url, 8)
    calls: list[str] = []

    def once_then_stop(envelope: dict[str, Any]) -> None:
        if calls:
            raise Interrupted
        calls.append(envelope["envelope_id"])

    with pytest.raises(Interrupted):
        recorder.replay(buffer.engine, once_then_stop, QuerySpec(limit=3), handler_name="t:l")
    resumed = recorder.replay(
        buffer.engine,
        lambda e: calls.append(e["envelope_id"]),
        QuerySpec(limit=3),
        handler_name="t:l",
    )
    assert resumed.replayed == 2
    assert calls == ["r-007", "r-006", "r-005"]
    buffer.close()
