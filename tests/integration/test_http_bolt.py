"""RecorderMiddleware on real Bolt apps served over real HTTP, signed as Slack signs."""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from recorder.adapters.sql import SQLEventBuffer
from recorder.schema import envelopes
from recorder.slack.bolt import AsyncRecorderMiddleware, RecorderMiddleware
from recorder.testing import SlackHttpSender, TcpProxy
from tests.integration.http_apps import (
    BOT_USER_ID,
    SIGNING_SECRET,
    Calls,
    async_app,
    serve_app,
    serve_async_app,
    sync_app,
)


@pytest.fixture
def buffer(database_url: str) -> Iterator[SQLEventBuffer]:
    with SQLEventBuffer(database_url) as sql_buffer:
        yield sql_buffer


def rows(buffer: SQLEventBuffer) -> list[Any]:
    with buffer.engine.connect() as conn:
        return list(conn.execute(sa.select(envelopes).order_by(envelopes.c.received_at)))


def listening_app(calls: Calls, middleware: RecorderMiddleware, **options: Any) -> Any:
    app = sync_app(**options)
    app.use(middleware)

    @app.event("message")
    def on_message(event: dict[str, Any], context: dict[str, Any]) -> None:
        calls.add(f"message:{event['text']}")
        calls.add(f"envelope:{context['envelope_id']}")

    @app.command("/deploy")
    def on_deploy(ack: Any, command: dict[str, Any]) -> None:
        ack(f"deploying {command['text']}")
        calls.add(f"command:{command['text']}")

    @app.action("approve")
    def on_approve(ack: Any, body: dict[str, Any]) -> None:
        ack()
        calls.add(f"action:{body['actions'][0]['value']}")

    return app


def listening_async_app(calls: Calls, middleware: AsyncRecorderMiddleware) -> Any:
    app = async_app()
    app.use(middleware)

    @app.event("message")
    async def on_message(event: dict[str, Any]) -> None:
        calls.add(f"message:{event['text']}")

    @app.command("/deploy")
    async def on_deploy(ack: Any, command: dict[str, Any]) -> None:
        await ack(f"deploying {command['text']}")
        calls.add(f"command:{command['text']}")

    @app.action("approve")
    async def on_approve(ack: Any, body: dict[str, Any]) -> None:
        await ack()
        calls.add(f"action:{body['actions'][0]['value']}")

    return app


def play(slack: SlackHttpSender, calls: Calls, middleware: Any) -> None:
    """An event and its three retries, a slash command, a block action; each handled once."""
    message = slack.factory.message("hello")
    deliveries = slack.send(message, retries=3)
    assert [d.status for d in deliveries] == [200, 200, 200, 200]
    command = slack.send_one(slack.factory.slash_command("/deploy", "v1"))
    assert command.status == 200
    assert "deploying v1" in command.body
    action = slack.send_one(slack.factory.block_actions("approve", "yes"))
    assert action.status == 200
    # The middleware decided every delivery before it was answered: three went on to
    # the app; the retries were answered without reaching it. A second run would
    # have to be a fourth dispatch.
    assert middleware.stats.dispatched == 3
    calls.wait_for(
        lambda c: c["message:hello"] >= 1 and c["command:v1"] >= 1 and c["action:yes"] >= 1
    )
    assert calls.counts["message:hello"] == 1
    assert calls.counts["command:v1"] == 1
    assert calls.counts["action:yes"] == 1


def check_stored(buffer: SQLEventBuffer, event_id: str | None = None) -> None:
    stored = rows(buffer)
    assert sorted(r.envelope_type for r in stored) == [
        "events_api",
        "interactive",
        "slash_commands",
    ]
    by_type = {r.envelope_type: r for r in stored}
    event = by_type["events_api"]
    assert event.envelope_id == event.event_id
    assert event.retry_attempt == 0
    assert event.event_type == "message"
    assert event.team_id == "T0SIMTEAM"
    assert event.channel_id == "C0SIMCHAN"
    assert event.user_id == "U0SIMUSER"
    assert by_type["slash_commands"].event_type == "/deploy"
    assert by_type["interactive"].event_type == "block_actions"
    for row in stored:
        text = row.envelope_text
        assert "simulated-verification-token" not in text
        assert "hooks.slack.com" not in text
        assert "v0=" not in text
        stored_envelope = json.loads(text)
        assert stored_envelope["envelope_id"] == row.envelope_id
        assert "request_timestamp" in stored_envelope["http"]


