"""Six processes race to record the same envelopes: each is NEW exactly once in total.

Separate processes (spawned, so nothing is shared but the database) share one
PostgreSQL database or one SQLite file. The single ``INSERT ... ON CONFLICT
DO NOTHING`` must decide every race, on ``envelope_id`` and on ``event_id``
alike, and SQLite's ``BEGIN IMMEDIATE`` plus busy timeout must make writers
wait their turn instead of failing with "database is locked".
"""

from __future__ import annotations

import multiprocessing
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from recorder import RecordResult
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.schema import envelopes

PROCESSES = 6
IDS = 2000
# Retry scenario: each event arrives in this many envelopes (the original and
# Slack's retries, each with its own envelope_id and the same event_id).
EVENTS = 200
DELIVERIES = 3


def plain_envelopes() -> list[tuple[str, dict[str, Any]]]:
    """2,000 distinct envelopes of the three common kinds."""
    items: list[tuple[str, dict[str, Any]]] = []
    for i in range(IDS):
        envelope_id = f"race-{i:05d}"
        kind = i % 3
        if kind == 0:
            envelope: dict[str, Any] = {
                "envelope_id": envelope_id,
                "type": "events_api",
                "payload": {
                    "team_id": "T0001",
                    "event_id": f"Ev{i:05d}",
                    "event": {"type": "message", "channel": "C0001", "user": f"U{i % 7}"},
                },
                "retry_attempt": 0,
                "retry_reason": "",
            }
        elif kind == 1:
            envelope = {
                "envelope_id": envelope_id,
                "type": "slash_commands",
                "payload": {"team_id": "T0001", "command": "/race", "user_id": f"U{i % 7}"},
            }
        else:
            envelope = {
                "envelope_id": envelope_id,
                "type": "interactive",
                "payload": {"type": "block_actions", "user": {"id": f"U{i % 7}"}},
            }
        items.append((envelope_id, envelope))
    return items


def retried_envelopes() -> list[tuple[str, dict[str, Any]]]:
    """Each event delivered in several envelopes with the same event_id."""
    items: list[tuple[str, dict[str, Any]]] = []
    for event in range(EVENTS):
        for attempt in range(DELIVERIES):
            envelope_id = f"retry-{event:04d}-{attempt}"
            items.append(
                (
                    envelope_id,
                    {
                        "envelope_id": envelope_id,
                        "type": "events_api",
                        "payload": {
                            "team_id": "T0001",
                            "event_id": f"EvRetry{event:04d}",
                            "event": {"type": "reaction_added", "user": "U1"},
                        },
                        "retry_attempt": attempt,
                        "retry_reason": "timeout" if attempt else "",
                    },
                )
            )
    return items


def both_kinds() -> list[tuple[str, dict[str, Any]]]:
    return plain_envelopes() + retried_envelopes()


SCENARIOS = {"both": both_kinds}


@dataclass
class WorkerReport:
    seed: int
    new: list[str] = field(default_factory=list)
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)


def record_in_shuffled_order(
    url: str,
    scenario: str,
    seed: int,
    start: Any,
    results: Any,
) -> None:
    """Worker process body: record every envelope of ``scenario`` once, in its own order."""
    report = WorkerReport(seed)
    try:
        items = SCENARIOS[scenario]()
        random.Random(seed).shuffle(items)
        with SQLEventBuffer(url) as buffer:
            start.wait(timeout=120)
            for envelope_id, envelope in items:
                try:
                    result = buffer.record(envelope_id, envelope)
                except Exception as exc:
                    report.errors.append(f"{envelope_id}: {type(exc).__name__}: {exc}")
                    continue
                if result is RecordResult.NEW:
                    report.new.append(envelope_id)
                else:
                    report.duplicates += 1
    except BaseException as exc:
        report.errors.append(f"worker: {type(exc).__name__}: {exc}")
    results.put(report)


def race(url: str, scenario: str) -> list[WorkerReport]:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=record_in_shuffled_order,
            args=(url, scenario, seed, start, results),
            name=f"race-{seed}",
        )
        for seed in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    try:
        reports: list[WorkerReport] = [results.get(timeout=240) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert all(worker.exitcode == 0 for worker in workers)
    return reports


def rows(url: str) -> list[tuple[str, str | None]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [
                (row.envelope_id, row.event_id)
                for row in conn.execute(sa.select(envelopes.c.envelope_id, envelopes.c.event_id))
            ]
    finally:
        engine.dispose()


def assert_no_errors(reports: list[WorkerReport]) -> None:
    errors = [error for report in reports for error in report.errors]
    assert not [error for error in errors if "locked" in error.lower()], errors[:5]
    assert errors == []


@pytest.mark.slow
def test_every_id_and_every_event_is_new_exactly_once_across_processes(
    database_url: str,
) -> None:
    """One race over both kinds at once (spawning processes is the slow part):
    2,000 distinct envelopes, and events each delivered in several envelopes."""
    reports = race(database_url, "both")
    assert_no_errors(reports)
    new = Counter(envelope_id for report in reports for envelope_id in report.new)
    assert max(new.values()) == 1
    # Each process really raced: none of them won everything.
    assert all(len(report.new) < IDS for report in reports)

    # The 2,000 distinct ids: every one NEW exactly once, 2,000 rows.
    plain = {envelope_id for envelope_id, _ in plain_envelopes()}
    assert plain <= set(new)
    stored = rows(database_url)
    assert len([row for row in stored if row[0] in plain]) == IDS

    # Retries in new envelopes: exactly one NEW per event, whichever envelope won.
    event_of = {envelope_id: env["payload"]["event_id"] for envelope_id, env in retried_envelopes()}
    new_retried = [envelope_id for envelope_id in new if envelope_id in event_of]
    per_event = Counter(event_of[envelope_id] for envelope_id in new_retried)
    assert len(per_event) == EVENTS
    assert max(per_event.values()) == 1
    assert set(new) == plain | set(new_retried)

    total = (IDS + EVENTS * DELIVERIES) * PROCESSES
    assert sum(report.duplicates for report in reports) == total - IDS - EVENTS
    assert len(stored) == IDS + EVENTS
    # What was stored is exactly what some process was told was NEW.
    assert sorted(envelope_id for envelope_id, _ in stored) == sorted(new)
