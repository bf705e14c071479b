"""``recorder retention|hold|prune|stats|report`` in a subprocess, on SQLite and PostgreSQL.

Also: an export moved to another database through ``recorder import`` gives
the same rows, and the HTML report renders in headless Chromium.
"""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import io
import json
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from recorder import retention
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.report import PALETTE, RETRY_COLOUR
from recorder.schema import envelopes
from tests.acceptance.conftest import ok
from tests.acceptance.conftest import run_text as run

UTC = dt.timezone.utc
DAY = dt.timedelta(days=1)
TODAY = dt.datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)


def clock_at(at: dt.datetime) -> Callable[[], dt.datetime]:
    """A buffer clock stuck at ``at`` (bound now, not to the loop variable)."""
    return lambda: at


def events_api(
    n: int, channel: str, user: str, event_type: str = "message", retry: int = 0
) -> dict[str, Any]:
    return {
        "envelope_id": f"e-{n:05d}",
        "type": "events_api",
        "accepts_response_payload": False,
        "retry_attempt": retry,
        "retry_reason": "timeout" if retry else "",
        "payload": {
            "team_id": "T1",
            "api_app_id": "A1",
            "event_id": f"Ev{n:05d}",
            "event": {"type": event_type, "channel": channel, "user": user, "text": f"hi {n}"},
        },
    }


def slash(n: int) -> dict[str, Any]:
    return {
        "envelope_id": f"s-{n:05d}",
        "type": "slash_commands",
        "accepts_response_payload": True,
        "payload": {"team_id": "T1", "channel_id": "C2", "user_id": "U3", "command": "/deploy"},
    }


def interactive(n: int) -> dict[str, Any]:
    return {
        "envelope_id": f"i-{n:05d}",
        "type": "interactive",
        "accepts_response_payload": False,
        "payload": {
            "type": "block_actions",
            "team": {"id": "T1"},
            "user": {"id": "U2"},
            "channel": {"id": "C1"},
        },
    }


def seed(url: str, days: int = 10) -> int:
    """A varied fortnight of traffic; returns how many envelopes were stored."""
    engine = create_engine(url)
    stored = 0
    try:
        n = 0
        for day in range(days):
            at = TODAY - (days - 1 - day) * DAY
            buffer = SQLEventBuffer(engine, clock=clock_at(at))
            batch: list[dict[str, Any]] = []
            for i in range(5 + 3 * day):
                n += 1
                channel, user = ("C1", "U1") if i % 3 else ("C2", "U2")
                batch.append(
                    events_api(n, channel, user, "app_mention" if i % 4 == 0 else "message")
                )
            batch += [slash(n + k) for k in range(day % 4)]
            batch += [interactive(n + k) for k in range(2)]
            if day % 3 == 0:
                batch.append(events_api(90000 + day, "C3", "U4", retry=1 + day % 2))
            n += 10
            stored += buffer.record_many([buffer.parse(d["envelope_id"], d) for d in batch])
    finally:
        engine.dispose()
    return stored


def table_rows(url: str) -> list[tuple[Any, ...]]:
    columns = [
        "envelope_id",
        "envelope_type",
        "team_id",
        "enterprise_id",
        "api_app_id",
        "event_id",
        "event_type",
        "channel_id",
        "user_id",
        "retry_attempt",
        "retry_reason",
        "envelope_text",
        "envelope_sha256",
    ]
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            result = conn.execute(
                sa.select(*(envelopes.c[c] for c in columns)).order_by(envelopes.c.envelope_id)
            )
            return [tuple(r) for r in result]
    finally:
        engine.dispose()


def test_export_imported_into_another_database_gives_the_same_rows(
    sqlite_url: str, pg_url: str, tmp_path: Path
) -> None:
    stored = seed(pg_url, days=4)
    exported = run(pg_url, "query", "--format", "jsonl")
    assert exported.returncode == 0, exported.stderr
    path = tmp_path / "export.jsonl"
    path.write_text(exported.stdout, encoding="utf-8")
    assert len(exported.stdout.splitlines()) == stored

    assert (
        ok(sqlite_url, "import", str(path)).splitlines()[0]
        == f"imported: {stored} new, 0 duplicate, 0 rejected"
    )
    original, copied = table_rows(pg_url), table_rows(sqlite_url)
    assert len(original) == stored
    assert copied == original
    # And back again, into a fresh PostgreSQL database's worth of nothing new.
    assert "0 new" in ok(pg_url, "import", str(path))


