"""Tamper evidence on PostgreSQL and SQLite: seal, then tamper with raw SQL, then verify names it."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recorder import retention
from recorder.adapter import RecordResult
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.seal import (
    GENESIS_DIGEST,
    SealError,
    latest_block,
    seal,
    text_sha256,
)
from recorder.verify import verify

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    """A settable clock for the recorder's received_at."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def tick(self, seconds: float = 1) -> dt.datetime:
        self.now += dt.timedelta(seconds=seconds)
        return self.now


def envelope(n: int, *, user: str = "U1", channel: str = "C1") -> dict[str, object]:
    return {
        "envelope_id": f"env-{n:04d}",
        "type": "events_api",
        "payload": {
            "team_id": "T1",
            "event_id": f"Ev{n:04d}",
            "event": {"type": "message", "user": user, "channel": channel, "text": f"m{n}"},
        },
    }


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def buffer(engine: Engine, clock: Clock) -> SQLEventBuffer:
    return SQLEventBuffer(engine, clock=clock)


def record_range(buffer: SQLEventBuffer, clock: Clock, numbers: range) -> None:
    for n in numbers:
        clock.tick()
        assert buffer.record(f"env-{n:04d}", envelope(n)) is RecordResult.NEW


def run_sql(engine: Engine, statement: str, **params: object) -> int:
    with engine.begin() as conn:
        return int(conn.execute(sa.text(statement), params).rowcount)


def sealed_now(clock: Clock) -> dt.datetime:
    """A seal time far enough after the clock that every recorded row is behind the margin."""
    return clock.now + dt.timedelta(hours=1)


def test_an_untouched_archive_verifies_and_sealing_is_incremental(
    engine: Engine, buffer: SQLEventBuffer, clock: Clock
) -> None:
    assert verify(engine).ok  # nothing sealed yet is fine
    record_range(buffer, clock, range(25))
    first = seal(engine, block_size=10, now=sealed_now(clock))
    assert [b.envelope_count for b in first.blocks] == [10, 10, 5]
    assert first.blocks[0].prev_digest == GENESIS_DIGEST
    assert [b.prev_digest for b in first.blocks[1:]] == [b.digest for b in first.blocks[:-1]]
    assert seal(engine, block_size=10, now=sealed_now(clock)).blocks == []

    clock.tick(3600)  # later envelopes arrive after the first seal's cutoff
    record_range(buffer, clock, range(25, 32))
    second = seal(engine, block_size=10, now=sealed_now(clock))
    assert [b.block_no for b in second.blocks] == [4]
    assert second.blocks[0].prev_digest == first.blocks[-1].digest
    assert second.blocks[0].first_envelope_id == "env-0025"
    latest = latest_block(engine)
    assert latest is not None
    assert latest.digest == second.blocks[0].digest

    report = verify(engine, anchors=[first.blocks[-1].digest, latest.digest])
    assert report.ok, report.findings
    assert (report.blocks, report.sealed, report.unsealed) == (4, 32, 0)
    assert report.latest_digest == latest.digest


def test_rows_newer_than_the_margin_wait_for_the_next_seal(
    engine: Engine, buffer: SQLEventBuffer, clock: Clock
) -> None:
    record_range(buffer, clock, range(10))
    report = seal(engine, margin=dt.timedelta(seconds=5), now=clock.now)
    # rows received in the last 5 seconds (env-0005 .. env-0009) stay unsealed
    assert report.sealed == 5
    assert report.blocks[-1].last_envelope_id == "env-0004"
    result = verify(engine)
    assert result.ok
    assert result.unsealed == 5


