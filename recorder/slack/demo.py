"""``recorder demo``: a simulated workspace, a recording bot, and what happened.

A :class:`~recorder.testing.SocketModeSimulator` plays a realistic stream
(messages, mentions, reactions, slash commands, button clicks, a modal
submission) to a real slack_sdk client with a
:class:`~recorder.slack.RecordingListener`, including what makes
exactly-once hard: exact retransmits, Slack's retries in new envelopes, a
``disconnect`` and reconnect, and a handler that fails once and is
recovered.

The bot records into a scratch SQLite database of its own, so that its
recovery never touches (or runs the demo's handler on) envelopes already in
the configured database. Its envelopes are then copied into the configured
database as an archive (already handled: no bot ever dispatches them), ready
for ``recorder query``; the printout counts this run's envelopes only.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.websocket_client import SocketModeClient

from recorder import audit, importer
from recorder.adapters.sql import SQLEventBuffer
from recorder.simulator import SocketModeSimulator
from recorder.slack.listener import RecordingListener

__all__ = ["DemoReport", "run_demo"]

PACE_SECONDS = 0.01
CLOSE_WAIT_SECONDS = 1.0
# Generous: each wait returns as soon as it is met, and a loaded machine needs the slack.
STEP_WAIT_SECONDS = 30.0
FLAKY_TEXT = "deploy finished (the handler fails on its first try)"


@dataclass(frozen=True)
class DemoReport:
    """What the demo sent, and what the recorder made of it."""

    envelopes: int
    """Distinct envelopes (events counted once however often Slack delivered them)."""
    frames: int
    """Frames the bot received: envelopes, retransmits, retries."""
    retransmits: int
    retries: int
    reconnects: int
    recorded: int
    duplicates: int
    dispatched: int
    handled: int
    failed: int
    recovered: int
    acked_frames: int
    ack_p50_ms: float
    ack_p99_ms: float
    pending: int
    by_type: dict[str, int]
    copied: int = 0
    """Envelopes added to the configured database (as handled)."""
    already_there: int = 0
    """Envelopes the configured database held already (same ids)."""

    @property
    def exactly_once(self) -> bool:
        """Every envelope recorded once, handled once, nothing pending or unacked."""
        return (
            self.recorded == self.envelopes
            and self.handled == self.envelopes
            and self.pending == 0
            and self.duplicates == self.frames - self.envelopes
            and self.acked_frames == self.frames
        )


class _Handler:
    """The demo bot's code: pretends to work, and fails once on purpose."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failed_once = False
        self.calls: list[str] = []

    def __call__(self, client: Any, request: SocketModeRequest) -> None:
        event = request.payload.get("event") or {}
        if event.get("text") == FLAKY_TEXT:
            with self.lock:
                if not self.failed_once:
                    self.failed_once = True
                    raise RuntimeError("simulated failure: the deploy service timed out")
        time.sleep(0.005)
        with self.lock:
            self.calls.append(request.envelope_id)


def _stream(sim: SocketModeSimulator) -> list[dict[str, Any]]:
    factory = sim.envelopes
    envelopes: list[dict[str, Any]] = []
    for i in range(24):
        envelopes.append(factory.message(f"standup note {i}", channel="C0STANDUP"))
    for i in range(6):
        envelopes.append(factory.app_mention(f"<@U0SIMBOT> status of ticket {100 + i}?"))
    for reaction in ("eyes", "white_check_mark", "tada", "rocket"):
        envelopes.append(factory.reaction_added(reaction))
    for service in ("api", "web", "worker", "billing"):
        envelopes.append(factory.slash_command("/deploy", service))
    for value in ("approve", "reject", "approve"):
        envelopes.append(factory.block_actions(value, value))
    envelopes.append(factory.view_submission("incident_report"))
    envelopes.append(factory.message(FLAKY_TEXT, channel="C0DEPLOYS"))
    return envelopes


@contextlib.contextmanager
def _quiet_expected_failure() -> Iterator[None]:
    """Without logging configured, Python would print the planted failure's traceback."""
    slack_logger = logging.getLogger("recorder.slack")
    if logging.getLogger().handlers or slack_logger.handlers:
        yield
        return
    quiet = logging.NullHandler()
    slack_logger.addHandler(quiet)
    try:
        yield
    finally:
        slack_logger.removeHandler(quiet)


def _paced(action: Any, argument: Any) -> None:
    """Frames a few milliseconds apart, as a busy workspace sends them."""
    action(argument)
    time.sleep(PACE_SECONDS)


def _close_client(client: SocketModeClient) -> None:
    """Close the client, waiting a bounded time.

    websocket-client's close handshake can wait its full timeout when the
    reader thread takes the server's reply; everything is acked and handled
    by now, so the demo does not wait for that.
    """
    closer = threading.Thread(target=client.close, name="demo-client-close", daemon=True)
    closer.start()
    closer.join(CLOSE_WAIT_SECONDS)


def run_demo(database_url: str, *, lease_seconds: float = 1.0) -> DemoReport:
    """Play the demo stream, then copy its envelopes into ``database_url``; return the report.

    An SQLite ``database_url`` is created and migrated on first use; a
    PostgreSQL one needs ``recorder db upgrade`` first.
    """
    with (
        tempfile.TemporaryDirectory(prefix="recorder-demo-") as scratch,
        SQLEventBuffer(f"sqlite:///{Path(scratch) / 'demo.db'}") as buffer,
    ):
        report = _play(buffer, Path(scratch), lease_seconds)
        copied, already_there = _copy_into(buffer, database_url)
    return dataclasses.replace(report, copied=copied, already_there=already_there)


