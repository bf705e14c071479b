"""The eraser role on PostgreSQL: it erases through the erasure functions and can do nothing else;
no other role can erase."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recorder import erasure, retention
from recorder.adapters.sql import SQLEventBuffer
from recorder.errors import StorageUnavailable
from recorder.roles import RoleNames, grant_statements
from recorder.seal import seal
from recorder.slack.spool import Spool
from recorder.verify import verify
from tests.integration.conftest import ConnectAs, denied
from tests.integration.erasure_envelopes import SUBJECT, generate

pytestmark = pytest.mark.postgres

UTC = dt.timezone.utc


@pytest.fixture
def recorded(owner: Engine) -> list[str]:
    generated = generate(96)
    # recorded yesterday and sealed now: what the spool drains later is newer than the cutoff
    buffer = SQLEventBuffer(owner, clock=lambda: dt.datetime.now(UTC) - dt.timedelta(days=1))
    for g in generated:
        buffer.record(g.envelope_id, g.envelope)
    seal(owner)
    return [g.envelope_id for g in generated if g.subject]


def test_eraser_erases_plans_and_resumes_through_the_functions(
    owner: Engine, roles: dict[str, str], connect_as: ConnectAs, recorded: list[str]
) -> None:
    eraser = connect_as(roles["eraser"])
    retention.add_hold(owner, "case", reason="r", channel_id="C0PROJECT")
    found = erasure.plan(eraser, SUBJECT)
    assert found.total("subject") == len(recorded)
    report = erasure.erase(eraser, SUBJECT, reason="ticket 1", actor="dpo")
    assert report.erased + report.deferred >= len(recorded)
    assert report.status == "deferred"
    log = erasure.read_erasures(eraser)
    assert (log[-1].actor, log[-1].db_user) == ("dpo", roles["eraser"])
    retention.release_hold(owner, "case")
    assert erasure.resume(eraser).status == "completed"
    reader = connect_as(roles["reader"])
    assert verify(reader).ok


def test_eraser_cannot_touch_envelopes_or_the_log_directly(
    owner: Engine, roles: dict[str, str], connect_as: ConnectAs, recorded: list[str]
) -> None:
    eraser = connect_as(roles["eraser"])
    victim = recorded[0]
    denied(eraser, "SELECT envelope_text FROM envelopes")
    denied(eraser, "UPDATE envelopes SET envelope_text = '{}' WHERE envelope_id = :id", id=victim)
    denied(eraser, "DELETE FROM envelopes WHERE envelope_id = :id", id=victim)
    denied(eraser, "INSERT INTO envelopes (envelope_id) VALUES ('x')")
    denied(eraser, "UPDATE erased_envelopes SET replacement_sha256 = 'x'")
    denied(eraser, "DELETE FROM erasures")
    denied(
        eraser,
        "INSERT INTO erasures (requested_at, status, user_id, reason, actor, db_user, "
        "subject_action, mention_action) VALUES (now(), 'running', 'U1', 'r', 'a', 'b', "
        "'erase', 'scrub')",
    )
    denied(eraser, "UPDATE legal_holds SET released_at = now()")
    denied(eraser, "DELETE FROM seal_blocks")
    denied(eraser, "DELETE FROM pruned_envelopes")
    # the internal functions, which change an envelope without the checks around them
    denied(eraser, "SELECT recorder_erasure_apply(1, :id, 'erase', 'U0SUBJECT')", id=victim)
    denied(
        eraser, "SELECT recorder_erasure_record(1, :id, 'subject', 'erase', 'U0SUBJECT')", id=victim
    )


def test_eraser_functions_refuse_what_the_erasure_does_not_name(
    owner: Engine, roles: dict[str, str], connect_as: ConnectAs, recorded: list[str]
) -> None:
    eraser = connect_as(roles["eraser"])
    with owner.connect() as conn:
        before: dict[str, str] = dict(
            conn.execute(sa.text("SELECT envelope_id, envelope_text FROM envelopes")).all()
        )
    report = erasure.erase(eraser, "U0NOBODY", reason="no such user")
    assert (report.erased, report.scrubbed) == (0, 0)
    erasure_id = report.erasure_ids[0]
    # a finished erasure cannot be stepped again; a spool entry cannot name a stored envelope
    with pytest.raises(sa.exc.DBAPIError, match="not running"), eraser.begin() as conn:
        conn.execute(sa.text("SELECT * FROM recorder_erasure_step(:id, 10)"), {"id": erasure_id})
    started = erasure._start(eraser, "U0NOBODY", None, "r", "a", "erase", "scrub")
    with eraser.begin() as conn:
        conn.execute(
            sa.text(
                "SELECT recorder_erasure_log_spooled(:id, :env, now(), 'subject', 'erase', "
                "'spooled', NULL, 'a', 'b')"
            ),
            {"id": started, "env": recorded[0]},
        )
    with owner.connect() as conn:
        after: dict[str, str] = dict(
            conn.execute(sa.text("SELECT envelope_id, envelope_text FROM envelopes")).all()
        )
        logged = conn.execute(
            sa.text("SELECT count(*) FROM erased_envelopes WHERE envelope_id = :id"),
            {"id": recorded[0]},
        ).scalar_one()
    assert after == before
    assert logged == 0
    assert verify(owner).ok


def test_other_roles_cannot_erase(
    owner: Engine, roles: dict[str, str], connect_as: ConnectAs, recorded: list[str]
) -> None:
    for part in ("writer", "reader", "pruner", "sealer"):
        engine = connect_as(roles[part])
        with pytest.raises(StorageUnavailable, match="permission denied"):
            erasure.erase(engine, SUBJECT, reason="not mine to do")
        denied(engine, "SELECT * FROM recorder_erasure_step(1, 10)")
        denied(engine, "SELECT * FROM recorder_erasure_resume(10, NULL, NULL)")
    assert erasure.read_erasures(owner) == []


def test_eraser_erases_in_a_spool_and_verify_holds_after_it_drains(
    owner: Engine,
    roles: dict[str, str],
    connect_as: ConnectAs,
    recorded: list[str],
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool.db")
    spooled = generate(40, seed=99)
    target = SQLEventBuffer(owner)
    for g in spooled:
        spool.record(
            target.parse("s-" + g.envelope_id, {**g.envelope, "envelope_id": "s-" + g.envelope_id})
        )
    eraser = connect_as(roles["eraser"])
    report = erasure.erase(eraser, SUBJECT, reason="r", spool=tmp_path / "spool.db")
    expected = sum(1 for g in spooled if g.subject or g.mentions_subject)
    assert report.spooled == expected
    rows = spool.drainable(0, [], 1000)
    assert all(f'"{SUBJECT}"' not in r.envelope_text for r in rows)
    assert verify(owner).ok  # spooled entries wait for the drain
    from recorder.slack.draining import move

    move(rows, target)
    result = verify(connect_as(roles["reader"]))
    assert result.ok, result.findings[:3]
    spool.close()


def test_grant_names_the_eraser_functions_only_for_the_eraser() -> None:
    sql = grant_statements(RoleNames(eraser="er", writer="w"))
    grants = [s for s in sql if s.startswith("GRANT EXECUTE")]
    assert grants
    assert all(s.endswith('TO "er"') for s in grants)
    assert not any("recorder_erasure_apply" in s or "recorder_erasure_record" in s for s in sql)


def test_eraser_erases_in_the_archive_and_cannot_log_live_envelopes_as_archived(
    owner: Engine, roles: dict[str, str], connect_as: ConnectAs, tmp_path: Path
) -> None:
    from recorder.archive import ArchiveOptions

    generated = generate(60)
    old = dt.datetime.now(UTC) - dt.timedelta(days=90)
    buffer = SQLEventBuffer(owner, clock=lambda: old)
    for g in generated[:40]:
        buffer.record(g.envelope_id, g.envelope)
    live = SQLEventBuffer(owner)
    for g in generated[40:]:
        live.record(g.envelope_id, g.envelope)
    retention.set_policy(owner, "short", keep="30d")
    retention.prune(owner, archive=ArchiveOptions(tmp_path / "archive"))
    eraser = connect_as(roles["eraser"])
    report = erasure.erase(eraser, SUBJECT, reason="r", archive=tmp_path / "archive")
    assert report.archived == sum(1 for g in generated[:40] if g.subject or g.mentions_subject)
    assert report.erased == sum(1 for g in generated[40:] if g.subject)
    # the logging function refuses an envelope the database still holds
    started = erasure._start(eraser, SUBJECT, None, "r", "a", "erase", "scrub")
    entry = {
        "envelope_id": generated[45].envelope_id,
        "received_at": "2026-01-01T00:00:00+00:00",
        "kind": "subject",
        "action": "erase",
        "original_sha256": "a",
        "replacement_sha256": "b",
    }
    with (
        pytest.raises(sa.exc.ProgrammingError, match="only archived envelopes"),
        eraser.begin() as conn,
    ):
        conn.execute(
            sa.text(
                "SELECT recorder_erasure_log_archived(:id, 'x', 'y', 1, 'z', "
                "CAST(:entries AS jsonb))"
            ),
            {"id": started, "entries": json.dumps([entry])},
        )
    assert verify(connect_as(roles["reader"])).ok


def test_eraser_cannot_redigest_an_archive_file_it_altered(
    owner: Engine, roles: dict[str, str], connect_as: ConnectAs, tmp_path: Path
) -> None:
    """Attack: the eraser (who may write the archive directory) adds a fabricated envelope to
    an archive file, then has the erasure logging function put the altered file's digest in
    the manifest, naming no envelope (or one outside that file) as erased."""
    import hashlib

    from recorder.archive import ArchiveOptions, deps, manifest
    from recorder.archive.files import file_sha256
    from recorder.archive.layout import open_archive
    from recorder.archive.verify import verify_archive

    generated = generate(30)
    old = dt.datetime.now(UTC) - dt.timedelta(days=90)
    buffer = SQLEventBuffer(owner, clock=lambda: old)
    for g in generated:
        buffer.record(g.envelope_id, g.envelope)
    seal(owner)
    retention.set_policy(owner, "short", keep="30d")
    retention.prune(owner, archive=ArchiveOptions(tmp_path / "archive"))
    archive = open_archive(tmp_path / "archive")
    entry = manifest.entries(owner, archive_id=archive.archive_id, states=(manifest.COMPLETE,))[0]
    path = archive.file_path(entry.file_name)
    pa, pq = deps.pyarrow()
    table = pq.read_table(str(path))
    rows = table.to_pylist()
    forged = dict(rows[0], envelope_id="Ev-FORGED", envelope_text='{"payload":{"forged":1}}')
    forged["envelope_sha256"] = hashlib.sha256(forged["envelope_text"].encode()).hexdigest()
    pq.write_table(pa.Table.from_pylist([*rows, forged], schema=table.schema), str(path))
    size, digest = file_sha256(path)

    eraser = connect_as(roles["eraser"])
    started = erasure._start(eraser, "U0NOBODY", None, "r", "a", "erase", "scrub")
    outside = {
        "envelope_id": rows[0]["envelope_id"],
        "received_at": "2001-01-01T00:00:00+00:00",  # not when it was pruned, not in the file
        "kind": "subject",
        "action": "erase",
        "original_sha256": "a",
        "replacement_sha256": "b",
    }
    for entries in ([], [outside]):
        with (
            pytest.raises(sa.exc.ProgrammingError, match="rewritten only for") as info,
            eraser.begin() as conn,
        ):
            conn.execute(
                sa.text(
                    "SELECT recorder_erasure_log_archived(:id, :archive_id, :file_name, :size, "
                    ":digest, CAST(:entries AS jsonb))"
                ),
                {
                    "id": started,
                    "archive_id": archive.archive_id,
                    "file_name": entry.file_name,
                    "size": size,
                    "digest": digest,
                    "entries": json.dumps(entries),
                },
            )
        assert isinstance(info.value.orig, psycopg.errors.InsufficientPrivilege)
    report = verify_archive(connect_as(roles["reader"]), tmp_path / "archive")
    assert entry.file_name in report.of_kind("altered-file")
