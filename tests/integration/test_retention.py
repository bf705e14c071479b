"""Retention policies, legal holds and pruning on real PostgreSQL and SQLite."""

from __future__ import annotations

import datetime as dt
import itertools
import random
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recorder import retention
from recorder.adapter import RecordResult
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.retention import PruneProgress, RetentionError, RetentionPolicy
from recorder.schema import (
    change_log,
    envelopes,
    legal_holds,
    prune_runs,
    pruned_envelopes,
    retention_policies,
)

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)
_seq = itertools.count()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def envelope(
    *,
    channel: str = "C1",
    user: str = "U1",
    team: str = "T1",
    event_type: str = "message",
    retry_attempt: int = 0,
) -> dict[str, Any]:
    n = next(_seq)
    return {
        "envelope_id": f"env-{n}-{uuid.uuid4().hex[:8]}",
        "type": "events_api",
        "accepts_response_payload": False,
        "retry_attempt": retry_attempt,
        "retry_reason": "timeout" if retry_attempt else "",
        "payload": {
            "team_id": team,
            "api_app_id": "A1",
            "event_id": f"Ev{n:08d}",
            "event": {"type": event_type, "channel": channel, "user": user, "text": f"m{n}"},
        },
    }


def store(engine: Engine, received_at: dt.datetime, **fields: Any) -> str:
    """Record one envelope as if received at ``received_at``; return its id."""
    data = envelope(**fields)
    buffer = SQLEventBuffer(engine, clock=lambda: received_at)
    assert buffer.record(data["envelope_id"], data) is RecordResult.NEW
    return str(data["envelope_id"])


def stored_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(envelopes.c.envelope_id)).scalars())


def rows(engine: Engine, table: sa.Table) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(table)).all())


def test_highest_priority_decides_and_ties_go_to_the_first_name(engine: Engine) -> None:
    retention.set_policy(engine, "default", keep="90d", now=NOW)
    retention.set_policy(engine, "c1-short", keep="1d", channel_id="C1", priority=10, now=NOW)
    retention.set_policy(engine, "c1-long", keep="365d", channel_id="C1", priority=5, now=NOW)
    # Equal priority: "a-keep" sorts before "b-drop", so a-keep decides for U9.
    retention.set_policy(engine, "b-drop", keep="1h", user_id="U9", priority=20, now=NOW)
    retention.set_policy(engine, "a-keep", keep="30d", user_id="U9", priority=20, now=NOW)

    c1_recent = store(engine, NOW - 5 * DAY, channel="C1")
    c2_recent = store(engine, NOW - 5 * DAY, channel="C2")
    c2_old = store(engine, NOW - 100 * DAY, channel="C2")
    u9_recent = store(engine, NOW - 5 * DAY, channel="C2", user="U9")
    u9_old = store(engine, NOW - 40 * DAY, channel="C1", user="U9")

    report = retention.prune(engine, now=NOW, actor="tester")

    assert report.status == "completed"
    assert stored_ids(engine) == {c2_recent, u9_recent}
    assert report.deleted == {"a-keep": 1, "b-drop": 0, "c1-short": 1, "c1-long": 0, "default": 1}
    policies = retention.list_policies(engine)
    assert [p.name for p in policies] == ["a-keep", "b-drop", "c1-short", "c1-long", "default"]
    # The pure model agrees with what the database did.
    for user, channel, expect in [("U1", "C1", "c1-short"), ("U9", "C1", "a-keep")]:
        decided = retention.deciding_policy(policies, {"user_id": user, "channel_id": channel})
        assert decided is not None
        assert decided.name == expect
    assert {r.envelope_id for r in rows(engine, pruned_envelopes)} == {c1_recent, c2_old, u9_old}


