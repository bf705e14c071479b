"""Shared by the archive tests: a database of old envelopes, and what the archive holds."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recorder.adapter import RecordResult
from recorder.adapters.sql import SQLEventBuffer
from recorder.schema import envelopes

UTC = dt.timezone.utc
#: Old enough for a 30-day policy whenever the tests run, spread over three months.
START = dt.datetime(2025, 1, 28, 9, 30, tzinfo=UTC)
_seq = itertools.count()


def clock_at(at: dt.datetime) -> Callable[[], dt.datetime]:
    """A buffer clock stuck at ``at`` (bound now, not to the loop variable)."""
    return lambda: at


def envelope(channel: str, user: str = "U1") -> dict[str, Any]:
    n = next(_seq)
    return {
        "envelope_id": f"env-{n:05d}-{uuid.uuid4().hex[:6]}",
        "type": "events_api",
        "accepts_response_payload": False,
        "retry_attempt": 0,
        "retry_reason": "",
        "payload": {
            "team_id": "T1",
            "api_app_id": "A1",
            "event_id": f"Ev{uuid.uuid4().hex[:12]}",
            "event": {"type": "message", "channel": channel, "user": user, "text": f"m{n} é ✓"},
        },
    }


def fill(engine: Engine, count: int, *, step: dt.timedelta = dt.timedelta(hours=13)) -> None:
    """``count`` envelopes from START on, every ``step``, in channels C1..C3."""
    for i in range(count):
        at = START + i * step
        data = envelope(f"C{i % 3 + 1}")
        buffer = SQLEventBuffer(engine, clock=clock_at(at))
        assert buffer.record(data["envelope_id"], data) is RecordResult.NEW


def live_rows(engine: Engine) -> dict[str, tuple[Any, ...]]:
    """envelope_id -> (received_at, envelope_sha256, envelope_text) of every live row."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                envelopes.c.envelope_id,
                envelopes.c.received_at,
                envelopes.c.envelope_sha256,
                envelopes.c.envelope_text,
            )
        ).all()
    return {r.envelope_id: (r.received_at, r.envelope_sha256, r.envelope_text) for r in rows}


def archived_rows(directory: Path) -> list[dict[str, Any]]:
    """Every row of every complete Parquet file in the archive (temporary files excluded)."""
    out: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*/*.parquet")):
        for row in pq.read_table(path).to_pylist():
            row["_file"] = path.relative_to(directory).as_posix()
            out.append(row)
    return out
