"""The Socket Mode snippets of README.md and docs/slack.md, run exactly as written.

Each snippet reads its tokens (and the Web API's address, ``SLACK_API_URL``)
from the environment; the tests point them at
:class:`recorder.testing.SocketModeSimulator`, run the snippet (not as
``__main__``, so it does not block), and play envelopes, a retransmit and a
retry at the bot it built.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from recorder.engine import create_engine
from recorder.testing import SocketModeSimulator
from tests.integration.doc_snippets import block, run_python

README_LISTENER = "import os\nimport threading\n\nfrom slack_sdk import WebClient\nfrom slack_sdk.socket_mode import"
SLACK_SDK = "import os\nimport threading\n\nfrom slack_sdk import WebClient\nfrom slack_sdk.socket_mode.websocket_client"
SLACK_BOLT = "import os\n\nfrom slack_bolt import App"

#: The blocks this module runs: (page, first lines).
RUNS = [
    ("README.md", README_LISTENER),
    ("docs/slack.md", SLACK_SDK),
    ("docs/slack.md", SLACK_BOLT),
]


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[SocketModeSimulator]:
    """The simulator, with the snippets' environment pointing at it."""
    with SocketModeSimulator(redeliver_after=None) as simulator:
        monkeypatch.setenv("SLACK_APP_TOKEN", simulator.app_token)
        monkeypatch.setenv("SLACK_BOT_TOKEN", simulator.bot_token)
        monkeypatch.setenv("SLACK_API_URL", simulator.api_url)
        monkeypatch.delenv("RECORDER_DATABASE_URL", raising=False)
        yield simulator


def stored(url: str) -> list[tuple[str, str]]:
    """(envelope id, status) of every recorded envelope."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT envelope_id, status FROM envelopes")).all()
    finally:
        engine.dispose()
    return sorted((row[0], row[1]) for row in rows)


def play_once_each(sim: SocketModeSimulator) -> dict[str, Any]:
    """An event, its retransmit and Slack's retry of it: three acks, one envelope to handle."""
    envelope = sim.envelopes.message("hello bot")
    sim.send(envelope)
    sim.retransmit(envelope["envelope_id"])
    sim.retry(envelope)
    sim.wait_for_acks(3, timeout=30)
    return envelope


def close_listener(client: Any) -> None:
    """Close the client, then the listener the snippet attached to it (waits for handlers)."""
    client.close()
    for listener in client.socket_mode_request_listeners:
        listener.close()


def test_readme_listener_runs_as_written(sim: SocketModeSimulator, tmp_path: Path) -> None:
    namespace = run_python(block("README.md", "python", README_LISTENER), tmp_path)
    try:
        sim.wait_for_connections(1, timeout=30)
        envelope = play_once_each(sim)
    finally:
        close_listener(namespace["client"])
        namespace["buffer"].close()
    # Recorded once (the retry is a duplicate of its event), and handled: marked done.
    assert stored(f"sqlite:///{tmp_path / 'recorder.db'}") == [(envelope["envelope_id"], "done")]


def test_slack_sdk_snippet_runs_as_written(
    sim: SocketModeSimulator, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECORDER_DATABASE_URL", pg_url)
    namespace = run_python(block("docs/slack.md", "python", SLACK_SDK), tmp_path)
    try:
        sim.wait_for_connections(1, timeout=30)
        envelope = play_once_each(sim)
    finally:
        close_listener(namespace["client"])
        namespace["buffer"].close()
    assert namespace["listener"].stats.outcomes["duplicate"] == 2
    assert stored(pg_url) == [(envelope["envelope_id"], "done")]


def test_slack_bolt_snippet_runs_as_written(sim: SocketModeSimulator, tmp_path: Path) -> None:
    namespace = run_python(block("docs/slack.md", "python", SLACK_BOLT), tmp_path)
    handler = namespace["handler"]
    try:
        handler.connect()
        sim.wait_for_connections(1, timeout=30)
        mention = sim.envelopes.app_mention("hello")
        sim.send(mention)
        sim.retry(mention)
        sim.wait_for_acks(2, timeout=30)
        sim.wait_for(lambda: any(m == "chat.postMessage" for m, _ in sim.api_calls), timeout=30)
    finally:
        handler.close()
        handler.recorder.buffer.close()
    posts = [payload for method, payload in sim.api_calls if method == "chat.postMessage"]
    assert len(posts) == 1  # once per event, although Slack delivered it twice
    assert stored(f"sqlite:///{tmp_path / 'recorder.db'}") == [(mention["envelope_id"], "done")]
