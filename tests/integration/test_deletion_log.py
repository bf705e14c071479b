"""Attacks on the deletion log: forged ``pruned_envelopes`` rows must not pass ``verify``.

The attacker here is whoever can write the tables (the owner, a superuser, a
restored backup edited offline): they delete a sealed envelope with raw SQL
and add a log row that would make the deletion look like a logged prune.
Each forgery is one that ``verify`` accepted before every logged deletion was
checked against its run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from recorder import holds, policies, prune
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.schema import prune_runs
from recorder.seal import seal
from recorder.verify import verify

UTC = dt.timezone.utc
DAY = dt.timedelta(days=1)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def envelope(n: int, channel: str) -> dict[str, Any]:
    return {
        "envelope_id": f"e{n}",
        "type": "events_api",
        "payload": {"event_id": f"Ev{n}", "event": {"type": "message", "channel": channel}},
    }


def record(engine: Engine, n: int, *, age: dt.timedelta, channel: str = "C2") -> str:
    at = dt.datetime.now(UTC) - age
    SQLEventBuffer(engine, clock=lambda: at).record(f"e{n}", envelope(n, channel))
    return f"e{n}"


def seal_all(engine: Engine) -> None:
    seal(engine, now=dt.datetime.now(UTC) + dt.timedelta(hours=1))


def delete_and_forge(engine: Engine, envelope_id: str, *, run_id: int, policy: str) -> None:
    """The attack: a raw DELETE and a pruned_envelopes row that 'accounts' for it."""
    with engine.begin() as conn:
        row = conn.execute(
            sa.text(
                "SELECT envelope_sha256, received_at, team_id, channel_id, user_id "
                "FROM envelopes WHERE envelope_id = :id"
            ),
            {"id": envelope_id},
        ).one()
        conn.execute(
            sa.text(
                "INSERT INTO pruned_envelopes (prune_run_id, envelope_id, envelope_sha256, "
                "received_at, policy_name, team_id, channel_id, user_id, pruned_at) "
                "VALUES (:run, :id, :sha, :at, :policy, :team, :channel, :user, :now)"
            ),
            {
                "run": run_id,
                "id": envelope_id,
                "sha": row.envelope_sha256,
                "at": row.received_at,
                "policy": policy,
                "team": row.team_id,
                "channel": row.channel_id,
                "user": row.user_id,
                "now": dt.datetime.now(UTC),
            },
        )
        conn.execute(sa.text("DELETE FROM envelopes WHERE envelope_id = :id"), {"id": envelope_id})


def bump_count(engine: Engine, run_id: int, policy: str) -> None:
    """Make the run's counts agree with the forged row (a careful forger)."""
    (run,) = [r for r in prune.read_prune_log(engine) if r.id == run_id]
    counts = dict(run.deleted_per_policy or {})
    counts[policy] = counts.get(policy, 0) + 1
    with engine.begin() as conn:
        conn.execute(
            sa.update(prune_runs)
            .where(prune_runs.c.id == run_id)
            .values(deleted_per_policy=counts, deleted_total=prune_runs.c.deleted_total + 1)
        )


def findings(engine: Engine) -> dict[str, str]:
    report = verify(engine)
    return {f.envelope_id or "": f"{f.kind}: {f.detail}" for f in report.findings}


def pruned_world(engine: Engine) -> tuple[int, dict[str, str]]:
    """Old, young and held envelopes, sealed; one real prune run; verify passes."""
    ids = {
        "old": record(engine, 1, age=10 * DAY),
        "old2": record(engine, 2, age=10 * DAY),
        "young": record(engine, 3, age=DAY),
        "held": record(engine, 4, age=10 * DAY, channel="C1"),
        "old3": record(engine, 5, age=10 * DAY, channel="C3"),
    }
    seal(engine)  # up to a minute ago: a later row is sealed by a later run
    policies.set_policy(engine, "week", keep="7d", channel_id="C2")
    # Placed an hour ago (verify allows a minute of clock skew around hold times).
    an_hour_ago = dt.datetime.now(UTC) - dt.timedelta(hours=1)
    holds.add_hold(engine, "case", reason="litigation", channel_id="C1", now=an_hour_ago)
    report = prune.prune(engine)
    assert report.deleted == {"week": 2}
    assert report.run_id is not None
    assert verify(engine).ok
    return report.run_id, ids