def test_sync_app_over_http_runs_each_delivery_once(buffer: SQLEventBuffer, tmp_path: Path) -> None:
    calls = Calls()
    middleware = RecorderMiddleware(buffer, spool_path=tmp_path / "spool.db")
    with serve_app(listening_app(calls, middleware)) as url:
        play(SlackHttpSender(url, SIGNING_SECRET), calls, middleware)
    middleware.close()
    check_stored(buffer)
    assert middleware.stats.outcomes["duplicate"] == 3
    assert buffer.pending() == []


def test_async_app_behind_aiohttp_runs_each_delivery_once(
    buffer: SQLEventBuffer, tmp_path: Path
) -> None:
    calls = Calls()
    middleware = AsyncRecorderMiddleware(buffer, spool_path=tmp_path / "spool.db")
    with serve_async_app(listening_async_app(calls, middleware)) as url:
        play(SlackHttpSender(url, SIGNING_SECRET), calls, middleware)
    middleware.close()
    check_stored(buffer)
    assert middleware.stats.outcomes["duplicate"] == 3
    assert buffer.pending() == []


def forgeries(slack: SlackHttpSender) -> list[tuple[str, str | bytes, dict[str, str]]]:
    """Requests an attacker can send without the signing secret, each of a genuine body."""
    from recorder.testing.slack_http import http_body

    event = slack.factory.message("forged")
    body, content_type = http_body(event)
    good = slack.signed_headers(body, content_type)
    stale_at = int(time.time()) - 6 * 60
    command_body, form = http_body(slack.factory.slash_command("/deploy", "forged"))
    wrong_secret = SlackHttpSender(slack.url, "not-the-secret").signed_headers(body, content_type)
    return [
        ("no signature", body, {"Content-Type": content_type}),
        ("wrong secret", body, wrong_secret),
        ("tampered body", body.replace("forged", "FORGED"), good),
        ("stale timestamp", body, slack.signed_headers(body, content_type, timestamp=stale_at)),
        (
            "future timestamp",
            body,
            slack.signed_headers(body, content_type, timestamp=int(time.time()) + 6 * 60),
        ),
        (
            "signature of another request",
            command_body,
            {
                **slack.signed_headers(command_body, form),
                "X-Slack-Signature": good["X-Slack-Signature"],
            },
        ),
        ("garbage timestamp", body, {**good, "X-Slack-Request-Timestamp": "soon"}),
    ]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_forged_and_stale_requests_are_refused_and_never_stored(
    kind: str, buffer: SQLEventBuffer, tmp_path: Path
) -> None:
    calls = Calls()
    if kind == "sync":
        middleware: Any = RecorderMiddleware(buffer, spool_path=tmp_path / "spool.db")
        serving = serve_app(listening_app(calls, middleware))
    else:
        middleware = AsyncRecorderMiddleware(buffer, spool_path=tmp_path / "spool.db")
        serving = serve_async_app(listening_async_app(calls, middleware))
    with serving as url:
        slack = SlackHttpSender(url, SIGNING_SECRET)
        for name, body, headers in forgeries(slack):
            delivery = slack.post(body, headers)
            # Bolt answers 500 for a timestamp it cannot read; never 200.
            assert delivery.status in (401, 500), (name, delivery)
        assert rows(buffer) == []
        # A forged copy of an event never blocks the genuine delivery of that event.
        genuine = slack.factory.message("genuine")
        from recorder.testing.slack_http import http_body

        body, content_type = http_body(genuine)
        forged = slack.post(body, {"Content-Type": content_type, "X-Slack-Request-Timestamp": "1"})
        assert forged.status == 401
        assert [d.status for d in slack.send(genuine, retries=1)] == [200, 200]
        calls.wait_for(lambda c: c["message:genuine"] == 1)
    middleware.close()
    assert calls.counts["message:forged"] == calls.counts["message:FORGED"] == 0
    assert [r.event_id for r in rows(buffer)] == [genuine["payload"]["event_id"]]


