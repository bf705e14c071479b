"""``recorder query --format archive`` and ``recorder import`` as users run them."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.schema import envelopes
from tests.acceptance.conftest import ok, run_text

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 11, 3, 14, 5, 9, 654321, tzinfo=UTC)


def envelope(n: int, **payload: Any) -> dict[str, Any]:
    return {
        "envelope_id": f"cli-{n:03d}",
        "type": "events_api",
        "payload": {
            "team_id": "T1",
            "event_id": f"Ev{n:03d}",
            "event": {"type": "message", "channel": "C1", "user": "U1", "text": f"é {n}"},
            **payload,
        },
    }


def rows(url: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            c = envelopes.c
            query = envelopes.select().with_only_columns(
                c.envelope_id, c.received_at, c.envelope_text, c.envelope_sha256, c.status
            )
            return [tuple(r) for r in conn.execute(query.order_by(c.envelope_id))]
    finally:
        engine.dispose()


def test_archive_from_postgresql_into_sqlite_and_back_keeps_everything(
    pg_url: str, pg_empty_url: str, tmp_path: Path
) -> None:
    times = iter(T0 + dt.timedelta(hours=5 * i, microseconds=i) for i in range(20))
    with SQLEventBuffer(pg_url, clock=lambda: next(times)) as buffer:
        for n in range(6):
            buffer.record(f"cli-{n:03d}", json.dumps(envelope(n), ensure_ascii=n % 2 == 0))
    original = rows(pg_url)

    archive = tmp_path / "archive.jsonl"
    archive.write_text(ok(pg_url, "query", "--format", "archive"), encoding="utf-8")
    first = json.loads(archive.read_text().splitlines()[0])
    assert list(first) == ["received_at", "envelope_id", "envelope_sha256", "envelope_text"]
    assert first["received_at"] == "2025-11-03T14:05:09.654321Z"

    sqlite_url = f"sqlite:///{tmp_path / 'copy.db'}"
    summary = ok(sqlite_url, "import", str(archive)).splitlines()
    assert summary[0] == "imported: 6 new, 0 duplicate, 0 rejected"
    assert "stored as handled" in summary[1]
    assert [r[:4] for r in rows(sqlite_url)] == [r[:4] for r in original]
    assert {r[4] for r in rows(sqlite_url)} == {"done"}

    again = tmp_path / "again.jsonl"
    again.write_text(ok(sqlite_url, "query", "--format", "archive"), encoding="utf-8")
    assert again.read_bytes() == archive.read_bytes()
    ok(pg_empty_url, "db", "upgrade")
    ok(pg_empty_url, "import", str(again))
    assert [r[:4] for r in rows(pg_empty_url)] == [r[:4] for r in original]


def test_a_tampered_archive_line_is_named_and_the_rest_imported(
    sqlite_url: str, tmp_path: Path
) -> None:
    with SQLEventBuffer(sqlite_url) as buffer:
        for n in range(3):
            buffer.record(f"cli-{n:03d}", envelope(n))
    lines = ok(sqlite_url, "query", "--format", "archive").splitlines()
    record = json.loads(lines[1])
    record["envelope_text"] = record["envelope_text"].replace("é 1", "é 9")
    lines[1] = json.dumps(record, ensure_ascii=False)
    path = tmp_path / "tampered.jsonl"
    path.write_text("\n".join([json.dumps(envelope(7)), *lines]) + "\n", encoding="utf-8")

    target = f"sqlite:///{tmp_path / 'target.db'}"
    result = run_text(target, "import", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["line 3: envelope_sha256 does not match envelope_text"]
    assert result.stdout.splitlines()[0] == "imported: 3 new, 0 duplicate, 1 rejected"
    assert [r[0] for r in rows(target)] == ["cli-000", "cli-002", "cli-007"]


def test_pending_and_event_time_options(tmp_path: Path) -> None:
    path = tmp_path / "backfill.jsonl"
    event_time = int(dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp())
    path.write_text(
        "\n".join(json.dumps(envelope(n, event_time=event_time + n)) for n in range(3)) + "\n"
    )
    url = f"sqlite:///{tmp_path / 'backfill.db'}"
    summary = ok(url, "import", "--pending", "--received-at", "event-time", str(path))
    assert "stored pending" in summary
    stored = rows(url)
    assert [r[1] for r in stored] == [
        dt.datetime(2024, 1, 2, 3, 4, 5 + n, tzinfo=UTC) for n in range(3)
    ]
    assert {r[4] for r in stored} == {"pending"}
    # The backfill is found by the event's day, as --since and retention see it.
    found = ok(url, "query", "--since", "2024-01-02", "--until", "2024-01-03", "--format", "jsonl")
    assert len(found.splitlines()) == 3

    bad = run_text(url, "import", "--received-at", "yesterday", str(path))
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: Invalid value for '--received-at': 'yesterday'")


def test_parallel_import_names_a_late_bad_line_and_keeps_the_first_copy(
    pg_url: str, tmp_path: Path
) -> None:
    lines = [json.dumps(envelope(n)) for n in range(400)]
    lines[3] = json.dumps(envelope(1, text="a later copy of line 2"))  # chunk 1, a duplicate
    lines[333] = '{"envelope_id": "cli-broken"'  # line 334, chunk 34 of 10 lines each
    lines[371] = json.dumps(envelope(2, text="another later copy"))  # chunk 38
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = run_text(pg_url, "import", "--jobs", "2", "--batch-size", "10", str(path))
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[0].startswith("line 334: envelope is not valid JSON")
    assert result.stdout.splitlines()[0] == "imported: 397 new, 2 duplicate, 1 rejected"
    stored = {r[0]: r[2] for r in rows(pg_url)}
    assert stored["cli-001"] == lines[1]
    assert stored["cli-002"] == lines[2]
    assert "cli-333" not in stored
    assert len(stored) == 397
