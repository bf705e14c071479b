"""The import and audit-query library paths on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from recorder import audit
from recorder.adapters.sql import SQLEventBuffer
from recorder.audit import QuerySpec, query_envelopes
from recorder.errors import StorageUnavailable
from recorder.importer import import_envelopes
from recorder.testing.faults import TcpProxy

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def envelope(
    n: int,
    *,
    team: str = "T1",
    channel: str = "C1",
    user: str = "U1",
    event_type: str = "message",
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "envelope_id": f"env-{n:04d}",
        "type": "events_api",
        "accepts_response_payload": False,
        "retry_attempt": 0,
        "payload": {
            "team_id": team,
            "event_id": event_id or f"Ev{n:04d}",
            "event": {"type": event_type, "channel": channel, "user": user, "text": f"hi {n} é 🎉"},
        },
    }


class StepClock:
    """A clock that moves one second per call, from T0 (or holds still)."""

    def __init__(self, step: dt.timedelta = dt.timedelta(seconds=1)) -> None:
        self._times: Iterator[dt.datetime] = (T0 + i * step for i in itertools.count())

    def __call__(self) -> dt.datetime:
        return next(self._times)


def lines_of(*envelopes: dict[str, Any]) -> list[bytes]:
    return [json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in envelopes]


def test_import_counts_new_duplicate_and_rejected_lines(database_url: str) -> None:
    good = lines_of(*(envelope(i) for i in range(7)))
    retry = lines_of({**envelope(99, event_id="Ev0003"), "retry_attempt": 1})
    lines = [*good[:3], b"{not json\n", b"\n", b"   \r\n", *good[3:], good[1], *retry]
    errors: list[tuple[int, str]] = []
    progress: list[int] = []
    with SQLEventBuffer(database_url) as buffer:
        report = import_envelopes(
            buffer,
            lines,
            batch_size=3,
            on_error=lambda n, m: errors.append((n, m)),
            on_progress=progress.append,
        )
        stored = [r.envelope_text for r in query_envelopes(buffer.engine, QuerySpec())]
    assert (report.new, report.duplicate, report.rejected) == (7, 2, 1)
    assert report.counts() == "imported: 7 new, 2 duplicate, 1 rejected"
    assert "stored as handled" in report.summary()
    assert errors == report.errors
    assert [n for n, _ in errors] == [4]
    assert "not valid JSON" in errors[0][1]
    assert sum(progress) == sum(len(line) for line in lines)
    assert sorted(stored) == sorted(line.rstrip(b"\n").decode() for line in good)


def test_import_keeps_lines_around_one_the_database_refuses(database_url: str) -> None:
    # 1e1000000 is valid JSON text that PostgreSQL's jsonb cannot hold; SQLite keeps it as text.
    lines = [*lines_of(envelope(1), envelope(2)), b'{"envelope_id":"huge","x":1e1000000}\n']
    lines += lines_of(envelope(3))
    with SQLEventBuffer(database_url) as buffer:
        report = import_envelopes(buffer, lines, batch_size=10)
        ids = [r.envelope_id for r in query_envelopes(buffer.engine, QuerySpec())]
    if database_url.startswith("postgresql"):
        assert (report.new, report.rejected) == (3, 1)
        assert report.errors[0][0] == 3
        assert "refused" in report.errors[0][1]
        assert "huge" not in ids
    else:
        assert (report.new, report.rejected) == (4, 0)
    assert {"env-0001", "env-0002", "env-0003"} <= set(ids)


def test_import_rejects_oversized_lines_with_the_limit(database_url: str) -> None:
    big = {**envelope(2), "padding": "x" * 5000}
    with SQLEventBuffer(database_url, max_envelope_bytes=4096) as buffer:
        report = import_envelopes(buffer, lines_of(envelope(1), big, envelope(3)))
    assert (report.new, report.rejected) == (2, 1)
    assert report.errors[0][0] == 2
    assert "4,096" in report.errors[0][1]


def test_query_streams_every_row_once_across_pages_with_equal_times(database_url: str) -> None:
    # Ten rows share each timestamp, so pages break inside a run of equal
    # received_at values: the envelope_id tie-breaker must carry the cursor.
    clock = StepClock(dt.timedelta(0))
    with SQLEventBuffer(database_url, clock=clock) as buffer:
        for i in range(25):
            buffer.record(f"env-{i:04d}", envelope(i))
        rows = list(query_envelopes(buffer.engine, QuerySpec(), page_size=4))
        limited = list(query_envelopes(buffer.engine, QuerySpec(limit=9), page_size=4))
        none = list(query_envelopes(buffer.engine, QuerySpec(limit=0), page_size=4))
    assert [r.envelope_id for r in rows] == [f"env-{i:04d}" for i in range(25)]
    assert [r.envelope_id for r in limited] == [f"env-{i:04d}" for i in range(9)]
    assert none == []


def test_query_filters(database_url: str) -> None:
    with SQLEventBuffer(database_url, clock=StepClock(dt.timedelta(hours=1))) as buffer:
        buffer.record("env-0000", envelope(0, team="T1", channel="C1", user="U1"))
        buffer.record("env-0001", envelope(1, team="T2", channel="C1", user="U2"))
        buffer.record("env-0002", envelope(2, team="T1", channel="C2", user="U1"))
        buffer.record("env-0003", envelope(3, event_type="reaction_added", channel="C2"))
        buffer.record(
            "cmd",
            {
                "envelope_id": "cmd",
                "type": "slash_commands",
                "payload": {"team_id": "T1", "channel_id": "C1", "user_id": "U9", "command": "/x"},
            },
        )

        def ids(**spec: Any) -> list[str]:
            return [r.envelope_id for r in query_envelopes(buffer.engine, QuerySpec(**spec))]

        assert ids(team_id="T2") == ["env-0001"]
        assert ids(channel_id="C2") == ["env-0002", "env-0003"]
        assert ids(user_id="U1") == ["env-0000", "env-0002", "env-0003"]
        assert ids(envelope_type="slash_commands") == ["cmd"]
        assert ids(event_type="/x") == ["cmd"]
        assert ids(event_type="reaction_added") == ["env-0003"]
        assert ids(since=T0 + dt.timedelta(hours=2)) == ["env-0002", "env-0003", "cmd"]
        assert ids(until=T0 + dt.timedelta(hours=2)) == ["env-0000", "env-0001"]
        assert ids(team_id="T1", channel_id="C1") == ["env-0000", "cmd"]
        assert ids(team_id="nobody") == []


def test_formats_round_trip(database_url: str) -> None:
    sent = [json.dumps(envelope(i), ensure_ascii=i % 2 == 0) for i in range(3)]
    sent.append('{"envelope_id":"nul","type":"events_api","text":"a\\u0000b \\ud800"}')
    with SQLEventBuffer(database_url) as buffer:
        import_envelopes(buffer, [s.encode() for s in sent])
        rows = list(query_envelopes(buffer.engine, QuerySpec()))

    jsonl = io.BytesIO()
    assert audit.export(rows, "jsonl", jsonl) == 4
    assert sorted(jsonl.getvalue().decode().splitlines()) == sorted(sent)

    as_csv = io.BytesIO()
    audit.export(rows, "csv", as_csv)
    records = list(csv.DictReader(io.StringIO(as_csv.getvalue().decode(), newline="")))
    assert sorted(r["envelope_text"] for r in records) == sorted(sent)
    assert list(records[0]) == list(audit.AUDIT_FIELDS)

    as_json = io.BytesIO()
    audit.export(rows, "json", as_json)
    objects = json.loads(as_json.getvalue())
    assert sorted(o["envelope_id"] for o in objects) == sorted(r.envelope_id for r in rows)
    assert {o["envelope_id"]: o["envelope"] for o in objects} == {
        json.loads(s)["envelope_id"]: json.loads(s) for s in sent
    }

    table = io.BytesIO()
    audit.export(rows, "table", table)
    assert table.getvalue().decode().splitlines()[-1] == "(4 rows)"

    empty = io.BytesIO()
    audit.export([], "json", empty)
    assert json.loads(empty.getvalue()) == []


def test_query_spec_rejects_naive_times() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        QuerySpec(since=dt.datetime(2026, 1, 1))


def test_import_stopped_by_a_database_outage_keeps_earlier_batches(pg_url: str) -> None:
    target = make_url(pg_url)
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:

        def lines() -> Iterator[bytes]:
            for i in range(2000):
                if i == 1000:
                    proxy.cut()  # the server goes away while the import runs
                yield lines_of(envelope(i))[0]

        with (
            SQLEventBuffer(proxy.url_for(pg_url)) as buffer,
            pytest.raises(StorageUnavailable, match="import stopped at line") as failure,
        ):
            import_envelopes(buffer, lines(), batch_size=100)
    stopped_at = int(str(failure.value).split("import stopped at line ")[1].split(":")[0])
    with SQLEventBuffer(pg_url) as buffer:
        ids = [r.envelope_id for r in query_envelopes(buffer.engine, QuerySpec())]
        # Everything before the failing batch is there, in order; the failing
        # batch itself may have committed just as the link went; nothing after it.
        assert ids[: stopped_at - 1] == [f"env-{i:04d}" for i in range(stopped_at - 1)]
        assert len(ids) in (stopped_at - 1, stopped_at - 1 + 100)
        assert 0 < stopped_at <= 1001
        report = import_envelopes(buffer, (lines_of(envelope(i))[0] for i in range(2000)))
    assert (report.new, report.duplicate) == (2000 - len(ids), len(ids))


def test_import_redacts_like_record(database_url: str) -> None:
    secret = {**envelope(1), "payload": {**envelope(1)["payload"], "token": "xoxb-secret"}}
    with SQLEventBuffer(database_url) as buffer:
        import_envelopes(buffer, lines_of(secret, envelope(2)))
        texts = {
            r.envelope_id: r.envelope_text for r in query_envelopes(buffer.engine, QuerySpec())
        }
    assert "xoxb-secret" not in texts["env-0001"]
    assert json.loads(texts["env-0001"])["payload"]["token"] == "[redacted]"
    assert texts["env-0002"] == lines_of(envelope(2))[0].decode().rstrip("\n")
