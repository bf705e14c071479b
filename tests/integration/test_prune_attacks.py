"""Attacks on pruning with the least-privilege roles, on PostgreSQL.

Each test does what a holder of a stolen credential would try: shadow the
deletion log with a temporary table, delete directly, forge log rows, or call
the prune functions on records the policies keep (young or held).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recorder import holds, policies, prune, statements
from recorder.adapters.sql import SQLEventBuffer
from recorder.roles import INTERNAL_FUNCTIONS
from recorder.seal import seal
from recorder.verify import verify
from tests.integration.conftest import ConnectAs, denied

pytestmark = pytest.mark.postgres

UTC = dt.timezone.utc
DAY = dt.timedelta(days=1)


def envelope(n: int, channel: str) -> dict[str, Any]:
    return {
        "envelope_id": f"e{n}",
        "type": "events_api",
        "payload": {"event_id": f"Ev{n}", "event": {"type": "message", "channel": channel}},
    }


def record(engine: Engine, n: int, *, channel: str = "C2", age: dt.timedelta) -> str:
    at = dt.datetime.now(UTC) - age
    SQLEventBuffer(engine, clock=lambda: at).record(f"e{n}", envelope(n, channel))
    return f"e{n}"


def stored(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT envelope_id FROM envelopes")).scalars())


def logged(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT envelope_id FROM pruned_envelopes")).scalars())


def refused(engine: Engine, statement: str, **params: object) -> psycopg.Error:
    """Run ``statement``; return the database's error (failing if it ran)."""
    with pytest.raises(sa.exc.DBAPIError) as info, engine.begin() as conn:
        conn.execute(sa.text(statement), params)
    assert isinstance(info.value.orig, psycopg.Error)
    return info.value.orig


SHADOW = """
CREATE TEMP TABLE pruned_envelopes (envelope_id text, received_at timestamptz);
INSERT INTO pruned_envelopes VALUES ('e1', %(at)s);
DELETE FROM envelopes WHERE envelope_id = 'e1';
"""


def shadow_and_delete(pg_url: str, role: str, received_at: dt.datetime) -> None:
    """The attack: a temporary pruned_envelopes that 'logs' the row, then the delete."""
    from sqlalchemy.engine import make_url

    url = make_url(pg_url).set(drivername="postgresql", username=role)
    with psycopg.connect(url.render_as_string(hide_password=False)) as conn:
        for statement in filter(str.strip, SHADOW.split(";")):
            conn.execute(statement, {"at": received_at})
        conn.commit()


def received_at(engine: Engine, envelope_id: str) -> dt.datetime:
    with engine.connect() as conn:
        value = conn.execute(
            sa.text("SELECT received_at FROM envelopes WHERE envelope_id = :id"),
            {"id": envelope_id},
        ).scalar_one()
    assert isinstance(value, dt.datetime)
    return value


def test_a_temp_table_cannot_stand_in_for_the_deletion_log(
    pg_url: str, owner: Engine, roles: dict[str, str]
) -> None:
    record(owner, 1, age=10 * DAY)
    at = received_at(owner, "e1")
    # The pruner has no DELETE at all now...
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        shadow_and_delete(pg_url, roles["pruner"], at)
    # ...and a role a DBA granted DELETE by hand meets the guard, which reads
    # the schema's pruned_envelopes whatever the session's temporary tables.
    with owner.begin() as conn:
        conn.execute(sa.text(f'GRANT SELECT, DELETE ON envelopes TO "{roles["reader"]}"'))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="without a pruned_envelopes"):
        shadow_and_delete(pg_url, roles["reader"], at)
    assert stored(owner) == {"e1"}
    assert logged(owner) == set()


def test_every_function_the_recorder_installs_pins_search_path(owner: Engine) -> None:
    with owner.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT p.proname, p.proconfig, p.prosecdef, pg_get_functiondef(p.oid) AS body "
                "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = current_schema() AND p.proname LIKE 'recorder%'"
            )
        ).all()
    names = {row.proname for row in rows}
    assert {"recorder_deletion_is_logged", "recorder_prune_delete"} <= names
    for row in rows:
        # pg_temp listed last: left out, it would be searched first.
        assert "search_path=pg_catalog, pg_temp" in (row.proconfig or []), row.proname
        assert "FROM pruned_envelopes" not in row.body, row.proname
        assert "FROM envelopes" not in row.body, row.proname