def test_verify_names_modified_deleted_and_forged_envelopes(
    engine: Engine, buffer: SQLEventBuffer, clock: Clock
) -> None:
    record_range(buffer, clock, range(20))
    seal(engine, block_size=8, now=sealed_now(clock))
    assert verify(engine).ok

    # 1. the text edited, its digest column left alone
    run_sql(
        engine,
        "UPDATE envelopes SET envelope_text = replace(envelope_text, 'm3', 'edited') "
        "WHERE envelope_id = 'env-0003'",
    )
    # 2. the text edited and its digest column recomputed to match
    edited = buffer.parse("env-0007", envelope(7, user="U-innocent"))
    run_sql(
        engine,
        "UPDATE envelopes SET envelope_text = :text, envelope_sha256 = :sha, user_id = :user "
        "WHERE envelope_id = 'env-0007'",
        text=edited.text,
        sha=edited.sha256,
        user="U-innocent",
    )
    # 3. a row deleted outside any prune
    assert run_sql(engine, "DELETE FROM envelopes WHERE envelope_id = 'env-0011'") == 1
    # 4. a forged row slipped into the sealed range
    forger = SQLEventBuffer(engine, clock=lambda: T0 + dt.timedelta(seconds=5, milliseconds=1))
    assert forger.record("forged-1", {"type": "events_api", "payload": {}}) is RecordResult.NEW
    # 5. only a reporting column changed
    run_sql(engine, "UPDATE envelopes SET channel_id = 'C-other' WHERE envelope_id = 'env-0015'")

    report = verify(engine)
    assert not report.ok
    assert report.of_kind("modified") == {"env-0003", "env-0007", "env-0015"}
    assert report.of_kind("deleted") == {"env-0011"}
    assert report.of_kind("inserted") == {"forged-1"}
    assert not [f for f in report.findings if f.kind == "chain"]
    details = {f.envelope_id: f.detail for f in report.findings}
    assert "sealed in block" in details["env-0007"]
    assert "channel_id" in details["env-0015"]
    assert "no logged prune" in details["env-0011"]


def test_edits_to_the_queryable_copy_and_received_at_are_modifications(
    engine: Engine, buffer: SQLEventBuffer, clock: Clock
) -> None:
    record_range(buffer, clock, range(6))
    seal(engine, now=sealed_now(clock))
    if engine.dialect.name == "postgresql":
        update_copy = (
            "UPDATE envelopes SET envelope = jsonb_set(envelope, '{payload,event,text}', "
            "'\"rewritten\"') WHERE envelope_id = 'env-0001'"
        )
    else:
        update_copy = (
            "UPDATE envelopes SET envelope = json_set(envelope, '$.payload.event.text', "
            "'rewritten') WHERE envelope_id = 'env-0001'"
        )
    assert run_sql(engine, update_copy) == 1
    # move a row to an earlier time inside the sealed range
    run_sql(engine, "DELETE FROM envelopes WHERE envelope_id = 'env-0005'")
    shifted = SQLEventBuffer(engine, clock=lambda: T0 + dt.timedelta(milliseconds=500))
    assert shifted.record("env-0005", envelope(5)) is RecordResult.NEW
    report = verify(engine)
    assert report.of_kind("modified") == {"env-0001", "env-0005"}
    by_id = {f.envelope_id: f.detail for f in report.findings if f.kind == "modified"}
    assert "queryable" in by_id["env-0001"]
    assert "received_at changed" in by_id["env-0005"]


def test_a_logged_prune_keeps_verification_passing(
    engine: Engine, buffer: SQLEventBuffer, clock: Clock
) -> None:
    record_range(buffer, clock, range(30))
    seal(engine, block_size=7, now=sealed_now(clock))
    retention.set_policy(engine, "short", keep=dt.timedelta(seconds=10), now=clock.now)
    pruned = retention.prune(engine, now=T0 + dt.timedelta(seconds=15), batch_size=4)
    assert pruned.deleted_total == 4  # env-0000 .. env-0003 (received at T0+1s .. T0+4s)
    report = verify(engine)
    assert report.ok, report.findings
    assert report.pruned == 4
    assert report.sealed == 30
    # a row deleted by hand afterwards is still caught
    run_sql(engine, "DELETE FROM envelopes WHERE envelope_id = 'env-0020'")
    assert verify(engine).of_kind("deleted") == {"env-0020"}


def test_a_prune_log_row_with_another_digest_does_not_excuse_a_deletion(
    engine: Engine, buffer: SQLEventBuffer, clock: Clock
) -> None:
    record_range(buffer, clock, range(10))
    seal(engine, now=sealed_now(clock))
    run_sql(
        engine,
        "UPDATE envelopes SET envelope_text = replace(envelope_text, 'm2', 'x'), "
        "envelope_sha256 = 'feed' WHERE envelope_id = 'env-0002'",
    )
    retention.set_policy(engine, "short", keep=dt.timedelta(seconds=1), now=clock.now)
    retention.prune(engine, now=T0 + dt.timedelta(seconds=4, milliseconds=500))
    report = verify(engine)
    assert report.of_kind("modified") == {"env-0002"}
    assert "changed before it was pruned" in report.findings[0].detail