def test_records_no_policy_matches_are_kept(engine: Engine) -> None:
    retention.set_policy(engine, "c1", keep="1d", channel_id="C1", now=NOW)
    old_c2 = store(engine, NOW - 1000 * DAY, channel="C2")
    old_c1 = store(engine, NOW - 2 * DAY, channel="C1")
    report = retention.prune(engine, now=NOW)
    assert stored_ids(engine) == {old_c2}
    assert report.deleted == {"c1": 1}
    assert old_c1 not in stored_ids(engine)
    assert retention.deciding_policy(retention.list_policies(engine), {"channel_id": "C2"}) is None


def test_no_policy_at_all_prunes_nothing(engine: Engine) -> None:
    kept = store(engine, NOW - 5000 * DAY)
    report = retention.prune(engine, now=NOW)
    assert report.deleted_total == 0
    assert stored_ids(engine) == {kept}


def test_hold_blocks_pruning_and_release_re_enables_it(engine: Engine) -> None:
    retention.set_policy(engine, "all", keep="30d", now=NOW)
    held_c1 = store(engine, NOW - 60 * DAY, channel="C1")
    free_c2 = store(engine, NOW - 60 * DAY, channel="C2")
    # A window hold: covers U7 only between days -90 and -50.
    in_window = store(engine, NOW - 60 * DAY, channel="C3", user="U7")
    before_window = store(engine, NOW - 95 * DAY, channel="C3", user="U7")
    retention.add_hold(engine, "case-1", reason="litigation", channel_id="C1", actor="legal")
    retention.add_hold(
        engine,
        "case-2",
        reason="inquiry",
        user_id="U7",
        since=NOW - 90 * DAY,
        until=NOW - 50 * DAY,
        actor="legal",
    )

    first = retention.prune(engine, now=NOW)
    assert stored_ids(engine) == {held_c1, in_window}
    assert first.held == 2
    assert first.deleted_total == 2
    assert {free_c2, before_window}.isdisjoint(stored_ids(engine))

    released = retention.release_hold(engine, "case-1", actor="legal")
    assert released.released_at is not None
    second = retention.prune(engine, now=NOW)
    assert stored_ids(engine) == {in_window}
    assert second.deleted == {"all": 1}
    assert second.held == 1

    holds = {h.name: h for h in retention.list_holds(engine)}
    assert holds["case-1"].released_by == "legal"
    assert holds["case-1"].released_at is not None
    assert holds["case-2"].in_force
    assert [h.name for h in retention.list_holds(engine, include_released=False)] == ["case-2"]
    with pytest.raises(RetentionError, match="already released"):
        retention.release_hold(engine, "case-1")
    with pytest.raises(RetentionError, match="already exists"):
        retention.add_hold(engine, "case-1", reason="again")


def test_hold_with_no_fields_holds_everything(engine: Engine) -> None:
    retention.set_policy(engine, "all", keep="1d", now=NOW)
    ids = {store(engine, NOW - 10 * DAY) for _ in range(3)}
    retention.add_hold(engine, "everything", reason="preserve all")
    report = retention.prune(engine, now=NOW)
    assert report.held == 3
    assert stored_ids(engine) == ids


def test_dry_run_deletes_nothing_and_reports(engine: Engine) -> None:
    retention.set_policy(engine, "all", keep="7d", now=NOW)
    retention.set_policy(engine, "dm", keep="1d", channel_id="D1", priority=1, now=NOW)
    old = {store(engine, NOW - 10 * DAY) for _ in range(4)}
    dm = store(engine, NOW - 2 * DAY, channel="D1")
    held = store(engine, NOW - 10 * DAY, channel="C9")
    retention.add_hold(engine, "c9", reason="r", channel_id="C9")
    before = stored_ids(engine)

    report = retention.prune(engine, dry_run=True, now=NOW)

    assert stored_ids(engine) == before == old | {dm, held}
    assert report.dry_run
    assert report.deleted == {"dm": 1, "all": 4}
    assert report.held == 1
    assert report.cutoffs == {"dm": NOW - DAY, "all": NOW - 7 * DAY}
    assert "would delete 5" in report.summary()
    (run,) = retention.read_prune_log(engine)
    assert run.dry_run is True
    assert run.status == "completed"
    assert run.deleted_total == 5
    assert run.deleted_per_policy == {"dm": 1, "all": 4}
    assert rows(engine, pruned_envelopes) == []