def _copy_into(buffer: SQLEventBuffer, database_url: str) -> tuple[int, int]:
    """This run's envelopes into ``database_url``, exactly and as handled (an archive)."""
    archive = io.BytesIO()
    audit.export(audit.query_envelopes(buffer.engine, audit.QuerySpec()), "archive", archive)
    archive.seek(0)
    with SQLEventBuffer(database_url) as target:
        result = importer.import_envelopes(target, archive)
    return result.new, result.duplicate


def _play(buffer: SQLEventBuffer, scratch: Path, lease_seconds: float) -> DemoReport:
    handler = _Handler()
    with (
        SocketModeSimulator(redeliver_after=None, close_after=0.5) as sim,
        _quiet_expected_failure(),
    ):
        listener = RecordingListener(
            buffer,
            handler,
            spool_path=scratch / "spool.db",
            lease_seconds=lease_seconds,
            recovery_interval=lease_seconds / 4,
        )
        client = SocketModeClient(
            app_token=sim.app_token, web_client=sim.web_client(), ping_interval=1
        )
        listener.attach(client)
        try:
            client.connect()
            sim.wait_for_connections(1)
            envelopes = _stream(sim)
            half = len(envelopes) // 2
            for envelope in envelopes[:half]:
                _paced(sim.send, envelope)
            # Slack asks for a fresh connection now and then; nothing may be lost.
            sim.wait_for_acks(half, timeout=STEP_WAIT_SECONDS)
            sim.disconnect("refresh_requested")
            sim.wait_for(
                lambda: sim.total_connections >= 2, timeout=STEP_WAIT_SECONDS, what="a reconnect"
            )
            sim.wait_for_connections(1)
            for envelope in envelopes[half:]:
                _paced(sim.send, envelope)
            retransmitted = envelopes[2:10:2] + envelopes[half + 1 : half + 4]
            for envelope in retransmitted:
                _paced(sim.retransmit, envelope["envelope_id"])
            events = [e for e in envelopes if e["type"] == "events_api"]
            retried = events[5:25:4]
            for envelope in retried:
                _paced(sim.retry, envelope)
            frames = len(envelopes) + len(retransmitted) + len(retried)
            sim.wait_for_acks(frames, timeout=STEP_WAIT_SECONDS)
            deadline = time.monotonic() + 10
            while len(handler.calls) < len(envelopes) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            _close_client(client)
            listener.close()
        acks = sim.acks
        latencies = sorted(ack.latency_ns / 1e6 for ack in acks)
        reconnects = sim.total_connections - 1
    stats = listener.stats
    pending = buffer.count_pending()
    return DemoReport(
        envelopes=len(envelopes),
        frames=stats.received,
        retransmits=len(retransmitted),
        retries=len(retried),
        reconnects=reconnects,
        recorded=stats.outcomes["new"] + stats.outcomes["spooled"],
        duplicates=stats.outcomes["duplicate"],
        dispatched=stats.dispatched,
        handled=stats.handled,
        failed=stats.failed,
        recovered=stats.recovered,
        acked_frames=len(acks),
        ack_p50_ms=statistics.median(latencies) if latencies else 0.0,
        ack_p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        if latencies
        else 0.0,
        pending=pending,
        by_type=dict(collections.Counter(e["type"] for e in envelopes)),
    )


def render(report: DemoReport, database: str, command: str = "recorder") -> list[str]:
    """The demo's printout; ``command`` starts the suggested follow-up commands."""
    types = ", ".join(f"{count} {name}" for name, count in sorted(report.by_type.items()))
    return [
        f"A simulated Slack workspace sent {report.envelopes} envelopes ({types})",
        "to a slack_sdk bot using recorder.slack.RecordingListener, with the usual trouble:",
        f"{report.retransmits} exact retransmits, {report.retries} retries in new envelopes, "
        f"{report.reconnects} reconnect, and a handler that fails once.",
        "",
        f"  frames received        {report.frames:4d}",
        f"  recorded (new)         {report.recorded:4d}   stored in {database}"
        + (f" ({report.already_there} already there)" if report.already_there else ""),
        f"  dropped as duplicate   {report.duplicates:4d}   acked, never dispatched",
        f"  dispatched to handler  {report.dispatched:4d}",
        f"  handler failures       {report.failed:4d}   left pending, then recovered: "
        f"{report.recovered}",
        f"  handled successfully   {report.handled:4d}   still pending: {report.pending}",
        f"  frames acked           {report.acked_frames:4d}   ack latency p50 "
        f"{report.ack_p50_ms:.1f} ms, p99 {report.ack_p99_ms:.1f} ms",
        "",
        "Every envelope was stored before its ack, and handled exactly once."
        if report.exactly_once
        else "NOT exactly once: the counts above disagree (see the lines that differ).",
        "Query the audit trail:",
        f"  {command} query --limit 10",
        f"  {command} query --type slash_commands",
        f"  {command} query --event-type app_mention --format jsonl",
    ]
