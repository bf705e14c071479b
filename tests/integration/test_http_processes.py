"""Two Bolt app processes over HTTP behind one PostgreSQL handle each event once."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from recorder.testing.envelopes import EnvelopeFactory
from recorder.testing.slack_http import SlackHttpSender, http_body
from tests.integration.http_apps import SIGNING_SECRET

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("http_app_process.py")


def first_line(process: subprocess.Popen[str]) -> str:
    """The first line a process printed (its URL), without the newline."""
    assert process.stdout is not None  # stdout=PIPE
    return process.stdout.readline().strip()


@pytest.mark.timeout(120)
def test_two_processes_behind_one_postgresql_handle_each_event_once(
    pg_url: str, tmp_path: Path
) -> None:
    handled = tmp_path / "handled.log"
    processes = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), pg_url, str(tmp_path / f"spool{i}.db"), str(handled)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for i in range(2)
    ]
    try:
        urls = [first_line(process) for process in processes]
        assert all(url.startswith("http://") for url in urls), urls
        factory = EnvelopeFactory(seed=21)
        senders = [SlackHttpSender(url, SIGNING_SECRET, factory=factory) for url in urls]
        messages = [factory.message(f"m{i}") for i in range(30)]

        def deliver(index: int) -> list[int]:
            # Slack's first delivery reaches one instance, a retry reaches the
            # other at the same moment (a load balancer), then two more retries.
            message = messages[index]
            body, content_type = http_body(message)
            statuses = []
            with ThreadPoolExecutor(2) as pair:
                first = pair.submit(
                    senders[index % 2].post, body, senders[0].signed_headers(body, content_type)
                )
                retry_headers = senders[1].signed_headers(body, content_type)
                retry_headers.update(
                    {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
                )
                retry = pair.submit(senders[(index + 1) % 2].post, body, retry_headers)
                statuses += [first.result().status, retry.result().status]
            for attempt in (2, 3):
                headers = senders[0].signed_headers(body, content_type)
                headers.update(
                    {"X-Slack-Retry-Num": str(attempt), "X-Slack-Retry-Reason": "http_timeout"}
                )
                statuses.append(senders[attempt % 2].post(body, headers).status)
            return statuses

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(deliver, range(len(messages))))
        assert results == [[200, 200, 200, 200]] * len(messages)
        expected = {m["payload"]["event_id"] for m in messages}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = handled.read_text().splitlines() if handled.exists() else []
            if len(lines) >= len(expected):
                break
            time.sleep(0.1)
    finally:
        # Each process exits once its stdin closes, after Bolt's listener threads
        # finish: a second run of any event is in the log read below.
        for process in processes:
            assert process.stdin is not None  # stdin=PIPE
            process.stdin.close()
        for process in processes:
            process.wait(timeout=30)
    lines = handled.read_text().splitlines()
    per_event = collections.Counter(line.split()[0] for line in lines)
    assert per_event == {event_id: 1 for event_id in expected}
    # Both processes took part.
    assert len({line.split()[1] for line in lines}) == 2