def test_edits_to_the_seal_tables_break_the_chain_and_anchors_catch_rewrites(
    engine: Engine, buffer: SQLEventBuffer, clock: Clock
) -> None:
    record_range(buffer, clock, range(12))
    first = seal(engine, block_size=4, now=sealed_now(clock))
    anchor = first.blocks[-1].digest
    # hide an edit by rewriting the sealed digest too
    run_sql(
        engine,
        "UPDATE envelopes SET envelope_text = replace(envelope_text, 'm5', 'x') "
        "WHERE envelope_id = 'env-0005'",
    )
    with engine.begin() as conn:
        text = conn.execute(
            sa.text("SELECT envelope_text FROM envelopes WHERE envelope_id = 'env-0005'")
        ).scalar_one()
    run_sql(
        engine,
        "UPDATE sealed_envelopes SET envelope_sha256 = :sha WHERE envelope_id = 'env-0005'",
        sha=text_sha256(text),
    )
    copy = "CAST(:text AS jsonb)" if engine.dialect.name == "postgresql" else ":text"
    run_sql(
        engine,
        f"UPDATE envelopes SET envelope_sha256 = :sha, envelope = {copy} "
        "WHERE envelope_id = 'env-0005'",
        sha=text_sha256(text),
        text=text,
    )
    report = verify(engine)
    chain = [f for f in report.findings if f.kind == "chain"]
    assert [f.block_no for f in chain] == [2]
    assert "digest does not match" in chain[0].detail

    # rewrite every block from there on: the chain is whole again, the anchor is not in it
    run_sql(engine, "DELETE FROM sealed_envelopes")
    run_sql(engine, "DELETE FROM seal_blocks")
    seal(engine, block_size=4, now=sealed_now(clock))
    rewritten = verify(engine, anchors=[anchor])
    assert [f.kind for f in rewritten.findings] == ["anchor"]
    assert verify(engine).ok


def test_members_listed_under_a_block_the_chain_does_not_hold_are_reported(
    engine: Engine, buffer: SQLEventBuffer, clock: Clock
) -> None:
    """sealed_envelopes has no foreign key to seal_blocks (migration 0010): verify checks it.

    A forged row with a stray member row of its own would otherwise pass as
    sealed, on every verify path.
    """
    record_range(buffer, clock, range(8))
    seal(engine, block_size=4, now=sealed_now(clock))
    forger = SQLEventBuffer(engine, clock=lambda: T0 + dt.timedelta(seconds=3, milliseconds=1))
    assert forger.record("forged-1", {"type": "events_api", "payload": {}}) is RecordResult.NEW
    assert verify(engine).of_kind("inserted") == {"forged-1"}
    with engine.begin() as conn:
        at, sha = conn.execute(
            sa.text(
                "SELECT received_at, envelope_sha256 FROM envelopes WHERE envelope_id = 'forged-1'"
            )
        ).one()
    for block_no in (0, 99):
        run_sql(
            engine,
            "INSERT INTO sealed_envelopes (block_no, position, envelope_id, received_at, "
            "envelope_sha256) VALUES (:block_no, 0, 'forged-1', :at, :sha)",
            block_no=block_no,
            at=at,
            sha=sha,
        )
        for server_side in (True, False):
            report = verify(engine, server_side=server_side)
            stray = [f for f in report.findings if f.kind == "chain"]
            assert [f.block_no for f in stray] == [block_no], report.findings
            assert "1 sealed envelope listed under block" in stray[0].detail
        run_sql(engine, "DELETE FROM sealed_envelopes WHERE block_no = :n", n=block_no)

    # a block removed from inside the chain leaves its members stray as well
    assert verify(engine).of_kind("inserted") == {"forged-1"}
    run_sql(engine, "DELETE FROM seal_blocks WHERE block_no = 1")
    for server_side in (True, False):
        report = verify(engine, server_side=server_side)
        assert any(
            f.block_no == 1 and "4 sealed envelopes listed under block 1" in f.detail
            for f in report.findings
        ), report.findings