def test_retention_hold_and_prune_commands(database_url: str) -> None:
    seed(database_url, days=10)
    assert "created policy all: keep 5d of everything" in ok(
        database_url, "retention", "set", "all", "--keep", "5d", "--actor", "alice"
    )
    assert "keep 1d of channel_id=C2, event_type=app_mention, priority 3" in ok(
        database_url,
        "retention", "set", "c2-mentions", "--keep", "1", "--channel", "C2",
        "--event-type", "app_mention", "--priority", "3",
    )  # fmt: skip
    listed = ok(database_url, "retention", "list", "--format", "json")
    assert [p["name"] for p in json.loads(listed)] == ["c2-mentions", "all"]
    ok(
        database_url,
        "hold",
        "add",
        "case-7",
        "--reason",
        "ticket 7",
        "--user",
        "U2",
        "--actor",
        "legal",
    )
    holds = ok(database_url, "hold", "list").splitlines()
    assert holds[0].split() == ["NAME", "STATE", "COVERS", "REASON"]
    assert holds[1].split()[:4] == ["case-7", "in", "force", "user_id=U2"]

    before = len(table_rows(database_url))
    dry = ok(database_url, "prune", "--dry-run")
    assert "would delete" in dry
    assert len(table_rows(database_url)) == before

    pruned = ok(database_url, "prune", "--batch-size", "7")
    assert "deleted" in pruned
    remaining = table_rows(database_url)
    # Rows of U2 are held; everything else older than 5 days is gone.
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            old = (
                conn.execute(
                    sa.select(envelopes.c.user_id).where(envelopes.c.received_at < TODAY - 5 * DAY)
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    assert old
    assert set(old) == {"U2"}
    assert len(remaining) < before

    assert "released hold case-7" in ok(
        database_url, "hold", "release", "case-7", "--actor", "legal"
    )
    ok(database_url, "prune")
    assert "released" in ok(database_url, "hold", "list")
    log = ok(database_url, "retention", "log")
    assert "alice  create retention_policy all" in log
    assert "legal  release legal_hold case-7" in log
    assert log.count("completed") == 3
    assert "(dry run)  would delete" in log
    policies = ok(database_url, "retention", "list").splitlines()
    assert policies[0].split() == ["NAME", "KEEP", "PRIORITY", "MATCH", "ARCHIVE"]
    assert all(line.split()[-1] == "-" for line in policies[1:]), "no policy archives"

    missing = run(database_url, "hold", "release", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: no legal hold is named 'nope'"


@contextmanager
def prune_lock_held(url: str) -> Iterator[None]:
    """Hold the prune lock the way a running ``recorder prune`` does."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        with open(f"{parsed.database}-prune.lock", "a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            yield
        return
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.select(sa.func.pg_advisory_lock(retention.PRUNE_LOCK_KEY)))
            yield
    finally:
        engine.dispose()


def test_a_second_prune_exits_cleanly_while_one_runs(database_url: str) -> None:
    seed(database_url, days=3)
    ok(database_url, "retention", "set", "all", "--keep", "1h")
    before = table_rows(database_url)
    with prune_lock_held(database_url):
        result = run(database_url, "prune")
    assert result.returncode == 0
    assert "another prune run is in progress; nothing done" in result.stderr
    assert table_rows(database_url) == before
    assert "locked_out" in ok(database_url, "retention", "log")


def test_stats_formats(database_url: str) -> None:
    stored = seed(database_url, days=10)
    as_json = json.loads(ok(database_url, "stats", "--format", "json", "--since", "30d"))
    assert sum(r["count"] for r in as_json) == stored
    assert {r["envelope_type"] for r in as_json} == {"events_api", "slash_commands", "interactive"}
    assert as_json[0]["day"] == (TODAY - 9 * DAY).date().isoformat()

    by_channel = list(
        csv.DictReader(io.StringIO(ok(database_url, "stats", "--by", "channel", "--format", "csv")))
    )
    assert {r["channel"] for r in by_channel} == {"C1", "C2", "C3"}
    assert sum(int(r["count"]) for r in by_channel) == stored

    day = (TODAY - 2 * DAY).date().isoformat()
    one_day = ok(
        database_url,
        "stats",
        "--by",
        "user",
        "--since",
        day,
        "--until",
        (TODAY - DAY).date().isoformat(),
    )
    lines = one_day.splitlines()
    assert lines[0].split() == ["day", "user", "count"]
    assert all(line.startswith(day) for line in lines[2:-1])
    assert lines[-1] == f"{5 + 3 * 7 + 3 + 2} envelopes"


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the unfiltered rows of an 8-bit RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8, depth
    assert colour in (2, 6), colour
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line[j] for k in range(0, stride, bpp) for j in range(k, k + 3)))
        previous = line
    return width, height, rows


def _pixel_count(rows: list[bytes], colour: str) -> int:
    rgb = bytes.fromhex(colour.lstrip("#"))
    return sum(1 for row in rows for x in range(0, len(row), 3) if row[x : x + 3] == rgb)


def test_html_report_renders_offline_in_headless_chromium(sqlite_url: str, tmp_path: Path) -> None:
    seed(sqlite_url, days=14)
    page = tmp_path / "report.html"
    out = ok(sqlite_url, "report", "--html", str(page), "--since", "14d")
    assert out.startswith(f"wrote {page}:")
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text
    assert "<script" not in text
    assert text.count("<svg") == 2

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium package must be installed (apt-get install chromium)"
    shot = tmp_path / "report.png"
    profile = tmp_path / "profile"
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--hide-scrollbars",
            "--window-size=1100,1500",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    width, height, rows = _png_pixels(shot.read_bytes())
    assert (width, height) == (1100, 1500)
    # The charts were painted: bar colours of the largest series and of the
    # retries chart cover real areas of the screenshot.
    assert _pixel_count(rows, PALETTE[0]) > 2000
    assert _pixel_count(rows, RETRY_COLOUR) > 100
    assert _pixel_count(rows, PALETTE[1]) > 100
