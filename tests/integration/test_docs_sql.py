"""The SQL in docs/reporting.md runs as written on PostgreSQL and answers its question."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import recorder
from recorder import retention
from recorder.adapters.sql import SQLEventBuffer
from recorder.audit import QuerySpec
from recorder.engine import create_engine
from tests.integration.conftest import ConnectAs

DOCS = Path(__file__).resolve().parents[2] / "docs"
UTC = dt.timezone.utc


def clock_at(at: dt.datetime) -> Callable[[], dt.datetime]:
    """A buffer clock stuck at ``at`` (bound now, not to the loop variable)."""
    return lambda: at


def sql_blocks(name: str) -> list[str]:
    text = (DOCS / name).read_text(encoding="utf-8")
    return re.findall(r"```sql\n(.*?)```", text, flags=re.DOTALL)


def message(
    envelope_id: str, n: int, *, channel: str, user: str, team: str = "T1", retry: int = 0
) -> dict[str, Any]:
    return {
        "envelope_id": envelope_id,
        "type": "events_api",
        "retry_attempt": retry,
        "retry_reason": "timeout" if retry else None,
        "payload": {
            "team_id": team,
            "event_id": f"Ev{n:06d}",
            "event": {"type": "message", "channel": channel, "user": user, "text": f"said {n}"},
        },
    }


def seed(url: str) -> None:
    engine = create_engine(url)
    try:
        rows = [
            ("E1", dt.datetime(2026, 5, 3, 9, tzinfo=UTC), "C0123ABCD", "U0456EFGH", "T1", 0),
            ("E2", dt.datetime(2026, 5, 3, 10, tzinfo=UTC), "C0123ABCD", "U0999", "T1", 0),
            ("E3", dt.datetime(2026, 5, 4, 11, tzinfo=UTC), "C0777", "U0456EFGH", "T1", 1),
            ("E4", dt.datetime(2026, 5, 10, 12, tzinfo=UTC), "C0123ABCD", "U0456EFGH", "T1", 0),
            ("E0PRUNED01", dt.datetime(2026, 1, 1, tzinfo=UTC), "C0OLD", "U0OLD", "T0OLD", 0),
        ]
        for n, (envelope_id, at, channel, user, team, retry) in enumerate(rows):
            buffer = SQLEventBuffer(engine, clock=clock_at(at))
            buffer.record(
                envelope_id,
                message(envelope_id, n, channel=channel, user=user, team=team, retry=retry),
            )
        retention.set_policy(engine, "old-team", keep="30d", team_id="T0OLD", actor="ops")
        retention.add_hold(
            engine, "case-1", reason="inquiry", channel_id="C0123ABCD", actor="legal"
        )
        assert retention.prune(engine).deleted_total == 1
        # one replay run, so the replay-log query has a row to show
        recorder.replay(engine, lambda envelope: None, QuerySpec(), handler_name="docs:noop")
    finally:
        engine.dispose()


def test_every_reporting_query_runs_and_answers(pg_url: str) -> None:
    seed(pg_url)
    blocks = sql_blocks("reporting.md")
    assert len(blocks) >= 10
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            results = [conn.execute(sa.text(block)).mappings().all() for block in blocks]
    finally:
        engine.dispose()
    for block, rows in zip(blocks, results, strict=True):
        title = block.splitlines()[0]
        if "no rows" in title:
            assert rows == [], title
        else:
            assert rows, title
    said = results[0]
    assert [(r["user_id"], r["text"]) for r in said] == [
        ("U0456EFGH", "said 0"),
        ("U0999", "said 1"),
    ]
    retries = results[3]
    assert [(r["day"], r["retry_reason"], r["retries"]) for r in retries] == [
        (dt.date(2026, 5, 4), "timeout", 1)
    ]


@pytest.mark.parametrize("name", ["reporting.md"])
def test_docs_name_only_real_columns(name: str) -> None:
    from recorder.schema import metadata

    columns = {c.name for table in metadata.tables.values() for c in table.columns}
    text = (DOCS / name).read_text(encoding="utf-8")
    for column in re.findall(r"^\| `([a-z_]+)`", text, flags=re.MULTILINE):
        assert column in columns


def test_the_pg_cron_procedure_prunes_like_recorder_prune(
    pg_url: str, owner: Engine, roles: dict[str, str], connect_as: ConnectAs
) -> None:
    (procedure,) = [b for b in sql_blocks("retention.md") if "CREATE OR REPLACE PROCEDURE" in b]
    now = dt.datetime.now(UTC)
    day = dt.timedelta(days=1)
    engine = create_engine(pg_url)
    # Scheduled as the pruner: it needs nothing but the prune functions.
    pruner = connect_as(roles["pruner"])
    try:
        retention.set_policy(engine, "default", keep="90d")
        retention.set_policy(engine, "c1", keep="10d", channel_id="C1", priority=5)
        retention.set_policy(engine, "b-u9", keep="1d", user_id="U9", priority=9)
        retention.set_policy(engine, "a-u9", keep="50d", user_id="U9", priority=9)
        retention.add_hold(engine, "h", reason="r", channel_id="C7", since=now - 400 * day)
        ages = [1, 5, 20, 60, 100, 200]
        stored: dict[str, tuple[dict[str, Any], dt.datetime]] = {}
        n = 0
        for channel in ("C1", "C2", "C7"):
            for user in ("U1", "U9"):
                for age in ages:
                    n += 1
                    at = now - age * day - dt.timedelta(hours=1)
                    envelope_id = f"P{n:04d}"
                    buffer = SQLEventBuffer(engine, clock=clock_at(at))
                    buffer.record(
                        envelope_id, message(envelope_id, 1000 + n, channel=channel, user=user)
                    )
                    stored[envelope_id] = (
                        {
                            "channel_id": channel,
                            "user_id": user,
                            "team_id": "T1",
                            "envelope_type": "events_api",
                            "event_type": "message",
                        },
                        at,
                    )
        policies = retention.list_policies(engine)
        holds = retention.list_holds(engine)

        def goes(columns: dict[str, Any], at: dt.datetime) -> bool:
            policy = retention.deciding_policy(policies, columns)
            if policy is None or at >= now - policy.keep:
                return False
            return not any(h.covers(columns, at) for h in holds)

        expected_gone = {i for i, (cols, at) in stored.items() if goes(cols, at)}
        assert 0 < len(expected_gone) < len(stored)

        with engine.connect() as conn:
            conn.execute(sa.text(procedure))
            conn.commit()
        # A run that finds the lock taken logs itself and touches nothing.
        with engine.connect() as holder:
            holder.execute(sa.select(sa.func.pg_advisory_lock(retention.PRUNE_LOCK_KEY)))
            with pruner.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("CALL recorder_prune(4)"))
            holder.execute(sa.select(sa.func.pg_advisory_unlock(retention.PRUNE_LOCK_KEY)))
            holder.commit()
        with pruner.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("CALL recorder_prune(4)"))
        with engine.connect() as conn:
            remaining = set(conn.execute(sa.text("SELECT envelope_id FROM envelopes")).scalars())
            pruned = conn.execute(
                sa.text("SELECT envelope_id, policy_name FROM pruned_envelopes")
            ).all()
    finally:
        engine.dispose()
    assert remaining == set(stored) - expected_gone
    assert {r.envelope_id for r in pruned} == expected_gone
    for envelope_id, policy_name in pruned:
        decided = retention.deciding_policy(policies, stored[envelope_id][0])
        assert decided is not None
        assert decided.name == policy_name
    log_engine = create_engine(pg_url)
    locked, done = retention.read_prune_log(log_engine)
    log_engine.dispose()
    assert locked.status == "locked_out"
    assert done.status == "completed"
    assert done.deleted_total == len(expected_gone)
    assert done.host == "pg_cron"
    assert set(done.deleted_per_policy or {}) == {p.name for p in policies}
