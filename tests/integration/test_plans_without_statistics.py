"""Seal and prune read envelopes in key order through the index, whatever the planner knows.

Right after a bulk import, before autovacuum has analyzed ``envelopes``, the
planner has no statistics for the table. Left to itself it then picked, for
every seal block and every prune batch, a scan of all the candidate rows
and a sort of them all, so both slowed with the square of the table's size
(``BENCHMARKS.md``, "Before the table is analyzed"). Each test loads a
table without statistics and reads the plans the code actually runs.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from recorder import policies
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.envelope import parse_envelope
from recorder.prune import prune
from recorder.seal import seal
from recorder.verify import verify

UTC = dt.timezone.utc
ROWS = 3000
BLOCK = 500
# Enough rows that looking a batch up by id through the primary key beats a
# scan of the table, as it does at scale (20,000 rows of about 1 KB, batches of 1,000).
PRUNE_ROWS = 20_000
PRUNE_BATCH = 1000


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


def load_unanalyzed(engine: Engine, rows: int = ROWS) -> None:
    """``rows`` envelopes of about 1 KB, in a table the planner has no statistics for."""
    with engine.begin() as conn:
        # No autovacuum run may analyze the table behind the test's back.
        conn.execute(sa.text("ALTER TABLE envelopes SET (autovacuum_enabled = false)"))
    start = dt.datetime(2026, 1, 1, tzinfo=UTC)
    ticks = [0]

    def clock() -> dt.datetime:
        ticks[0] += 1
        return start + dt.timedelta(milliseconds=ticks[0])

    buffer = SQLEventBuffer(engine, clock=clock)
    for first in range(0, rows, 1000):
        buffer.record_many(
            [
                parse_envelope(
                    f"plan-{n:05d}",
                    {
                        "envelope_id": f"plan-{n:05d}",
                        "type": "events_api",
                        "payload": {
                            "team_id": "T1",
                            "event_id": f"Ev{n:05d}",
                            "event": {"type": "message", "channel": "C1", "text": "x" * 900},
                        },
                    },
                    redaction=buffer.redaction,
                )
                for n in range(first, first + 1000)
            ]
        )
    with engine.connect() as conn:
        analyzed = conn.execute(
            sa.text("SELECT count(*) FROM pg_stats WHERE tablename = 'envelopes'")
        ).scalar_one()
    assert analyzed == 0


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def envelope_reads(plan: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(node type, index) of every node of the plan that reads ``envelopes``."""
    return [
        (node["Node Type"], node.get("Index Name"))
        for node in plan_nodes(plan)
        if node.get("Relation Name") == "envelopes"
    ]


def test_each_seal_block_reads_envelopes_through_the_index(engine: Engine) -> None:
    load_unanalyzed(engine)
    plans: dict[str, list[dict[str, Any]]] = {"probe": [], "block": []}

    @event.listens_for(engine, "before_cursor_execute")
    def explain_block(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        # EXPLAIN in the block's own transaction, with the settings seal made there.
        if "WITH picked AS MATERIALIZED" in statement:
            kind = "block"
        elif statement.startswith("SELECT 1 FROM envelopes"):
            kind = "probe"  # is there anything to seal?
        else:
            return
        cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
        plans[kind].append(cursor.fetchone()[0][0]["Plan"])

    report = seal(engine, block_size=BLOCK, margin=dt.timedelta(0))

    assert report.sealed == ROWS
    assert len(plans["block"]) == ROWS // BLOCK
    assert len(plans["probe"]) == ROWS // BLOCK + 1  # and the one that finds nothing left
    for plan in plans["block"]:
        assert envelope_reads(plan) == [("Index Scan", "ix_envelopes_received_at")]
    for plan in plans["probe"]:
        [(node, index)] = envelope_reads(plan)
        assert node in ("Index Scan", "Index Only Scan")
        assert index == "ix_envelopes_received_at"
    assert verify(engine).ok


def test_each_prune_batch_is_listed_and_removed_through_an_index(
    pg_url: str, engine: Engine
) -> None:
    load_unanalyzed(engine, PRUNE_ROWS)
    policies.set_policy(engine, "day", keep="1d")
    # auto_explain sends the plan of every statement the prune functions run
    # to the client, as a notice.
    with engine.begin() as conn:
        database = conn.execute(sa.text("SELECT current_database()")).scalar_one()
        for setting, value in (
            ("session_preload_libraries", "auto_explain"),
            ("auto_explain.log_min_duration", "0"),
            ("auto_explain.log_nested_statements", "on"),
            ("auto_explain.log_level", "notice"),
            ("auto_explain.log_format", "json"),
        ):
            conn.execute(sa.text(f"ALTER DATABASE \"{database}\" SET {setting} = '{value}'"))
    engine.dispose()
    explained = create_engine(pg_url)
    notices: list[str] = []

    @event.listens_for(explained, "connect")
    def collect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.add_notice_handler(lambda notice: notices.append(notice.message_primary))

    try:
        report = prune(explained, batch_size=PRUNE_BATCH)
    finally:
        explained.dispose()

    assert report.deleted_total == PRUNE_ROWS
    plans = [json.loads(text.split("plan:", 1)[1]) for text in notices if "plan:" in text]
    listing = [
        plan for plan in plans if "ORDER BY e.received_at, e.envelope_id" in plan["Query Text"]
    ]
    assert len(listing) == PRUNE_ROWS // PRUNE_BATCH + 1  # and the one that finds nothing left
    for plan in listing:
        assert envelope_reads(plan["Plan"]) == [("Index Scan", "ix_envelopes_received_at")]
    # Each batch is then found again by id (``e``, locked before the delete),
    # through the primary key.
    removals = [plan for plan in plans if plan["Query Text"].startswith("WITH batch AS")]
    assert len(removals) == PRUNE_ROWS // PRUNE_BATCH
    for plan in removals:
        lookups = [
            (node["Node Type"], node.get("Index Name"))
            for node in plan_nodes(plan["Plan"])
            if node.get("Relation Name") == "envelopes" and node.get("Alias") == "e"
        ]
        assert lookups == [("Index Scan", "pk_envelopes")]
