"""The fast verify against a straightforward reference check, over random tampering.

``verify`` pushes its per-row work into PostgreSQL and only judges what the
server flags; a case the server wrongly certified would be a tampered row
nobody reports. This test tampers with a sealed archive at random (hypothesis
picks the rows and the kinds of tampering), then compares the findings of
``verify`` (server side on PostgreSQL, the row-by-row walk too) with a
reference written from the rules alone: everything read into Python, every
rule applied to every row, no cleverness.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.envelope import stored_columns
from recorder.errors import InvalidEnvelope
from recorder.schema import (
    REPORTING_COLUMNS,
    envelopes,
    pruned_envelopes,
    seal_blocks,
    sealed_envelopes,
)
from recorder.seal import DEFAULT_MARGIN, GENESIS_DIGEST, Member, block_digest, seal, text_sha256
from recorder.verify import verify

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 1, tzinfo=UTC)
ROWS = 2000
SEALED_AT = T0 + dt.timedelta(seconds=ROWS // 4)  # the first half of the rows
NOW = T0 + dt.timedelta(days=1)

Key = tuple[str, str | None, int | None]


def envelope(n: int) -> dict[str, Any]:
    kind = n % 4
    if kind == 0:
        return {
            "envelope_id": f"e{n:05d}",
            "type": "events_api",
            "retry_attempt": n % 3,
            "retry_reason": "timeout" if n % 3 else "",
            "payload": {
                "team_id": "T1",
                "event_id": f"Ev{n:05d}",
                "authorizations": [{"team_id": "T1", "enterprise_id": "E1"}],
                "event": {"type": "message", "user": f"U{n % 7}", "channel": f"C{n % 5}"},
            },
        }
    if kind == 1:
        return {
            "envelope_id": f"e{n:05d}",
            "type": "slash_commands",
            "payload": {"team_id": "T1", "channel_id": "C1", "user_id": "U1", "command": "/x"},
        }
    if kind == 2:
        return {
            "envelope_id": f"e{n:05d}",
            "type": "interactive",
            "payload": {
                "type": "block_actions",
                "team": {"id": "T2", "enterprise_id": "E2"},
                "user": {"id": f"U{n % 3}"},
                "channel": {"id": "C9"},
            },
        }
    return {
        "envelope_id": f"e{n:05d}",
        "type": "events_api",
        "payload": {
            "event": {
                "type": "message",
                "subtype": "message_changed",
                "channel": "C3",
                "message": {"user": "U-author", "text": "edited"},
            },
        },
    }


# Each tampering is (kind, row number); applied with raw SQL, as an owner would.
TAMPERING = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "text",
                "text_and_digest",
                "column",
                "copy",
                "delete",
                "move",
                "forge_behind",
                "forge_future",
                "member_digest",
                "not_json",
                "retry_exponent",
                "duplicate_key",
                "column_null",
                "retry_twice",
                "retry_nested",
                "number_column",
                "copy_respelled",
            ]
        ),
        st.integers(0, ROWS - 1),
    ),
    min_size=1,
    max_size=12,
)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def build_archive(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in ("sealed_envelopes", "seal_blocks", "pruned_envelopes", "envelopes"):
            conn.execute(sa.text(f"DELETE FROM {table}"))
    buffer = SQLEventBuffer(engine)
    parsed = [buffer.parse(f"e{n:05d}", envelope(n)) for n in range(ROWS)]
    times = [T0 + dt.timedelta(seconds=n // 2, microseconds=n) for n in range(ROWS)]
    for start in range(0, ROWS, 500):
        buffer.record_many(parsed[start : start + 500], received_at=times[start : start + 500])
    # Half the archive sealed; the rest arrives later and waits for the next seal.
    seal(engine, block_size=300, now=SEALED_AT + DEFAULT_MARGIN)


def tamper(engine: Engine, kind: str, n: int) -> None:
    postgres = engine.dialect.name == "postgresql"
    envelope_id = f"e{n:05d}"
    at = T0 + dt.timedelta(seconds=n // 2, microseconds=n)

    def copy_of(param: str) -> str:
        # The queryable copy rewritten to match the new text, so that only the
        # reporting columns can give the change away.
        return f"CAST(CAST(:{param} AS text) AS jsonb)" if postgres else f":{param}"

    run = {
        "text": "UPDATE envelopes SET envelope_text = replace(envelope_text, 'T1', 'T7') "
        "WHERE envelope_id = :id",
        "text_and_digest": "UPDATE envelopes SET envelope_text = :text, envelope_sha256 = :sha "
        "WHERE envelope_id = :id",
        "column": "UPDATE envelopes SET channel_id = 'C-moved' WHERE envelope_id = :id",
        "copy": (
            "UPDATE envelopes SET envelope = jsonb_set(envelope, '{type}', '\"other\"') "
            if postgres
            else "UPDATE envelopes SET envelope = json_set(envelope, '$.type', 'other') "
        )
        + "WHERE envelope_id = :id",
        "delete": "DELETE FROM envelopes WHERE envelope_id = :id",
        "move": "UPDATE envelopes SET received_at = :moved WHERE envelope_id = :id",
        "member_digest": "UPDATE sealed_envelopes SET envelope_sha256 = :fake "
        "WHERE envelope_id = :id",
        "not_json": "UPDATE envelopes SET envelope_text = :broken, envelope_sha256 = :broken_sha "
        "WHERE envelope_id = :id",
        "retry_exponent": "UPDATE envelopes SET envelope_text = :exp_text, "
        "envelope_sha256 = :exp_sha, retry_attempt = 1 WHERE envelope_id = :id",
        "duplicate_key": "UPDATE envelopes SET envelope_text = :dup_text, "
        "envelope_sha256 = :dup_sha WHERE envelope_id = :id",
        # Cases the server's quick test must leave to the exact one: a column
        # emptied, a value the text holds twice or only nested, a number
        # where the column holds its digits.
        "column_null": "UPDATE envelopes SET team_id = NULL WHERE envelope_id = :id",
        "retry_twice": "UPDATE envelopes SET envelope_text = :twice_text, "
        f"envelope = {copy_of('twice_text')}, envelope_sha256 = :twice_sha, retry_attempt = 1 "
        "WHERE envelope_id = :id",
        "retry_nested": "UPDATE envelopes SET envelope_text = :nested_text, "
        f"envelope = {copy_of('nested_text')}, envelope_sha256 = :nested_sha, "
        "retry_attempt = 2 WHERE envelope_id = :id",
        "number_column": "UPDATE envelopes SET envelope_text = :number_text, "
        f"envelope = {copy_of('number_text')}, envelope_sha256 = :number_sha, team_id = '123' "
        "WHERE envelope_id = :id",
        # The same value spelled otherwise in the copy (1.0 for 1): not a finding.
        "copy_respelled": "UPDATE envelopes SET envelope_text = :number_text, "
        "envelope_sha256 = :number_sha, "
        + (
            "envelope = jsonb_set(CAST(CAST(:number_text AS text) AS jsonb), '{n}', '1.0') "
            if postgres
            else "envelope = json_set(:number_text, '$.n', 1.0) "
        )
        + "WHERE envelope_id = :id",
    }
    changed = json.dumps({**envelope(n), "extra": "x"}, separators=(",", ":"))
    exponent = json.dumps({**envelope(n), "retry_attempt": 0}, separators=(",", ":")).replace(
        '"retry_attempt":0', '"retry_attempt":1e0'
    )
    duplicate = '{"type":"x",' + json.dumps(envelope(n), separators=(",", ":"))[1:]
    compact = (",", ":")
    twice = json.dumps({**envelope(n), "retry_attempt": 1}, separators=compact)[:-1]
    twice += ',"retry_attempt":1.0}'
    plain = {k: v for k, v in envelope(n).items() if k != "retry_attempt"}
    nested = json.dumps(
        {**plain, "payload": {**plain["payload"], "retry_attempt": 2}}, separators=compact
    )
    number = json.dumps(
        {**envelope(n), "n": 1, "payload": {**envelope(n)["payload"], "team_id": 123}},
        separators=compact,
    )
    params = {
        "id": envelope_id,
        "text": changed,
        "sha": text_sha256(changed),
        "moved": at + dt.timedelta(seconds=3),
        "fake": "0" * 64,
        "broken": '{"type": NaN}',
        "broken_sha": text_sha256('{"type": NaN}'),
        "exp_text": exponent,
        "exp_sha": text_sha256(exponent),
        "dup_text": duplicate,
        "dup_sha": text_sha256(duplicate),
        "twice_text": twice,
        "twice_sha": text_sha256(twice),
        "nested_text": nested,
        "nested_sha": text_sha256(nested),
        "number_text": number,
        "number_sha": text_sha256(number),
    }
    if kind in ("forge_behind", "forge_future"):
        when = (
            at - dt.timedelta(microseconds=1)
            if kind == "forge_behind"
            else NOW + (dt.timedelta(days=3))
        )
        forger = SQLEventBuffer(engine, clock=lambda: when)
        forger.record(f"forged-{kind}-{n}", {"type": "events_api", "payload": {"n": n}})
        return
    with engine.begin() as conn:
        conn.execute(sa.text(run[kind]), params)


def reference(engine: Engine) -> set[Key]:
    """Every rule of verify, applied to everything, in plain Python."""
    postgres = engine.dialect.name == "postgresql"
    e = envelopes.c
    with engine.connect() as conn:
        blocks = conn.execute(sa.select(seal_blocks).order_by(seal_blocks.c.block_no)).all()
        members = conn.execute(
            sa.select(sealed_envelopes).order_by(
                sealed_envelopes.c.block_no, sealed_envelopes.c.position
            )
        ).all()
        rows = {
            r.envelope_id: r
            for r in conn.execute(
                sa.select(
                    e.envelope_id,
                    e.received_at,
                    e.envelope_text,
                    e.envelope_sha256,
                    sa.cast(e.envelope, sa.Text).label("copy"),
                    *(e[name] for name in REPORTING_COLUMNS),
                )
            )
        }
        pruned = {
            (r.envelope_id, r.received_at): r.envelope_sha256
            for r in conn.execute(sa.select(pruned_envelopes))
        }
    found: set[Key] = set()
    by_block: dict[int, list[Any]] = {}
    for member_row in members:
        by_block.setdefault(member_row.block_no, []).append(member_row)
    prev = GENESIS_DIGEST
    for expected, b in enumerate(blocks, start=1):
        ms = [
            Member(m.envelope_id, m.received_at, m.envelope_sha256)
            for m in by_block.get(b.block_no, [])
        ]
        if not ms:
            found.add(("chain", None, b.block_no))
            prev = b.digest
            continue
        digest = block_digest(
            block_no=b.block_no,
            kind=b.kind,
            sealed_at=b.sealed_at,
            cutoff=b.cutoff,
            prev_digest=b.prev_digest,
            members=ms,
        )
        if (
            b.block_no != expected
            or b.prev_digest != prev
            or digest != b.digest
            or len(ms) != b.envelope_count
            or (ms[0].received_at, ms[0].envelope_id) != (b.first_received_at, b.first_envelope_id)
            or (ms[-1].received_at, ms[-1].envelope_id) != (b.last_received_at, b.last_envelope_id)
        ):
            found.add(("chain", None, b.block_no))
        prev = b.digest
        for m in ms:
            row = rows.get(m.envelope_id)
            if row is not None and row.received_at == m.received_at:
                if text_sha256(row.envelope_text) != m.sha256 or not consistent(row, postgres):
                    found.add(("modified", m.envelope_id, b.block_no))
            elif pruned.get((m.envelope_id, m.received_at)) == m.sha256:
                continue
            elif row is not None or (m.envelope_id, m.received_at) in pruned:
                found.add(("modified", m.envelope_id, b.block_no))
            else:
                found.add(("deleted", m.envelope_id, b.block_no))
    sealed = {(m.envelope_id, m.received_at) for m in members}
    newest = [b for b in blocks if b.kind == "range"][-1]
    for row in rows.values():
        if newest.cutoff is not None:
            behind = row.received_at <= newest.cutoff
        else:
            behind = (row.received_at, row.envelope_id.encode()) <= (
                newest.last_received_at,
                newest.last_envelope_id.encode(),
            )
        if behind and (row.envelope_id, row.received_at) in sealed:
            continue
        if behind or row.received_at > NOW + DEFAULT_MARGIN:
            found.add(("inserted", row.envelope_id, None))
        if not consistent(row, postgres):
            found.add(("modified", row.envelope_id, None))
    return found


def consistent(row: Any, postgres: bool) -> bool:
    if row.envelope_sha256 != text_sha256(row.envelope_text):
        return False
    try:
        columns, queryable = stored_columns(row.envelope_id, row.envelope_text)
    except InvalidEnvelope:
        return False
    if any(getattr(row, name) != columns[name] for name in REPORTING_COLUMNS):
        return False
    if row.copy == queryable:
        return True
    try:
        copy = json.loads(row.copy, parse_float=Decimal, parse_int=Decimal)
        return bool(copy == json.loads(queryable, parse_float=Decimal, parse_int=Decimal))
    except ValueError:
        return False


def keys(report: Any) -> set[Key]:
    return {(f.kind, f.envelope_id, f.block_no) for f in report.findings}


def test_an_untouched_archive_has_no_findings_either_way(engine: Engine) -> None:
    build_archive(engine)
    assert reference(engine) == set()
    report = verify(engine, now=NOW)
    assert report.ok, report.findings[:3]
    assert (report.sealed, report.unsealed) == (ROWS // 2, ROWS // 2)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tampering=TAMPERING)
@example(  # the server's fallbacks: a text it cannot cast, cases it must not certify
    tampering=[("not_json", 10), ("retry_exponent", 20), ("duplicate_key", 1200), ("copy", 1500)]
)
@example(
    tampering=[
        ("column_null", 4),
        ("retry_twice", 9),  # slash commands: every other column passes the quick test
        ("retry_twice", 1209),
        ("retry_nested", 1205),
        ("number_column", 1201),
        ("copy_respelled", 12),
        ("copy_respelled", 1300),
    ]
)
def test_fast_verify_names_exactly_what_the_reference_names(
    engine: Engine, tampering: list[tuple[str, int]]
) -> None:
    build_archive(engine)
    for kind, n in tampering:
        tamper(engine, kind, n)
    expected = reference(engine)
    fast = verify(engine, now=NOW)
    assert keys(fast) == expected
    # Three connections on PostgreSQL, each checking a part inside one snapshot.
    parallel = verify(engine, now=NOW, workers=3)
    assert keys(parallel) == expected
    assert (parallel.sealed, parallel.pruned, parallel.unsealed) == (
        fast.sealed,
        fast.pruned,
        fast.unsealed,
    )
    walked = verify(engine, now=NOW, server_side=False)
    assert keys(walked) == expected
    assert (fast.sealed, fast.pruned, fast.unsealed) == (
        walked.sealed,
        walked.pruned,
        walked.unsealed,
    )
