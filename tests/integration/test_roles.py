"""Least-privilege roles on PostgreSQL: connect as each role and prove what is denied."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recorder import retention
from recorder.adapter import RecordResult
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.errors import ConfigurationError, StorageUnavailable
from recorder.roles import RoleNames, grant, grant_statements, render_sql
from recorder.seal import seal
from recorder.verify import verify
from tests.integration.conftest import ConnectAs, denied

pytestmark = pytest.mark.postgres

UTC = dt.timezone.utc


def envelope(n: int) -> dict[str, object]:
    return {
        "envelope_id": f"e{n}",
        "type": "events_api",
        "payload": {"event_id": f"Ev{n}", "event": {"type": "message", "channel": "C1"}},
    }


def test_writer_records_and_completes_but_cannot_rewrite_or_delete(
    owner: Engine, roles: dict[str, str], connect_as: ConnectAs
) -> None:
    writer = connect_as(roles["writer"])
    buffer = SQLEventBuffer(writer)
    assert buffer.record("e1", envelope(1)) is RecordResult.NEW
    assert buffer.record("e1", envelope(1)) is RecordResult.DUPLICATE
    assert buffer.seen("e1")
    assert [e["envelope_id"] for e in buffer.pending()] == ["e1"]
    buffer.complete("e1")
    assert buffer.pending() == []
    # the import path (COPY into a temporary table) works for the writer too
    batch = [buffer.parse(f"i{n}", {"type": "x", "n": n}) for n in range(3)]
    assert buffer.record_many(batch) == 3
    claimed = SQLEventBuffer(writer)
    assert claimed.record("e2", envelope(2)) is RecordResult.NEW
    stale = claimed.claim_stale(dt.timedelta(0))
    assert [c.envelope_id for c in stale] == ["i0", "i1", "i2", "e2"]

    assert "permission denied" in denied(
        writer, "UPDATE envelopes SET envelope_text = '{}' WHERE envelope_id = 'e1'"
    )
    denied(writer, "UPDATE envelopes SET envelope_sha256 = 'x' WHERE envelope_id = 'e1'")
    denied(writer, "UPDATE envelopes SET user_id = 'U-else' WHERE envelope_id = 'e1'")
    denied(writer, "UPDATE envelopes SET received_at = now() WHERE envelope_id = 'e1'")
    denied(writer, "DELETE FROM envelopes WHERE envelope_id = 'e1'")
    with pytest.raises(StorageUnavailable, match="permission denied"):
        buffer.delete("e1")
    denied(writer, "SELECT * FROM seal_blocks")
    denied(writer, "DELETE FROM sealed_envelopes")
    denied(writer, "INSERT INTO pruned_envelopes VALUES (1, 'e1', 'x', now(), 'p')")
    denied(writer, "UPDATE retention_policies SET keep_seconds = 1")
    denied(writer, "TRUNCATE envelopes")
    assert buffer.seen("e1")


def test_reader_only_selects_and_can_verify(
    owner: Engine, roles: dict[str, str], connect_as: ConnectAs
) -> None:
    SQLEventBuffer(owner).record("e1", envelope(1))
    seal(owner, now=dt.datetime.now(UTC) + dt.timedelta(hours=1))
    reader = connect_as(roles["reader"])
    with reader.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM envelopes")).scalar_one() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM seal_blocks")).scalar_one() == 1
    assert verify(reader).ok
    denied(reader, "INSERT INTO envelopes (envelope_id) VALUES ('x')")
    denied(reader, "UPDATE envelopes SET status = 'done'")
    denied(reader, "DELETE FROM envelopes")
    denied(reader, "DELETE FROM prune_runs")
    denied(reader, "INSERT INTO seal_blocks (block_no) VALUES (9)")
    with pytest.raises(StorageUnavailable, match="permission denied"):
        SQLEventBuffer(reader).record("e2", envelope(2))


def test_pruner_deletes_only_through_the_prune_functions(
    owner: Engine, roles: dict[str, str], connect_as: ConnectAs
) -> None:
    start = dt.datetime.now(UTC) - dt.timedelta(days=10)
    old = SQLEventBuffer(owner, clock=lambda: start)
    for n in range(5):
        old.record(f"e{n}", envelope(n))
    SQLEventBuffer(owner).record("e99", envelope(99))
    seal(owner, now=dt.datetime.now(UTC) + dt.timedelta(hours=1))
    retention.set_policy(owner, "week", keep="7d")

    pruner = connect_as(roles["pruner"])
    report = retention.prune(pruner, batch_size=2)
    assert report.deleted_total == 5
    assert verify(owner).ok

    # No DELETE, no writes on the logs: only the functions.
    assert "permission denied" in denied(pruner, "DELETE FROM envelopes WHERE envelope_id = 'e99'")
    denied(pruner, "INSERT INTO pruned_envelopes VALUES (1, 'e99', 'x', now(), 'week')")
    denied(pruner, "UPDATE prune_runs SET deleted_total = 0")
    denied(pruner, "UPDATE envelopes SET envelope_text = '{}'")
    denied(pruner, "INSERT INTO envelopes (envelope_id) VALUES ('x')")
    denied(pruner, "DELETE FROM pruned_envelopes")
    denied(pruner, "UPDATE pruned_envelopes SET envelope_sha256 = 'x'")
    denied(pruner, "DELETE FROM prune_runs")
    denied(pruner, "UPDATE legal_holds SET released_at = now()")
    denied(pruner, "DELETE FROM sealed_envelopes")
    with owner.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM envelopes")).scalar_one() == 1


def test_sealer_appends_to_the_chain_and_nothing_more(
    owner: Engine, roles: dict[str, str], connect_as: ConnectAs
) -> None:
    SQLEventBuffer(owner).record("e1", envelope(1))
    sealer = connect_as(roles["sealer"])
    assert seal(sealer, now=dt.datetime.now(UTC) + dt.timedelta(hours=1)).sealed == 1
    denied(sealer, "UPDATE seal_blocks SET digest = 'x'")
    denied(sealer, "DELETE FROM sealed_envelopes")
    denied(sealer, "UPDATE envelopes SET status = 'done'")
    assert verify(owner).ok


def test_a_writer_backdating_a_row_behind_a_seal_is_named_and_not_adopted(
    owner: Engine, roles: dict[str, str], connect_as: ConnectAs
) -> None:
    """Issue 8, item 2, as the least-privileged writer forging history with raw SQL."""
    start = dt.datetime.now(UTC) - dt.timedelta(days=1)
    bot = SQLEventBuffer(owner, clock=lambda: start)
    for n in range(3):
        bot.record(f"e{n}", envelope(n))
    sealer = connect_as(roles["sealer"])
    assert seal(sealer).sealed == 3

    writer = connect_as(roles["writer"])
    forged = SQLEventBuffer(writer).parse("forged", envelope(7) | {"envelope_id": "forged"})
    params = forged.row() | {"received_at": start + dt.timedelta(hours=2)}
    columns = [c for c in params if c != "envelope_json"]
    with writer.begin() as conn:
        conn.execute(
            sa.text(
                f"INSERT INTO envelopes ({', '.join(columns)}, envelope) "
                f"VALUES ({', '.join(':' + c for c in columns)}, CAST(:envelope_json AS jsonb))"
            ),
            params,
        )
    report = verify(connect_as(roles["reader"]))
    assert report.of_kind("inserted") == {"forged"}
    assert not report.of_kind("modified")  # consistent in itself: only its date gives it away
    assert seal(sealer).sealed == 0
    assert verify(owner).of_kind("inserted") == {"forged"}


def test_grant_is_idempotent_and_print_sql_shows_what_runs(
    owner: Engine, roles: dict[str, str], connect_as: ConnectAs
) -> None:
    names = RoleNames(**roles)
    assert grant(owner, names) == grant_statements(names)
    writer = connect_as(roles["writer"])
    assert SQLEventBuffer(writer).record("e1", envelope(1)) is RecordResult.NEW
    denied(writer, "DELETE FROM envelopes")
    script = render_sql(grant_statements(RoleNames(writer='bot"; DROP TABLE x; --')))
    assert 'TO "bot""; DROP TABLE x; --"' in script
    assert "GRANT UPDATE (status, completed_at, attempts, claimed_at) ON TABLE envelopes" in script


def test_missing_roles_and_sqlite_are_configuration_errors(owner: Engine, sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError, match="no such role: rec_nobody"):
        grant(owner, RoleNames(reader="rec_nobody"))
    with pytest.raises(ConfigurationError, match="at least one role"):
        grant_statements(RoleNames())
    engine = create_engine(sqlite_url)
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        grant(engine, RoleNames(reader="r"))
    engine.dispose()
