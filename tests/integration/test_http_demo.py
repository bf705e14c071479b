"""recorder.slack.http_demo: the HTTP demo's stream, recorded once, its counts true."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from recorder.adapters.sql import SQLEventBuffer
from recorder.slack.http_demo import render_http, run_http_demo


def test_the_http_demo_records_each_delivery_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    report = run_http_demo(url)
    assert report.refused == report.attacks == 2
    assert report.recorded == report.deliveries == report.listener_runs
    assert report.duplicates == report.retries + report.replays
    assert report.requests == report.deliveries + report.duplicates + report.attacks
    assert report.answered_200 == report.requests - report.attacks
    with SQLEventBuffer(url) as buffer, buffer.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT envelope_type, COUNT(*) FROM envelopes GROUP BY 1"))
        assert dict(rows.all()) == report.by_type
        assert buffer.count_pending() == 0
    text = "\n".join(render_http(report, url))
    assert f"recorded (new)         {report.deliveries:4d}" in text
    assert "handled exactly once" in text
