"""``recorder demo --http``: a signed HTTP stream with retries into a Bolt app that records.

A :class:`~recorder.simulator.slack_http.SlackHttpSender` plays a realistic
stream (messages, mentions, reactions, slash commands, button clicks, a
modal submission) at a real slack_bolt ``App`` served over local HTTP, with
:class:`~recorder.slack.bolt.RecorderMiddleware` added, and with what makes
exactly-once hard over HTTP: Slack's retries of events
(``X-Slack-Retry-Num`` 1 to 3), a replayed command, and requests an attacker
could send (a forged signature, a stale timestamp). Everything lands in the
configured database, ready for ``recorder query``.
"""

from __future__ import annotations

import collections
import re
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recorder.errors import MissingDependency

try:
    from slack_bolt import App
    from slack_bolt.adapter.wsgi import SlackRequestHandler
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependency("slack_bolt", "bolt") from exc

from slack_sdk import WebClient

from recorder.adapters.sql import SQLEventBuffer
from recorder.simulator import SocketModeSimulator
from recorder.simulator.slack_http import Delivery, SlackHttpSender, http_body, serve_wsgi
from recorder.slack.bolt_http import RecorderMiddleware

__all__ = ["HttpDemoReport", "render_http", "run_http_demo"]

#: Only the demo's own app and sender know it.
DEMO_SIGNING_SECRET = "demo-signing-secret-not-a-real-one"
ATTACKS = 2


@dataclass(frozen=True)
class HttpDemoReport:
    """What the demo sent over HTTP, and what the recorder made of it."""

    deliveries: int
    """Distinct deliveries (an event counted once however often Slack sent it)."""
    requests: int
    """Signed requests posted: deliveries, retries, replays."""
    retries: int
    replays: int
    attacks: int
    """Requests sent without the signing secret (a forged signature, a stale timestamp)."""
    refused: int
    """Of those, answered 401 by Bolt (never stored)."""
    recorded: int
    duplicates: int
    listener_runs: int
    answered_200: int
    latency_p50_ms: float
    latency_p99_ms: float
    by_type: dict[str, int]


class _Listeners:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs = 0

    def ran(self) -> None:
        with self.lock:
            self.runs += 1


def _app(sim: SocketModeSimulator, listeners: _Listeners, middleware: RecorderMiddleware) -> App:
    app = App(
        signing_secret=DEMO_SIGNING_SECRET,
        client=WebClient(token=sim.bot_token, base_url=sim.api_url),
        # The answer follows the listener, so the demo's counts are final when it ends.
        process_before_response=True,
    )
    app.use(middleware)

    @app.event("message")
    @app.event("app_mention")
    @app.event("reaction_added")
    def on_event() -> None:
        listeners.ran()

    @app.command("/deploy")
    def on_deploy(ack: Any, command: dict[str, Any]) -> None:
        ack(f"deploying {command['text']}")
        listeners.ran()

    @app.action(re.compile(".*"))
    def on_action(ack: Any) -> None:
        ack()
        listeners.ran()

    @app.view("incident_report")
    def on_view(ack: Any) -> None:
        ack()
        listeners.ran()

    return app


def _stream(slack: SlackHttpSender) -> list[dict[str, Any]]:
    factory = slack.factory
    envelopes: list[dict[str, Any]] = []
    for i in range(20):
        envelopes.append(factory.message(f"standup note {i}", channel="C0STANDUP"))
    for i in range(5):
        envelopes.append(factory.app_mention(f"<@U0SIMBOT> status of ticket {100 + i}?"))
    for reaction in ("eyes", "white_check_mark", "tada"):
        envelopes.append(factory.reaction_added(reaction))
    for service in ("api", "web", "worker"):
        envelopes.append(factory.slash_command("/deploy", service))
    for value in ("approve", "reject"):
        envelopes.append(factory.block_actions(value, value))
    envelopes.append(factory.view_submission("incident_report"))
    return envelopes