def test_late_writes_are_reported_as_inserted_and_can_be_adopted(
    engine: Engine, buffer: SQLEventBuffer, clock: Clock
) -> None:
    record_range(buffer, clock, range(10))
    seal(engine, now=sealed_now(clock))
    # a bot whose clock is an hour behind writes after the seal
    skewed = SQLEventBuffer(engine, clock=lambda: T0 + dt.timedelta(seconds=3, microseconds=7))
    assert skewed.record("late-1", {"type": "events_api", "payload": {}}) is RecordResult.NEW
    report = verify(engine)
    assert report.of_kind("inserted") == {"late-1"}
    assert "clock behind" in report.findings[0].detail
    assert seal(engine, now=sealed_now(clock)).blocks == []  # never adopted silently
    adopted = seal(engine, adopt_late=["late-1"], now=sealed_now(clock))
    assert [(b.kind, b.envelope_count) for b in adopted.blocks] == [("late", 1)]
    assert verify(engine).ok


def test_sealing_while_another_thread_records_is_safe(database_url: str) -> None:
    engine = create_engine(database_url)
    writer = SQLEventBuffer(engine)
    stop = threading.Event()
    written: list[str] = []
    errors: list[BaseException] = []

    def write() -> None:
        n = 0
        try:
            while not stop.is_set() and n < 3000:
                envelope_id = f"live-{n}"
                assert writer.record(envelope_id, {"type": "x", "n": n}) is RecordResult.NEW
                written.append(envelope_id)
                n += 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    blocks = 0
    try:
        # A 3 s margin: far more than a write takes to commit, even on a busy machine.
        for _ in range(14):
            blocks += len(seal(engine, margin=dt.timedelta(seconds=3), block_size=50).blocks)
            stop.wait(0.4)
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert blocks > 1  # sealing really ran while the writer wrote
    final = seal(engine, margin=dt.timedelta(0), now=dt.datetime.now(UTC) + dt.timedelta(seconds=1))
    report = verify(engine)
    assert report.ok, report.findings[:5]
    assert report.sealed == len(written)
    assert blocks + len(final.blocks) == report.blocks
    engine.dispose()


def test_block_size_and_margin_are_checked(engine: Engine) -> None:
    with pytest.raises(SealError, match="block size"):
        seal(engine, block_size=0)
    with pytest.raises(SealError, match="margin"):
        seal(engine, margin=dt.timedelta(seconds=-1))


def test_envelopes_jsonb_cannot_hold_verify_through_their_exact_text(
    engine: Engine, buffer: SQLEventBuffer, clock: Clock
) -> None:
    hostile = '{"envelope_id":"nul-1","type":"x","a":"nul\\u0000","b":"\\udc00","n":1.50}'
    clock.tick()
    assert buffer.record("nul-1", hostile) is RecordResult.NEW
    clock.tick()
    assert buffer.record("num-1", '{"type":"x","n":1e3,"m":[1.0, 2.50]}') is RecordResult.NEW
    seal(engine, now=sealed_now(clock))
    assert verify(engine).ok
    if engine.dialect.name == "postgresql":
        edit = "UPDATE envelopes SET envelope = jsonb_set(envelope, '{a}', '\"nul\"')"
    else:
        edit = "UPDATE envelopes SET envelope = json_set(envelope, '$.a', 'nul')"
    run_sql(engine, f"{edit} WHERE envelope_id = 'nul-1'")
    assert verify(engine).of_kind("modified") == {"nul-1"}


def test_rows_dated_in_the_future_are_reported_before_they_could_be_sealed(
    engine: Engine, buffer: SQLEventBuffer, clock: Clock
) -> None:
    record_range(buffer, clock, range(3))
    seal(engine, now=sealed_now(clock))
    ahead = SQLEventBuffer(engine, clock=lambda: clock.now + dt.timedelta(days=2))
    assert ahead.record("future-1", {"type": "x"}) is RecordResult.NEW
    report = verify(engine, now=sealed_now(clock))
    assert report.of_kind("inserted") == {"future-1"}
    assert "in the future" in report.findings[0].detail
    # within the tolerance, a writer slightly ahead is fine
    assert verify(engine, now=clock.now + dt.timedelta(days=2)).ok