def test_pruned_envelopes_and_prune_log_are_written(engine: Engine) -> None:
    retention.set_policy(engine, "all", keep="1d", now=NOW)
    old = {store(engine, NOW - 3 * DAY, channel=f"C{i}") for i in range(7)}
    recent = store(engine, NOW - dt.timedelta(hours=1))
    with engine.connect() as conn:
        digests = dict(
            conn.execute(
                sa.select(envelopes.c.envelope_id, envelopes.c.envelope_sha256).where(
                    envelopes.c.envelope_id.in_(old)
                )
            ).all()
        )
    progress: list[PruneProgress] = []

    report = retention.prune(
        engine, batch_size=3, now=NOW, actor="ops", on_progress=progress.append
    )

    assert stored_ids(engine) == {recent}
    assert [p.deleted for p in progress] == [3, 6, 7]
    assert {p.expected for p in progress} == {7}
    logged = rows(engine, pruned_envelopes)
    assert {r.envelope_id: r.envelope_sha256 for r in logged} == digests
    assert {r.prune_run_id for r in logged} == {report.run_id}
    assert {r.policy_name for r in logged} == {"all"}
    assert all(r.received_at == NOW - 3 * DAY for r in logged)
    (run,) = rows(engine, prune_runs)
    assert run.status == "completed"
    assert run.dry_run is False
    assert run.deleted_total == 7
    assert run.deleted_per_policy == {"all": 7}
    assert run.cutoffs == {"all": (NOW - DAY).isoformat()}
    assert run.held_count == 0
    assert run.skipped_count == 0
    assert run.actor == "ops"
    assert run.host
    assert run.finished_at is not None
    assert run.error is None


def test_change_log_records_every_policy_and_hold_change(engine: Engine) -> None:
    retention.set_policy(engine, "p", keep="90d", actor="alice", now=NOW)
    retention.set_policy(engine, "p", keep="12h", team_id="T1", priority=3, actor="bob", now=NOW)
    retention.remove_policy(engine, "p", actor="carol")
    retention.add_hold(engine, "h", reason="case", user_id="U1", actor="dave")
    retention.release_hold(engine, "h", actor="erin")
    with pytest.raises(RetentionError, match="no retention policy"):
        retention.remove_policy(engine, "p")

    entries = retention.read_change_log(engine)
    assert [(e.actor, e.action, e.object_kind, e.object_name) for e in entries] == [
        ("alice", "create", "retention_policy", "p"),
        ("bob", "update", "retention_policy", "p"),
        ("carol", "remove", "retention_policy", "p"),
        ("dave", "add", "legal_hold", "h"),
        ("erin", "release", "legal_hold", "h"),
    ]
    assert entries[1].details == {
        "before": {"name": "p", "keep_seconds": 90 * 86400, "priority": 0},
        "after": {"name": "p", "keep_seconds": 12 * 3600, "team_id": "T1", "priority": 3},
    }
    assert retention.list_policies(engine) == []
    assert len(rows(engine, change_log)) == 5
    (hold,) = rows(engine, legal_holds)
    assert hold.released_by == "erin"


def test_policy_update_keeps_creation_time(engine: Engine) -> None:
    first = retention.set_policy(engine, "p", keep="90", now=NOW)
    later = NOW + DAY
    retention.set_policy(engine, "p", keep="30m", now=later)
    (policy,) = retention.list_policies(engine)
    assert policy == RetentionPolicy(
        name="p", keep=dt.timedelta(minutes=30), created_at=first.created_at, updated_at=later
    )
    assert first.keep == 90 * DAY