def run_http_demo(database_url: str) -> HttpDemoReport:
    """Play the HTTP demo into ``database_url`` (migrated first if SQLite); return the report."""
    buffer = SQLEventBuffer(database_url, upgrade=database_url.startswith("sqlite"))
    listeners = _Listeners()
    answers: list[Delivery] = []
    with (
        tempfile.TemporaryDirectory(prefix="recorder-demo-") as scratch,
        SocketModeSimulator(redeliver_after=None) as sim,
    ):
        middleware = RecorderMiddleware(buffer, spool_path=Path(scratch) / "spool.db")
        try:
            with serve_wsgi(SlackRequestHandler(_app(sim, listeners, middleware))) as url:
                slack = SlackHttpSender(url, DEMO_SIGNING_SECRET)
                envelopes = _stream(slack)
                events = [e for e in envelopes if e["type"] == "events_api"]
                retried = {id(e): 1 + i % 3 for i, e in enumerate(events[3:21:2])}
                retries = 0
                first: dict[int, Delivery] = {}
                for envelope in envelopes:
                    count = retried.get(id(envelope), 0)
                    retries += count
                    sent = slack.send(envelope, retries=count)
                    first[id(envelope)] = sent[0]
                    answers += sent
                # A command replayed: the very same signed request again.
                commands = [e for e in envelopes if e["type"] == "slash_commands"]
                replays = 0
                for envelope in commands[:2]:
                    body, _ = http_body(envelope)
                    answers.append(slack.post(body, first[id(envelope)].request_headers))
                    replays += 1
                refused = _attacks(slack, envelopes[0])
        finally:
            middleware.close()
    stats = middleware.stats
    latencies = sorted(answer.seconds * 1000 for answer in answers)
    buffer.close()
    return HttpDemoReport(
        deliveries=len(envelopes),
        requests=len(answers) + ATTACKS,
        retries=retries,
        replays=replays,
        attacks=ATTACKS,
        refused=refused,
        recorded=stats.outcomes["new"] + stats.outcomes["spooled"],
        duplicates=stats.outcomes["duplicate"],
        listener_runs=listeners.runs,
        answered_200=sum(answer.status == 200 for answer in answers),
        latency_p50_ms=statistics.median(latencies),
        latency_p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        by_type=dict(collections.Counter(e["type"] for e in envelopes)),
    )


def _attacks(slack: SlackHttpSender, genuine: dict[str, Any]) -> int:
    """Requests without the signing secret: each must be refused; returns how many were."""
    body, content_type = http_body(genuine)
    forged = SlackHttpSender(slack.url, "a-guessed-secret").signed_headers(body, content_type)
    stale = slack.signed_headers(body, content_type, timestamp=int(time.time()) - 600)
    refused = 0
    for headers in (forged, stale):
        if slack.post(body, headers).status == 401:
            refused += 1
    return refused


def render_http(report: HttpDemoReport, database: str) -> list[str]:
    """The demo's printout."""
    types = ", ".join(f"{count} {name}" for name, count in sorted(report.by_type.items()))
    return [
        f"A simulated Slack workspace posted {report.deliveries} signed HTTP deliveries ({types})",
        "to a slack_bolt App with recorder.slack.bolt.RecorderMiddleware, with the usual trouble:",
        f"{report.retries} event retries (X-Slack-Retry-Num), {report.replays} replayed commands, "
        f"and {report.attacks} forged or stale requests.",
        "",
        f"  requests posted        {report.requests:4d}",
        f"  refused as forged      {report.refused:4d}   answered 401, never stored",
        f"  recorded (new)         {report.recorded:4d}   stored in {database}",
        f"  dropped as duplicate   {report.duplicates:4d}   answered 200, no listener ran",
        f"  listener runs          {report.listener_runs:4d}",
        f"  answered 200           {report.answered_200:4d}   latency p50 "
        f"{report.latency_p50_ms:.1f} ms, p99 {report.latency_p99_ms:.1f} ms",
        "",
        "Every delivery was stored before it was answered, and handled exactly once.",
        "Query the audit trail:",
        f"  recorder --database-url {database} query --limit 10",
        f"  recorder --database-url {database} query --type slash_commands",
    ]