def test_the_pruner_cannot_delete_directly_or_forge_the_log(
    owner: Engine, roles: dict[str, str], connect_as: ConnectAs
) -> None:
    record(owner, 1, age=10 * DAY)
    pruner = connect_as(roles["pruner"])
    denied(pruner, "DELETE FROM envelopes WHERE envelope_id = 'e1'")
    denied(pruner, "INSERT INTO pruned_envelopes VALUES (1, 'e1', 'x', now(), 'p')")
    denied(
        pruner, "INSERT INTO prune_runs (started_at, status, dry_run) VALUES (now(), 'x', false)"
    )
    denied(pruner, "UPDATE prune_runs SET deleted_total = 99")
    denied(pruner, "DELETE FROM prune_runs")
    denied(pruner, "UPDATE legal_holds SET released_at = now()")
    denied(pruner, "UPDATE retention_policies SET keep_seconds = 1")
    for internal in INTERNAL_FUNCTIONS:
        name, _, types = internal.rstrip(")").partition("(")
        # A NULL of each argument's type: the call resolves, then meets the privilege check.
        arguments = ", ".join(f"NULL::{t.strip()}" for t in types.split(","))
        denied(pruner, f"SELECT {name}({arguments})")
    # Roles other than the pruner cannot prune at all.
    for part in ("writer", "reader", "sealer"):
        denied(connect_as(roles[part]), "SELECT * FROM recorder_prune_begin(false, 'x', 'h')")
    assert stored(owner) == {"e1"}


def test_the_prune_functions_remove_only_what_policies_and_holds_allow(
    owner: Engine, roles: dict[str, str], connect_as: ConnectAs
) -> None:
    expired = record(owner, 1, age=10 * DAY)
    young = record(owner, 2, age=DAY)
    held = record(owner, 3, channel="C1", age=10 * DAY)
    policies.set_policy(owner, "week", keep="7d")
    holds.add_hold(owner, "case", reason="litigation", channel_id="C1")
    pruner = connect_as(roles["pruner"])

    # A run cannot be dated in the future (that would expire everything).
    future = dt.datetime.now(UTC) + 30 * DAY
    error = refused(pruner, "SELECT * FROM recorder_prune_begin(false, 'x', 'h', :at)", at=future)
    assert "after the database clock" in str(error)

    with pruner.begin() as conn:
        run = conn.execute(statements.prune_begin(dry_run=False, actor="x", host="h", as_of=None))
        run_id = int(run.one().run_id)
        # Archive first, then delete: the candidates are exactly what may go.
        candidates = conn.execute(
            statements.prune_candidates(run_id=run_id, policy_name="week", after=None, limit=10)
        ).all()
        assert [c.envelope_id for c in candidates] == [expired]
        # Ask for all three: only the expired, unheld one goes.
        removed = conn.execute(
            statements.prune_delete(
                run_id=run_id, policy_name="week", envelope_ids=[expired, young, held]
            )
        ).all()
    assert [r.envelope_id for r in removed] == [expired]
    assert stored(owner) == {young, held}
    assert logged(owner) == {expired}

    # A policy the run does not apply, or a dry run, deletes nothing.
    error = refused(
        pruner, "SELECT * FROM recorder_prune_delete(:run, 'nope', ARRAY['e2'])", run=run_id
    )
    assert "no policy named nope" in str(error)
    with pruner.begin() as conn:
        dry = conn.execute(statements.prune_begin(dry_run=True, actor="x", host="h", as_of=None))
        dry_id = int(dry.one().run_id)
    error = refused(
        pruner, "SELECT * FROM recorder_prune_delete(:run, 'week', ARRAY['e2', 'e3'])", run=dry_id
    )
    assert "dry run" in str(error)

    with pruner.begin() as conn:
        conn.execute(
            statements.prune_finish(
                run_id=run_id, status="completed", held=0, skipped=0, error=None, would_delete=None
            )
        )
    # A finished run removes nothing more, and the counts are the database's.
    error = refused(
        pruner, "SELECT * FROM recorder_prune_delete(:run, 'week', ARRAY['e2'])", run=run_id
    )
    assert "not running" in str(error)
    (run_row,) = [r for r in prune.read_prune_log(owner) if r.id == run_id]
    assert run_row.deleted_total == 1
    assert run_row.deleted_per_policy == {"week": 1}
    assert run_row.policies is not None
    assert run_row.policies[0]["name"] == "week"
    assert stored(owner) == {young, held}


def test_recorder_prune_as_the_pruner_keeps_verify_passing(
    owner: Engine, roles: dict[str, str], connect_as: ConnectAs
) -> None:
    for n in range(5):
        record(owner, n, age=10 * DAY)
    record(owner, 10, channel="C1", age=10 * DAY)
    record(owner, 11, age=DAY)
    seal(owner, now=dt.datetime.now(UTC) + dt.timedelta(hours=1))
    policies.set_policy(owner, "week", keep="7d")
    holds.add_hold(owner, "case", reason="litigation", channel_id="C1")

    pruner = connect_as(roles["pruner"])
    dry = prune.prune(pruner, dry_run=True)
    assert dry.deleted == {"week": 5}
    assert dry.held == 1
    report = prune.prune(pruner, batch_size=2)
    assert report.status == "completed"
    assert report.deleted == {"week": 5}
    assert report.held == 1
    assert report.skipped == 0
    assert stored(owner) == {"e10", "e11"}
    assert verify(owner).ok
    log = prune.read_prune_log(owner)
    assert [(r.dry_run, r.status, r.deleted_total) for r in log] == [
        (True, "completed", 5),
        (False, "completed", 5),
    ]
    with pytest.raises(Exception, match="after the database clock"):
        prune.prune(pruner, now=dt.datetime.now(UTC) + 30 * DAY)