def test_a_row_backdated_behind_the_sealed_cutoff_is_inserted_and_never_adopted_silently(
    engine: Engine, buffer: SQLEventBuffer, clock: Clock
) -> None:
    """Issue 8, item 2: a bot whose clock runs behind writes after a seal.

    Its row is dated after the last sealed envelope but before the cutoff the
    seal ran to, so no range block can hold it in order: verify names it, and
    seal leaves it alone until an operator names it.
    """
    record_range(buffer, clock, range(10))
    first = seal(engine, now=sealed_now(clock))
    assert first.blocks[-1].cutoff == sealed_now(clock) - dt.timedelta(seconds=60)
    behind = SQLEventBuffer(engine, clock=lambda: clock.now + dt.timedelta(minutes=30))
    assert behind.record("behind-1", {"type": "events_api", "payload": {}}) is RecordResult.NEW

    report = verify(engine)
    assert not report.ok
    assert report.of_kind("inserted") == {"behind-1"}
    assert "--adopt-late behind-1" in report.findings[0].detail

    # the next seal runs later still: it seals what is new, never the backdated row
    clock.tick(7200)
    record_range(buffer, clock, range(10, 12))
    later = seal(engine, now=sealed_now(clock))
    assert later.sealed == 2
    assert verify(engine).of_kind("inserted") == {"behind-1"}

    # naming anything but a late row adopts nothing
    for wrong in (["env-0011"], ["behind-1", "no-such-row"]):
        with pytest.raises(SealError, match="cannot adopt 1 of the"):
            seal(engine, adopt_late=wrong, now=sealed_now(clock))
    with pytest.raises(SealError, match="collection of envelope ids"):
        seal(engine, adopt_late="behind-1", now=sealed_now(clock))
    assert verify(engine).of_kind("inserted") == {"behind-1"}

    adopted = seal(engine, adopt_late=["behind-1"], now=sealed_now(clock))
    assert [(b.kind, b.envelope_count) for b in adopted.blocks] == [("late", 1)]
    assert verify(engine).ok


def test_a_seal_run_stopped_between_blocks_leaves_no_false_alarm(
    engine: Engine, buffer: SQLEventBuffer, clock: Clock
) -> None:
    """Blocks before the last of a run claim only their own keys, not the run's cutoff."""
    record_range(buffer, clock, range(7))
    cutoff_at = sealed_now(clock)
    seal(engine, block_size=3, now=cutoff_at)
    # simulate a run that stopped after its first block: drop the blocks after it
    run_sql(engine, "DELETE FROM sealed_envelopes WHERE block_no > 1")
    run_sql(engine, "DELETE FROM seal_blocks WHERE block_no > 1")
    report = verify(engine)
    assert report.ok, report.findings
    assert report.unsealed == 4
    resumed = seal(engine, block_size=3, now=cutoff_at)
    assert [b.cutoff for b in resumed.blocks] == [None, cutoff_at - dt.timedelta(seconds=60)]
    assert verify(engine).ok


def test_ids_json_escapes_are_sealed_and_verified_on_every_path(
    engine: Engine, buffer: SQLEventBuffer, clock: Clock
) -> None:
    """The server renders plain ids itself; a block with any other id is sealed in Python."""
    odd = ['quote"d', "back\\slash", "caf\u00e9", "tab\there", "emoji-\U0001f600"]
    record_range(buffer, clock, range(3))
    for n, envelope_id in enumerate(odd):
        clock.tick()
        assert buffer.record(envelope_id, {"type": "x", "n": n}) is RecordResult.NEW
    record_range(buffer, clock, range(3, 6))
    report = seal(engine, block_size=4, now=sealed_now(clock))
    assert [b.envelope_count for b in report.blocks] == [4, 4, 3]
    result = verify(engine)
    assert result.ok, result.findings
    assert result.sealed == 11
    run_sql(
        engine, "UPDATE sealed_envelopes SET envelope_sha256 = 'x' WHERE envelope_id = 'caf\u00e9'"
    )
    assert [f.block_no for f in verify(engine).findings if f.kind == "chain"] == [2]
