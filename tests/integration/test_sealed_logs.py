"""The erasure log and the archive manifest are sealed with the next block.

The attacker can write every table (the owner, a superuser, a backup edited
offline). After a seal, rewriting who asked for an erasure and why, or which
envelopes an archive file holds, must make ``verify`` fail, as rewriting the
deletion log does (tests/integration/test_deletion_log.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recorder import erasure, retention
from recorder.adapter import RecordResult
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.seal import seal
from recorder.verify import verify
from tests.integration.erasure_envelopes import SUBJECT, Clock, generate

UTC = dt.timezone.utc


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def record_generated(engine: Engine, clock: Clock, count: int, *, seed_from: int = 0) -> None:
    buffer = SQLEventBuffer(engine, clock=clock)
    for g in generate(count)[seed_from:]:
        assert buffer.record(g.envelope_id, g.envelope) is RecordResult.NEW


def seal_after_one_more(engine: Engine, clock: Clock, n: int) -> None:
    """A block needs a new envelope; the log entries final by then ride along."""
    clock.now += dt.timedelta(hours=2)
    SQLEventBuffer(engine, clock=clock).record(f"late-{n}", {"envelope_id": f"late-{n}"})
    seal(engine, now=clock.now + dt.timedelta(hours=1))


def sealed_logs(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT log_name, count(*) FROM sealed_log_entries GROUP BY log_name")
        ).all()
    return {str(name): int(count) for name, count in rows}


def test_a_rewritten_erasure_request_after_sealing_is_caught(engine: Engine) -> None:
    clock = Clock()
    record_generated(engine, clock, 200)
    seal(engine, now=clock.now + dt.timedelta(hours=1))
    report = erasure.erase(engine, SUBJECT, reason="GDPR request #42", actor="dpo")
    assert report.erased > 0
    seal_after_one_more(engine, clock, 1)
    assert sealed_logs(engine).get("erasures") == report.erased + report.scrubbed
    assert verify(engine).ok

    # Who asked and why are what an auditor reads back: a rewrite must show.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE erasures SET reason = 'routine clean-up', actor = 'ops'"))
    found = verify(engine)
    assert not found.ok
    assert {f.kind for f in found.findings} == {"sealed_log"}
    assert all("erasures entry" in f.detail for f in found.findings)


def test_a_deferred_erasure_is_sealed_once_its_hold_is_released(engine: Engine) -> None:
    clock = Clock()
    record_generated(engine, clock, 200)
    retention.add_hold(engine, "everything", reason="case 7")
    report = erasure.erase(engine, SUBJECT, reason="request")
    assert report.deferred > 0
    seal_after_one_more(engine, clock, 1)
    assert "erasures" not in sealed_logs(engine)  # still changing: nothing sealed yet
    retention.release_hold(engine, "everything")
    done = erasure.resume(engine)
    assert done.erased + done.scrubbed == report.deferred
    seal_after_one_more(engine, clock, 2)
    assert sealed_logs(engine)["erasures"] == report.deferred
    assert verify(engine).ok


def test_a_rewritten_archive_manifest_row_after_sealing_is_caught(
    engine: Engine, tmp_path: Path
) -> None:
    from recorder.archive import ArchiveOptions

    clock = Clock()
    record_generated(engine, clock, 120)
    retention.set_policy(engine, "short", keep="1d")
    retention.prune(
        engine,
        now=clock.now + dt.timedelta(days=30),
        archive=ArchiveOptions(tmp_path / "archive", file_rows=50),
    )
    clock.now += dt.timedelta(days=30)
    seal_after_one_more(engine, clock, 1)
    with engine.connect() as conn:
        files = conn.execute(sa.text("SELECT count(*) FROM archive_files")).scalar_one()
    assert sealed_logs(engine).get("archive_files") == files == 3
    assert verify(engine).ok

    # Claim a file holds other envelopes than it was written with.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE archive_files SET members_sha256 = :d"), {"d": "0" * 64})
    found = verify(engine)
    assert {f.kind for f in found.findings} == {"sealed_log"}
    assert len(found.findings) == 3