def test_two_concurrent_runs_one_prunes_the_other_exits_cleanly(database_url: str) -> None:
    first_engine = create_engine(database_url)
    second_engine = create_engine(database_url)
    try:
        retention.set_policy(first_engine, "all", keep="1d", now=NOW)
        old = {store(first_engine, NOW - 2 * DAY) for _ in range(6)}
        in_first_batch = threading.Event()
        second_done = threading.Event()
        results: dict[str, retention.PruneReport] = {}

        def pause(_: PruneProgress) -> None:
            in_first_batch.set()
            assert second_done.wait(30)

        def run_first() -> None:
            results["first"] = retention.prune(
                first_engine, batch_size=2, now=NOW, on_progress=pause
            )

        thread = threading.Thread(target=run_first)
        thread.start()
        assert in_first_batch.wait(30)
        results["second"] = retention.prune(second_engine, now=NOW)
        second_done.set()
        thread.join(30)

        assert results["second"].locked_out
        assert results["second"].deleted_total == 0
        assert results["first"].status == "completed"
        assert results["first"].deleted_total == len(old)
        assert stored_ids(first_engine) == set()
        log = retention.read_prune_log(first_engine)
        assert sorted(r.status for r in log) == ["completed", "locked_out"]
        # The lock is free again afterwards.
        assert retention.prune(second_engine, now=NOW).status == "completed"
    finally:
        first_engine.dispose()
        second_engine.dispose()


def test_pruning_while_recording_never_deletes_an_unexpired_record(engine: Engine) -> None:
    retention.set_policy(engine, "all", keep="1h")
    long_ago = dt.datetime.now(dt.timezone.utc) - 2 * DAY
    old = {store(engine, long_ago - i * dt.timedelta(seconds=1)) for i in range(300)}
    buffer = SQLEventBuffer(engine)
    written: list[str] = []
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            data = envelope()
            assert buffer.record(data["envelope_id"], data) is RecordResult.NEW
            written.append(data["envelope_id"])

    writer = threading.Thread(target=write)
    writer.start()
    try:
        report = retention.prune(engine, batch_size=25)
    finally:
        stop.set()
        writer.join(30)

    assert report.deleted_total == len(old)
    assert len(written) > 0
    assert stored_ids(engine) == set(written)
    assert {r.envelope_id for r in rows(engine, pruned_envelopes)} == old


def test_failed_run_is_logged_and_a_rerun_continues(engine: Engine) -> None:
    retention.set_policy(engine, "all", keep="1d", now=NOW)
    old = {store(engine, NOW - 2 * DAY) for _ in range(5)}

    def explode(progress: PruneProgress) -> None:
        raise RuntimeError("scheduler killed")

    with pytest.raises(RuntimeError, match="scheduler killed"):
        retention.prune(engine, batch_size=2, now=NOW, on_progress=explode)
    assert len(stored_ids(engine)) == 3  # the first batch committed
    rerun = retention.prune(engine, batch_size=2, now=NOW)
    assert rerun.deleted_total == 3
    assert stored_ids(engine) == set()
    failed, completed = retention.read_prune_log(engine)
    assert failed.status == "failed"
    assert failed.error == "RuntimeError: scheduler killed"
    assert failed.finished_at is not None
    assert completed.status == "completed"
    assert {r.envelope_id for r in rows(engine, pruned_envelopes)} == old


def test_time_budget_stops_and_reports_skipped(engine: Engine) -> None:
    retention.set_policy(engine, "all", keep="1d", now=NOW)
    for _ in range(4):
        store(engine, NOW - 2 * DAY)
    report = retention.prune(engine, now=NOW, max_seconds=1e-9)
    assert report.status == "stopped"
    assert report.skipped == 4
    assert report.deleted_total == 0
    assert "run again" in report.summary()
    assert len(stored_ids(engine)) == 4


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"batch_size": 0}, "batch size"),
        ({"batch_size": 10**9}, "batch size"),
        ({"max_seconds": 0}, "max seconds"),
    ],
)
def test_bad_prune_arguments_are_refused(engine: Engine, bad: dict[str, Any], message: str) -> None:
    with pytest.raises(RetentionError, match=message):
        retention.prune(engine, **bad)
    assert rows(engine, prune_runs) == []