def test_a_logged_prune_verifies(engine: Engine) -> None:
    pruned_world(engine)
    record(engine, 9, age=dt.timedelta(0))
    seal_all(engine)
    assert verify(engine).ok


def test_a_seal_with_nothing_new_leaves_the_log_for_the_next_block_unread(
    engine: Engine,
) -> None:
    """No block, nothing to carry the run's digest: a seal must not read the log for it.

    Reading it costs a pass over every row a prune logged (a million rows a
    large prune), repeated by every scheduled seal while no envelope arrives.
    """
    pruned_world(engine)
    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    report = seal(engine)
    event.remove(engine, "before_cursor_execute", seen)

    assert report.sealed == 0
    assert statements  # it did look for something to seal
    assert not [text for text in statements if "pruned_envelopes" in text]
    record(engine, 9, age=dt.timedelta(0))
    seal_all(engine)  # the next block carries the run
    with engine.connect() as conn:
        sealed = conn.execute(
            sa.text("SELECT count(*) FROM sealed_log_entries WHERE log_name = 'prune_runs'")
        ).scalar_one()
    assert sealed == 1
    assert verify(engine).ok


def test_a_row_naming_a_run_that_never_existed_is_caught(engine: Engine) -> None:
    _, ids = pruned_world(engine)
    delete_and_forge(engine, ids["young"], run_id=999, policy="week")
    found = findings(engine)
    assert "prune run 999, which does not exist" in found[ids["young"]]


def test_a_young_envelope_forged_into_a_real_run_is_caught(engine: Engine) -> None:
    run_id, ids = pruned_world(engine)
    delete_and_forge(engine, ids["young"], run_id=run_id, policy="week")
    bump_count(engine, run_id, "week")
    found = findings(engine)
    assert "not before the cutoff" in found[ids["young"]]


def test_a_held_envelope_forged_into_a_real_run_is_caught(engine: Engine) -> None:
    _, ids = pruned_world(engine)
    # Expired under a policy of the run, but a hold covered it.
    policies.set_policy(engine, "all", keep="7d", priority=-1)
    second = prune.prune(engine)
    assert second.deleted == {"week": 0, "all": 1}  # old3; the held one stays
    assert second.run_id is not None
    delete_and_forge(engine, ids["held"], run_id=second.run_id, policy="all")
    bump_count(engine, second.run_id, "all")
    found = findings(engine)
    assert "legal hold 'case' covered it" in found[ids["held"]]


def test_a_row_the_run_did_not_count_is_caught(engine: Engine) -> None:
    run_id, ids = pruned_world(engine)
    delete_and_forge(engine, ids["old3"], run_id=run_id, policy="week")
    found = findings(engine)
    assert "counted 2 deletions under policy 'week' but its log has 3 rows" in found[ids["old3"]]


def test_dry_and_locked_out_runs_delete_nothing(engine: Engine) -> None:
    _, ids = pruned_world(engine)
    dry = prune.prune(engine, dry_run=True)
    assert dry.run_id is not None
    delete_and_forge(engine, ids["young"], run_id=dry.run_id, policy="week")
    found = findings(engine)
    assert "a dry run" in found[ids["young"]]


def test_the_deletion_log_is_sealed_and_a_rewrite_after_sealing_is_caught(
    engine: Engine,
) -> None:
    run_id, ids = pruned_world(engine)
    record(engine, 9, age=dt.timedelta(0))
    seal_all(engine)  # the finished run and its rows go into this block
    with engine.connect() as conn:
        sealed = conn.execute(sa.text("SELECT log_name, entry_key FROM sealed_log_entries")).all()
    assert [tuple(r) for r in sealed] == [("prune_runs", str(run_id))]
    assert verify(engine).ok

    # The owner rewrites the sealed log: it still agrees with itself (the
    # forged row is counted, old enough, unheld), but not with the seal.
    delete_and_forge(engine, ids["old3"], run_id=run_id, policy="week")
    bump_count(engine, run_id, "week")
    report = verify(engine)
    kinds = {f.kind for f in report.findings}
    assert kinds == {"sealed_log"}
    assert f"prune_runs entry {run_id} changed since it was sealed" in report.findings[0].detail

    # Rewriting the sealed entry's digest too breaks the block's digest.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE sealed_log_entries SET digest = :d"), {"d": "0" * 64})
    assert "chain" in {f.kind for f in verify(engine).findings}
