"""Right to erasure on PostgreSQL and SQLite: erase one user, verify stays green and strict."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recorder import erasure, retention
from recorder.adapter import RecordResult
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.erasure import ErasureError
from recorder.schema import envelopes
from recorder.seal import seal, text_sha256
from recorder.tombstone import TOMBSTONE_KEY, scrub, tombstone_text
from recorder.verify import verify
from tests.integration.erasure_envelopes import LOOKALIKE, SUBJECT, Clock, Generated, generate

UTC = dt.timezone.utc
COUNT = 2000


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def record(engine: Engine, clock: Clock, generated: list[Generated]) -> None:
    buffer = SQLEventBuffer(engine, clock=clock)
    for g in generated:
        assert buffer.record(g.envelope_id, g.envelope) is RecordResult.NEW


def rows(engine: Engine) -> dict[str, sa.Row[tuple[object, ...]]]:
    with engine.connect() as conn:
        return {
            r.envelope_id: r
            for r in conn.execute(
                sa.text(
                    "SELECT envelope_id, envelope_text, envelope_sha256, received_at, user_id, "
                    "channel_id, team_id, event_type, envelope_type FROM envelopes"
                )
            )
        }


def run_sql(engine: Engine, statement: str, **params: object) -> int:
    with engine.begin() as conn:
        return int(conn.execute(sa.text(statement), params).rowcount)


def sealed_later(clock: Clock) -> dt.datetime:
    return clock.now + dt.timedelta(hours=1)


@pytest.fixture
def archive(engine: Engine, clock: Clock) -> list[Generated]:
    """COUNT mixed envelopes; the first half sealed before the erasure, the rest after."""
    generated = generate(COUNT)
    record(engine, clock, generated[: COUNT // 2])
    seal(engine, block_size=500, now=sealed_later(clock))
    clock.now = sealed_later(clock)  # the rest arrive after that seal's cutoff
    record(engine, clock, generated[COUNT // 2 :])
    return generated


def test_erasing_one_user_keeps_verify_green_and_leaves_everyone_else(
    engine: Engine, clock: Clock, archive: list[Generated]
) -> None:
    before = rows(engine)
    subjects = {g.envelope_id for g in archive if g.subject}
    mentioning = {g.envelope_id for g in archive if g.mentions_subject}

    dry = erasure.plan(engine, SUBJECT)
    assert dry.total("subject") == len(subjects)
    assert dry.total("mention") == len(mentioning)
    per_channel = Counter(g.channel for g in archive if g.subject)
    assert {r.channel_id: r.envelopes for r in dry.rows if r.kind == "subject"} == per_channel
    assert rows(engine) == before  # a dry run changes nothing

    report = erasure.erase(engine, SUBJECT, reason="GDPR request #42", actor="dpo")
    assert (report.erased, report.scrubbed, report.deferred) == (len(subjects), len(mentioning), 0)
    assert report.status == "completed"
    after = rows(engine)
    assert set(after) == set(before)  # every row stays
    for envelope_id, row in after.items():
        old = before[envelope_id]
        # what an auditor keeps: id, time, original digest, non-personal columns
        assert (row.received_at, row.envelope_sha256, row.channel_id, row.team_id) == (
            old.received_at,
            old.envelope_sha256,
            old.channel_id,
            old.team_id,
        )
        assert (row.envelope_type, row.event_type) == (old.envelope_type, old.event_type)
        if envelope_id in subjects:
            data = json.loads(row.envelope_text)
            assert data[TOMBSTONE_KEY]["original_sha256"] == old.envelope_sha256
            assert SUBJECT not in row.envelope_text
            assert row.user_id is None
        elif envelope_id in mentioning:
            assert SUBJECT not in row.envelope_text.replace(LOOKALIKE, "")
            assert row.envelope_text == scrub(old.envelope_text, SUBJECT)
            # the rest is kept: other users' mentions, the words, the actor
            assert "<@U0ALICE>" in row.envelope_text or "U0BOB" in row.envelope_text
            assert "keep this" in row.envelope_text or "ping" in row.envelope_text
            assert row.user_id == old.user_id
        else:
            assert row.envelope_text == old.envelope_text  # the lookalike too
    check = verify(engine)
    assert check.ok, check.findings[:5]
    assert check.erased == len(subjects) + len(mentioning)

    # sealing after the erasure seals tombstones; verify stays green
    seal(engine, block_size=500, now=sealed_later(clock))
    assert verify(engine).ok

    # an erasure run again finds nothing
    again = erasure.erase(engine, SUBJECT, reason="again")
    assert (again.erased, again.scrubbed) == (0, 0)
    assert verify(engine).ok
    log = erasure.read_erasures(engine)
    first = log[0]
    assert (first.user_id, first.reason, first.actor, first.status) == (
        SUBJECT,
        "GDPR request #42",
        "dpo",
        "completed",
    )


def test_query_and_export_paths_read_tombstones_never_the_original(
    engine: Engine, clock: Clock
) -> None:
    generated = generate(64)
    record(engine, clock, generated)
    erasure.erase(engine, SUBJECT, reason="test")
    with engine.connect() as conn:
        texts = conn.execute(sa.text("SELECT envelope_text FROM envelopes")).scalars().all()
        queryable = (
            conn.execute(sa.text("SELECT CAST(envelope AS TEXT) FROM envelopes")).scalars().all()
        )
        pending = SQLEventBuffer(engine).pending()
    for text in [*texts, *queryable, *(json.dumps(p) for p in pending)]:
        assert f'"{SUBJECT}"' not in text
        assert f"<@{SUBJECT}>" not in text
        assert f"<@{SUBJECT}|" not in text


def test_tampering_after_erasure_is_named(
    engine: Engine, clock: Clock, archive: list[Generated]
) -> None:
    erasure.erase(engine, SUBJECT, reason="request")
    seal(engine, block_size=500, now=sealed_later(clock))
    assert verify(engine).ok
    erased_sealed_before = next(g.envelope_id for g in archive[: COUNT // 2] if g.subject)
    erased_sealed_after = next(g.envelope_id for g in archive[COUNT // 2 :] if g.subject)
    scrubbed = next(g.envelope_id for g in archive if g.mentions_subject)
    # a tombstone edited (its erasure id changed); a scrubbed text edited
    run_sql(
        engine,
        "UPDATE envelopes SET envelope_text = replace(envelope_text, :old, :new) "
        "WHERE envelope_id IN (:a, :b)",
        old='"erasure_id":1,',
        new='"erasure_id":9,',
        a=erased_sealed_before,
        b=erased_sealed_after,
    )
    run_sql(
        engine,
        "UPDATE envelopes SET envelope_text = replace(envelope_text, 'ping', 'pong') "
        "WHERE envelope_id = :id",
        id=scrubbed,
    )
    report = verify(engine)
    assert not report.ok
    named = report.of_kind("modified")
    assert {erased_sealed_before, erased_sealed_after, scrubbed} <= named
    assert report.of_kind("erasure") >= {erased_sealed_before, erased_sealed_after, scrubbed}


def test_forged_erasure_log_entries_fail_verify(
    engine: Engine, clock: Clock, archive: list[Generated]
) -> None:
    erasure.erase(engine, SUBJECT, reason="request")
    assert verify(engine).ok
    untouched = next(
        g.envelope_id for g in archive[: COUNT // 2] if not g.subject and not g.mentions_subject
    )
    erased_one = next(g.envelope_id for g in archive[: COUNT // 2] if g.subject)
    victim = next(
        g.envelope_id
        for g in archive[: COUNT // 2]
        if not g.subject and not g.mentions_subject and g.envelope_id != untouched
    )
    with engine.connect() as conn:
        original = conn.execute(
            sa.text("SELECT envelope_text FROM envelopes WHERE envelope_id = :id"), {"id": victim}
        ).scalar_one()
    # 1. an entry naming an envelope the erasure never touched
    run_sql(
        engine,
        "INSERT INTO erased_envelopes (erasure_id, envelope_id, received_at, kind, action, state, "
        "original_sha256, replacement_sha256, erased_at) SELECT 1, envelope_id, received_at, "
        "'subject', 'erase', 'done', envelope_sha256, :fake, received_at FROM envelopes "
        "WHERE envelope_id = :id",
        id=untouched,
        fake="0" * 64,
    )
    # 2. an entry whose replacement digest does not match the stored text
    run_sql(
        engine,
        "UPDATE erased_envelopes SET replacement_sha256 = :fake WHERE envelope_id = :id",
        id=erased_one,
        fake="1" * 64,
    )
    # 3. a sealed envelope rewritten, with an entry forged to match its new digest
    forged_text = original.replace("ordinary", "forged")
    run_sql(
        engine,
        "UPDATE envelopes SET envelope_text = :text WHERE envelope_id = :id",
        text=forged_text,
        id=victim,
    )
    run_sql(
        engine,
        "INSERT INTO erased_envelopes (erasure_id, envelope_id, received_at, kind, action, state, "
        "original_sha256, replacement_sha256, erased_at) SELECT 1, envelope_id, received_at, "
        "'subject', 'erase', 'done', envelope_sha256, :new, received_at FROM envelopes "
        "WHERE envelope_id = :id",
        id=victim,
        new=text_sha256(forged_text),
    )
    report = verify(engine)
    assert not report.ok
    flagged = report.of_kind("erasure") | report.of_kind("modified")
    assert {untouched, erased_one, victim} <= flagged
    assert victim in report.of_kind("erasure")  # not a tombstone of that entry
    assert untouched in report.of_kind("erasure")
    assert erased_one in report.of_kind("modified")


def test_held_envelopes_are_deferred_then_completed_after_release(
    engine: Engine, clock: Clock
) -> None:
    generated = generate(320)
    record(engine, clock, generated)
    retention.add_hold(engine, "litigation", reason="case 7", channel_id="C0PROJECT")
    held = {
        g.envelope_id
        for g in generated
        if (g.subject or g.mentions_subject) and g.channel == "C0PROJECT"
    }
    assert held
    dry = erasure.plan(engine, SUBJECT)
    assert dry.held() == len(held)

    report = erasure.erase(engine, SUBJECT, reason="request", batch_size=7)
    assert report.status == "deferred"
    assert report.deferred == len(held)
    assert report.deferred_by_hold == {"litigation": len(held)}
    assert "litigation" in report.summary()
    current = rows(engine)
    originals = {g.envelope_id: g for g in generated}
    for envelope_id in held:
        assert TOMBSTONE_KEY not in current[envelope_id].envelope_text
        assert SUBJECT in current[envelope_id].envelope_text  # kept, as the hold requires
    assert verify(engine).ok
    assert erasure.read_erasures(engine)[-1].status == "deferred"

    still = erasure.resume(engine, batch_size=5)
    assert (still.erased, still.scrubbed, still.deferred) == (0, 0, len(held))

    retention.release_hold(engine, "litigation")
    done = erasure.resume(engine, batch_size=5)
    subjects = {e for e in held if originals[e].subject}
    assert (done.erased, done.scrubbed, done.deferred) == (len(subjects), len(held - subjects), 0)
    assert done.status == "completed"
    assert erasure.read_erasures(engine)[-1].status == "completed"
    after = rows(engine)
    for envelope_id in held:
        assert f"<@{SUBJECT}>" not in after[envelope_id].envelope_text
    assert verify(engine).ok
    assert erasure.resume(engine).erased == 0  # nothing left: a scheduled run is harmless


def test_flags_choose_what_happens_to_mentions_and_subjects(engine: Engine, clock: Clock) -> None:
    generated = generate(64)
    record(engine, clock, generated)
    before = rows(engine)
    report = erasure.erase(engine, SUBJECT, reason="r", subjects="skip", mentions="erase")
    mentioning = {g.envelope_id for g in generated if g.mentions_subject}
    assert (report.erased, report.scrubbed) == (len(mentioning), 0)
    after = rows(engine)
    for g in generated:
        if g.subject:
            assert after[g.envelope_id].envelope_text == before[g.envelope_id].envelope_text
        elif g.mentions_subject:
            assert TOMBSTONE_KEY in after[g.envelope_id].envelope_text
    assert verify(engine).ok


def test_team_filter_leaves_other_teams(engine: Engine, clock: Clock) -> None:
    generated = generate(32)
    record(engine, clock, generated)
    report = erasure.erase(engine, SUBJECT, reason="r", team_id="T0OTHER")
    assert (report.erased, report.scrubbed) == (0, 0)


@pytest.mark.parametrize(
    ("user", "reason", "message"),
    [
        ("not-a-user", "r", "not a Slack user id"),
        ("U0SUBJECT'; DROP TABLE envelopes; --", "r", "not a Slack user id"),
        ("U0%", "r", "not a Slack user id"),
        (SUBJECT, "  ", "needs a reason"),
    ],
)
def test_bad_requests_are_refused_before_anything_changes(
    engine: Engine, user: str, reason: str, message: str
) -> None:
    with pytest.raises(ErasureError, match=message):
        erasure.erase(engine, user, reason=reason)
    assert erasure.read_erasures(engine) == []


def test_subject_lookup_uses_indexes_not_a_payload_scan(engine: Engine) -> None:
    predicate = erasure._subject_filter(SUBJECT, None)
    stmt = sa.select(envelopes.c.envelope_id).where(*predicate)
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
            plan = " ".join(
                str(r[-1]) for r in conn.execute(sa.text(f"EXPLAIN QUERY PLAN {compiled}"))
            )
            assert "ix_envelopes_user_id_received_at" in plan
            assert "ix_envelopes_message_author" in plan
            assert "SCAN envelopes" not in plan
        else:
            conn.execute(sa.text("SET enable_seqscan = off"))
            compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
            plan = "\n".join(r[0] for r in conn.execute(sa.text(f"EXPLAIN {compiled}")))
            assert "ix_envelopes_user_id_received_at" in plan
            assert "ix_envelopes_message_author" in plan


def test_tombstone_and_scrub_are_the_same_text_on_both_engines(
    engine: Engine, clock: Clock
) -> None:
    """The PostgreSQL functions and recorder.tombstone build identical text."""
    generated = generate(48)
    odd = _message_with_awkward_id()
    record(engine, clock, [*generated, odd])
    before = rows(engine)
    report = erasure.erase(engine, SUBJECT, reason="r")
    after = rows(engine)
    for g in [*generated, odd]:
        old, new = before[g.envelope_id], after[g.envelope_id]
        if g.subject:
            with engine.connect() as conn:
                columns = (
                    conn.execute(
                        sa.text("SELECT * FROM envelopes WHERE envelope_id = :id"),
                        {"id": g.envelope_id},
                    )
                    .one()
                    ._asdict()
                )
            expected = tombstone_text(
                envelope_id=g.envelope_id,
                envelope_type=old.envelope_type,
                columns=columns,
                erasure_id=report.erasure_ids[0],
                original_sha256=old.envelope_sha256,
            )
            assert new.envelope_text == expected
        elif g.mentions_subject:
            assert new.envelope_text == scrub(old.envelope_text, SUBJECT)


def _message_with_awkward_id() -> Generated:
    envelope_id = 'odd "id" \\ \t é\u2028\x7f'
    env = {
        "envelope_id": envelope_id,
        "type": "events_api",
        "payload": {
            "team_id": "T0\u00e9\n",
            "event_id": "EvODD",
            "event": {"type": "message", "user": SUBJECT, "channel": "C0\x01", "text": "x"},
        },
    }
    return Generated(envelope_id, env, True, False, "C0\x01")


def test_erased_envelopes_can_be_pruned_and_verify_still_passes(
    engine: Engine, clock: Clock
) -> None:
    """Sealed before and after the erasure, then pruned: the prune log's digest is the original's."""
    generated = generate(96)
    record(engine, clock, generated[:48])
    seal(engine, block_size=16, now=sealed_later(clock))
    clock.now = sealed_later(clock)  # the rest arrive after that seal's cutoff
    erasure.erase(engine, SUBJECT, reason="r")
    record(engine, clock, generated[48:])
    erasure.erase(engine, SUBJECT, reason="again, for the newer ones")
    seal(engine, block_size=16, now=sealed_later(clock))
    assert verify(engine).ok
    retention.set_policy(engine, "short", keep="1d")
    pruned = retention.prune(engine, now=clock.now + dt.timedelta(days=30))
    assert pruned.deleted_total == len(generated)
    report = verify(engine)
    assert report.ok, report.findings[:3]
    assert report.pruned == len(generated)


def test_erasure_covers_the_cold_archive(engine: Engine, clock: Clock, tmp_path: Path) -> None:
    """Envelopes `prune --archive` moved to Parquet are erased there too; the manifest follows."""
    from recorder.archive import ArchiveOptions, open_archive
    from recorder.archive import manifest as archive_manifest
    from recorder.archive.files import file_sha256, read_stats

    generated = generate(120)
    record(engine, clock, generated)
    retention.set_policy(engine, "short", keep="1d")
    directory = tmp_path / "archive"
    retention.prune(
        engine,
        now=clock.now + dt.timedelta(days=30),
        archive=ArchiveOptions(directory, file_rows=50),
    )
    archive = open_archive(directory)
    entries = archive_manifest.entries(engine, archive_id=archive.archive_id)
    members_before = {e.file_name: e.members_sha256 for e in entries}
    before = archived_rows(archive, entries)
    retention.add_hold(engine, "keep-general", reason="r", channel_id="C0GENERAL")

    report = erasure.erase(engine, SUBJECT, reason="request", archive=directory)
    touched = [g for g in generated if g.subject or g.mentions_subject]
    held = [g for g in touched if g.channel == "C0GENERAL"]
    assert report.archived == len(touched) - len(held)
    assert report.archived_held == len(held)
    assert (report.erased, report.scrubbed) == (0, 0)  # nothing left in the database

    entries = archive_manifest.entries(engine, archive_id=archive.archive_id)
    for entry in entries:
        path = archive.file_path(entry.file_name)
        # the manifest follows the rewritten bytes; the members digest never changes
        assert (entry.file_bytes, entry.file_sha256) == file_sha256(path)
        assert read_stats(path).members_sha256 == members_before[entry.file_name]
        assert entry.members_sha256 == members_before[entry.file_name]
    texts = archived_rows(archive, entries)
    for g in generated:
        row = texts[g.envelope_id]
        if g in held or not (g.subject or g.mentions_subject):
            assert row == before[g.envelope_id]
        elif g.subject:
            assert TOMBSTONE_KEY in row["envelope_text"]
            assert row["user_id"] is None
        elif g.mentions_subject:
            assert f"<@{SUBJECT}>" not in row["envelope_text"]
            assert "[erased]" in row["envelope_text"]
    with engine.connect() as conn:
        states = Counter(
            conn.execute(sa.text("SELECT state FROM erased_envelopes")).scalars().all()
        )
    assert states == {"archived": report.archived}
    assert verify(engine).ok
    # the archive's own check accepts exactly the logged erasures too
    from recorder.archive.verify import verify_archive

    checked = verify_archive(engine, directory)
    assert checked.ok, [f.line() for f in checked.findings]


def archived_rows(archive: Any, entries: Any) -> dict[str, dict[str, Any]]:
    rows = {}
    for entry in entries:
        path = archive.file_path(entry.file_name)
        table = pq.read_table(str(path), columns=["envelope_id", "envelope_text", "user_id"])
        for row in table.to_pylist():
            rows[row["envelope_id"]] = row
    return rows