def test_lazy_listeners_still_run(buffer: SQLEventBuffer, tmp_path: Path) -> None:
    calls = Calls()
    middleware = RecorderMiddleware(buffer, spool_path=tmp_path / "spool.db")
    app = sync_app(process_before_response=True)
    app.use(middleware)

    def acknowledge(ack: Any) -> None:
        ack("working on it")

    def slow_part(command: dict[str, Any]) -> None:
        calls.add(f"lazy:{command['text']}")

    app.command("/deploy")(ack=acknowledge, lazy=[slow_part])
    with serve_app(app) as url:
        slack = SlackHttpSender(url, SIGNING_SECRET)
        command = slack.factory.slash_command("/deploy", "v2")
        first = slack.send_one(command)
        assert first.status == 200
        assert "working on it" in first.body
        calls.wait_for(lambda c: c["lazy:v2"] == 1)
        # Bolt's FaaS adapters re-invoke the app with the same signed request
        # and x-slack-bolt-lazy-only: it must reach the lazy function, although
        # the request itself is recorded (its replay is a duplicate).
        from recorder.testing.slack_http import http_body

        body, _ = http_body(command)
        replay = slack.post(body, first.request_headers)
        assert replay.status == 200
        assert replay.body == ""  # answered by the recorder: a duplicate
        lazy = slack.post(
            body,
            {
                **first.request_headers,
                "X-Slack-Bolt-Lazy-Only": "1",
                "X-Slack-Bolt-Lazy-Function-Name": "slow_part",
            },
        )
        assert lazy.status == 200
        calls.wait_for(lambda c: c["lazy:v2"] == 2)
    middleware.close()
    assert [r.envelope_type for r in rows(buffer)] == ["slash_commands"]
    assert middleware.stats.outcomes["duplicate"] == 1


