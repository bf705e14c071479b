"""Every Python example in docs/http.md runs as written, then serves signed requests."""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

import pytest

from recorder.testing import SlackHttpSender, SocketModeSimulator
from recorder.testing.slack_http import http_body
from tests.integration.http_apps import serve_app

DOC = Path(__file__).resolve().parents[2] / "docs" / "http.md"
EXAMPLES: list[str] = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
SECRET = "docs-signing-secret"


def example(marker: str) -> str:
    (source,) = [text for text in EXAMPLES if marker in text]
    return source


def run(source: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "docs_http_example"}
    exec(compile(source, str(DOC), "exec"), namespace)
    return namespace


def recorded(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute("SELECT envelope_type, envelope_text FROM envelopes"))


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)
    monkeypatch.delenv("RECORDER_DATABASE_URL", raising=False)
    return tmp_path


def test_the_page_has_its_examples() -> None:
    assert len(EXAMPLES) == 4


def test_bolt_example(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SocketModeSimulator() as sim:
        monkeypatch.setenv("SLACK_BOT_TOKEN", sim.bot_token)
        monkeypatch.setenv("SLACK_API_URL", sim.api_url)
        namespace = run(example('RecorderMiddleware("sqlite:///recorder.db")'))
        with serve_app(namespace["app"]) as url:
            slack = SlackHttpSender(url, SECRET)
            message = slack.factory.message("hi")
            assert [d.status for d in slack.send(message, retries=3)] == [200] * 4
            command = slack.send_one(slack.factory.slash_command("/deploy", "v7"))
            assert "deploying v7" in command.body
            sim.wait_for(lambda: any(m == "chat.postMessage" for m, _ in sim.api_calls))
        namespace["recording"].close()
        posts = [p for m, p in sim.api_calls if m == "chat.postMessage"]
    assert len(posts) == 1
    assert namespace["recording"].stats.outcomes["duplicate"] == 3
    assert sorted(t for t, _ in recorded(in_tmp / "recorder.db")) == [
        "events_api",
        "slash_commands",
    ]


def test_flask_example(in_tmp: Path) -> None:
    namespace = run(example("from flask import"))
    server = make_server("127.0.0.1", 0, namespace["flask_app"])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        slack = SlackHttpSender(f"http://127.0.0.1:{server.server_port}/slack/events", SECRET)
        message = slack.factory.message("via flask")
        assert [d.status for d in slack.send(message, retries=3)] == [200] * 4
        assert slack.send_one(slack.factory.block_actions()).status == 200
        body, content_type = http_body(slack.factory.message("forged"))
        forged = slack.post(body, {"Content-Type": content_type})
        assert forged.status == 401
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        namespace["recorder"].close()
    assert len(namespace["handled"]) == 2
    assert sorted(t for t, _ in recorded(in_tmp / "recorder.db")) == ["events_api", "interactive"]


def test_fastapi_example(in_tmp: Path) -> None:
    from fastapi.testclient import TestClient

    namespace = run(example("from fastapi import"))
    slack = SlackHttpSender("http://testserver/slack/events", SECRET)
    message = slack.factory.message("via fastapi")
    body, content_type = http_body(message)
    with TestClient(namespace["api"]) as client:
        first = client.post(
            "/slack/events", content=body, headers=slack.signed_headers(body, content_type)
        )
        assert first.status_code == 200
        for attempt in (1, 2, 3):
            retry = {**slack.signed_headers(body, content_type), "X-Slack-Retry-Num": str(attempt)}
            assert client.post("/slack/events", content=body, headers=retry).status_code == 200
        stale = slack.signed_headers(body, content_type, timestamp=1_600_000_000)
        assert client.post("/slack/events", content=body, headers=stale).status_code == 401
        command, form = http_body(slack.factory.slash_command("/deploy", "x"))
        headers = slack.signed_headers(command, form)
        assert client.post("/slack/events", content=command, headers=headers).status_code == 200
        assert client.post("/slack/events", content=command, headers=headers).status_code == 200
    namespace["recorder"].close()
    assert len(namespace["handled"]) == 2
    stored = recorded(in_tmp / "recorder.db")
    assert sorted(t for t, _ in stored) == ["events_api", "slash_commands"]
    assert all("[redacted]" in text for _, text in stored)


def test_testing_example(in_tmp: Path) -> None:
    run(example("SlackHttpSender(f"))
    assert [t for t, _ in recorded(in_tmp / "test-recorder.db")] == ["events_api"]


def test_readme_http_example(in_tmp: Path) -> None:
    readme = DOC.parents[1] / "README.md"
    (source,) = [
        text
        for text in re.findall(
            r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), re.DOTALL
        )
        if "HttpRecorder" in text
    ]
    run(source)
    assert recorded(in_tmp / "recorder.db") == []