def test_bad_policy_and_hold_values_are_refused(engine: Engine) -> None:
    with pytest.raises(RetentionError, match="retention period"):
        retention.set_policy(engine, "p", keep="ten days")
    with pytest.raises(RetentionError, match="name"):
        retention.set_policy(engine, " ", keep="1d")
    with pytest.raises(RetentionError, match="reason"):
        retention.add_hold(engine, "h", reason="")
    with pytest.raises(RetentionError, match="since must be before until"):
        retention.add_hold(engine, "h", reason="r", since=NOW, until=NOW - DAY)
    with pytest.raises(RetentionError, match="no legal hold"):
        retention.release_hold(engine, "nope")
    assert rows(engine, change_log) == []


def test_prune_agrees_with_the_pure_model_on_random_policies_and_holds(engine: Engine) -> None:
    """Seeded random rounds: what the database deletes is exactly what deciding_policy says."""
    rnd = random.Random(20261128)
    values = {
        "channel_id": ["C1", "C2", None],
        "user_id": ["U1", "U2", None],
        "team_id": ["T1", None],
    }
    deleted = held = 0
    for round_no in range(8):
        with engine.begin() as conn:
            for table in (envelopes, retention_policies, legal_holds):
                conn.execute(sa.delete(table))
        for i in range(rnd.randrange(1, 5)):
            retention.set_policy(
                engine,
                f"p{rnd.randrange(3)}{i}",
                keep=dt.timedelta(days=rnd.choice([1, 10, 30])),
                priority=rnd.choice([0, 1, 1, 2]),
                now=NOW,
                **{k: rnd.choice(v) for k, v in values.items()},
                event_type=rnd.choice(["message", "app_mention", None]),
            )
        for i in range(rnd.randrange(0, 3)):
            # the same draws in the same order as before: since, then each matched column
            since = rnd.choice([None, NOW - 25 * DAY])
            match = {k: rnd.choice(v) for k, v in values.items()}
            retention.add_hold(
                engine,
                f"h{round_no}-{i}",
                reason="r",
                since=since,
                team_id=match["team_id"],
                channel_id=match["channel_id"],
                user_id=match["user_id"],
            )
        columns: dict[str, tuple[dict[str, Any], dt.datetime]] = {}
        for _ in range(40):
            fields = {
                "channel": rnd.choice(["C1", "C2", "C3"]),
                "user": rnd.choice(["U1", "U2", "U3"]),
                "team": rnd.choice(["T1", "T2"]),
                "event_type": rnd.choice(["message", "app_mention"]),
            }
            at = NOW - dt.timedelta(days=rnd.choice([0.5, 5, 20, 40]))
            envelope_id = store(engine, at, **fields)
            columns[envelope_id] = (
                {
                    "channel_id": fields["channel"],
                    "user_id": fields["user"],
                    "team_id": fields["team"],
                    "envelope_type": "events_api",
                    "event_type": fields["event_type"],
                },
                at,
            )
        policies = retention.list_policies(engine)
        holds = retention.list_holds(engine)

        expected = {
            i for i, (cols, at) in columns.items() if not _model_prunes(policies, holds, cols, at)
        }
        report = retention.prune(engine, batch_size=7, now=NOW)
        assert stored_ids(engine) == expected, f"round {round_no}"
        deleted += report.deleted_total
        held += report.held
    assert deleted > 20
    assert held > 2


def _model_prunes(
    policies: list[RetentionPolicy],
    holds: list[retention.LegalHold],
    columns: dict[str, Any],
    at: dt.datetime,
) -> bool:
    policy = retention.deciding_policy(policies, columns)
    if policy is None or at >= NOW - policy.keep:
        return False
    return not any(h.covers(columns, at) for h in holds)