@pytest.fixture
def proxy(pg_server_url: str) -> Iterator[TcpProxy]:
    parts = urlsplit(pg_server_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as tcp_proxy:
        yield tcp_proxy


def event_ids(buffer: SQLEventBuffer) -> collections.Counter[str]:
    return collections.Counter(r.event_id for r in rows(buffer) if r.event_id)


def test_spool_while_postgresql_is_cut_loses_nothing_handles_nothing_twice(
    pg_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    calls = Calls()
    through_proxy = SQLEventBuffer(proxy.url_for(pg_url))
    middleware = RecorderMiddleware(through_proxy, spool_path=tmp_path / "spool.db")
    with serve_app(listening_app(calls, middleware)) as url:
        slack = SlackHttpSender(url, SIGNING_SECRET)
        before, during, after = (
            [slack.factory.message(f"{phase} {i}") for i in range(n)]
            for phase, n in (("before", 5), ("during", 8), ("after", 5))
        )
        for message in before:
            assert [d.status for d in slack.send(message, retries=1)] == [200, 200]
        proxy.cut()
        for message in during:
            assert [d.status for d in slack.send(message, retries=2)] == [200, 200, 200]
        command = slack.send(slack.factory.slash_command("/deploy", "in outage"), retries=1)
        assert [d.status for d in command] == [200, 200]
        assert middleware.stats.outcomes["spooled"] == 9
        proxy.restore()
        for message in after:
            assert [d.status for d in slack.send(message, retries=1)] == [200, 200]
        # Slack's last retry of an outage event, after the database is back.
        retry = slack.signed_headers(json.dumps(during[0]["payload"], separators=(",", ":")))
        retry.update({"X-Slack-Retry-Num": "3", "X-Slack-Retry-Reason": "http_timeout"})
        assert (
            slack.post(json.dumps(during[0]["payload"], separators=(",", ":")), retry).status == 200
        )
        everything = before + during + after
        with SQLEventBuffer(pg_url) as direct:
            deadline = time.monotonic() + 15
            while len(event_ids(direct)) < len(everything) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert event_ids(direct) == {m["payload"]["event_id"]: 1 for m in everything}
            calls.wait_for(
                lambda c: (
                    c["command:in outage"] == 1
                    and all(c[f"message:{m['payload']['event']['text']}"] for m in everything)
                )
            )
            # Each event once (the retries answered without the app), and the command.
            assert middleware.stats.dispatched == len(everything) + 1
            middleware.close()
            assert direct.count_pending() == 0
            commands = [r for r in rows(direct) if r.envelope_type == "slash_commands"]
            assert len(commands) == 1
    through_proxy.close()
    for message in everything:
        assert calls.counts[f"message:{message['payload']['event']['text']}"] == 1
    assert middleware.stats.drained == 9


def test_nack_while_postgresql_is_cut_lets_slack_retry(
    pg_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    calls = Calls()
    through_proxy = SQLEventBuffer(proxy.url_for(pg_url))
    middleware = AsyncRecorderMiddleware(
        through_proxy, on_storage_error="nack", spool_path=tmp_path / "spool.db"
    )
    with serve_async_app(listening_async_app(calls, middleware)) as url:
        slack = SlackHttpSender(url, SIGNING_SECRET)
        messages = [slack.factory.message(f"nacked {i}") for i in range(6)]
        proxy.cut()
        for message in messages:
            refused = slack.send(message, retries=1)
            assert [d.status for d in refused] == [503, 503]
            assert "x-slack-no-retry" not in refused[0].headers
        command = slack.send_one(slack.factory.slash_command("/deploy", "nacked"))
        assert command.status == 503
        # Refused before the app: nothing was dispatched, so no listener runs.
        assert middleware.stats.dispatched == 0
        assert sum(calls.counts.values()) == 0
        proxy.restore()
        for message in messages:
            # Slack's next retries: the first recorded one runs the listener.
            body = json.dumps(message["payload"], separators=(",", ":"))
            for attempt in (2, 3):
                headers = slack.signed_headers(body)
                headers.update(
                    {"X-Slack-Retry-Num": str(attempt), "X-Slack-Retry-Reason": "http_error"}
                )
                assert slack.post(body, headers).status == 200
        calls.wait_for(lambda c: all(c[f"message:nacked {i}"] == 1 for i in range(6)))
        # The first recorded retry of each went on; the second was answered without the app.
        assert middleware.stats.dispatched == 6
    middleware.close()
    through_proxy.close()
    assert all(calls.counts[f"message:nacked {i}"] == 1 for i in range(6))
    assert calls.counts["command:nacked"] == 0
    with SQLEventBuffer(pg_url) as direct:
        stored = rows(direct)
        assert {r.event_id for r in stored} == {m["payload"]["event_id"] for m in messages}
        assert {r.retry_attempt for r in stored} == {2}
        assert {r.retry_reason for r in stored} == {"http_error"}
    assert not (tmp_path / "spool.db").exists()


@pytest.mark.parametrize("ignoring", [True, False])
def test_the_apps_own_events_are_dropped_by_bolt_before_the_recorder(
    ignoring: bool, buffer: SQLEventBuffer, tmp_path: Path
) -> None:
    """Documented: Bolt's self-event filter runs first, so self events are not recorded."""
    calls = Calls()
    middleware = RecorderMiddleware(buffer, spool_path=tmp_path / "spool.db")
    app = listening_app(calls, middleware, ignoring_self_events_enabled=ignoring)
    with serve_app(app) as url:
        slack = SlackHttpSender(url, SIGNING_SECRET)
        own = slack.factory.message("said by the bot", user=BOT_USER_ID)
        assert slack.send_one(own).status == 200
        if not ignoring:
            calls.wait_for(lambda c: c["message:said by the bot"] == 1)
        # Bolt's filter answers before custom middleware: the recorder never saw it.
        assert middleware.stats.received == (0 if ignoring else 1)
    middleware.close()
    assert len(rows(buffer)) == (0 if ignoring else 1)
    assert calls.counts["message:said by the bot"] == (0 if ignoring else 1)
