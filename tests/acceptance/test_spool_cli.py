"""``recorder spool list/retry/drop`` on a spool file with a quarantined envelope."""

from __future__ import annotations

import json
from pathlib import Path

from recorder.adapters.memory import MemoryEventBuffer
from recorder.slack.spool import Spool
from recorder.testing.envelopes import EnvelopeFactory
from tests.acceptance.conftest import assert_one_line_error, ok, run_text

factory = EnvelopeFactory(seed=21)


def quarantined_spool(path: Path) -> list[str]:
    parse = MemoryEventBuffer().parse
    spool = Spool(path)
    ids = []
    try:
        for text in ("refused", "also refused", "fine"):
            envelope = factory.message(text)
            spool.record(parse(envelope["envelope_id"], json.dumps(envelope)))
            ids.append(envelope["envelope_id"])
        spool.quarantine(ids[0], "restoring 1 envelopes: the database refused the value")
        spool.quarantine(ids[1], "envelope is 3,741 bytes; the limit is 2,000 bytes")
    finally:
        spool.close()
    return ids


def test_list_retry_and_drop(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    first, second, fine = quarantined_spool(path)
    table = ok(None, "spool", "list", "--spool-path", str(path))
    assert first in table
    assert "database refused the value" in table
    assert fine not in table
    rows = [
        json.loads(line)
        for line in ok(
            None, "spool", "list", "--spool-path", str(path), "--format", "json", "--show-envelope"
        ).splitlines()
    ]
    assert [r["envelope_id"] for r in rows] == [first, second]
    assert json.loads(rows[0]["envelope"])["envelope_id"] == first
    assert "1 envelopes back in line" in ok(
        None, "spool", "retry", "--spool-path", str(path), first
    )
    assert "1 quarantined envelopes dropped" in ok(
        None, "spool", "drop", "--spool-path", str(path), "--all"
    )
    assert "no quarantined envelopes" in ok(None, "spool", "list", "--spool-path", str(path))
    spool = Spool(path)
    try:
        # The retried one waits for the drain again; the dropped one is gone for good.
        assert {key for key, _ in spool.dedupe_keys()} == {first, fine}
        assert spool.depth() == 2
    finally:
        spool.close()


def test_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    missing = run_text(None, "spool", "list", "--spool-path", str(tmp_path / "none.db"))
    assert "no spool file" in assert_one_line_error(missing, 1)
    path = tmp_path / "spool.db"
    quarantined_spool(path)
    neither = run_text(None, "spool", "drop", "--spool-path", str(path))
    assert neither.returncode == 2
    assert "--all" in neither.stderr
