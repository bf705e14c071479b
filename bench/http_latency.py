"""Request -> response latency of a Bolt HTTP app with RecorderMiddleware, beside the same app without it.

Usage::

    .venv/bin/python bench/http_latency.py --postgres postgresql://postgres@127.0.0.1:5432/postgres \\
        -n 1000 --rounds 3

Five copies of one slack_bolt ``App`` (``process_before_response=True``;
listeners for ``message``, ``/deploy`` and the ``approve`` button, each
acking at once) are served by Bolt's WSGI adapter under a threading wsgiref
server on 127.0.0.1 (``recorder.testing.slack_http.serve_wsgi``):

* ``plain``       the app without the recorder: what Bolt, the HTTP server
                  and the client cost on their own.
* ``memory``      ``app.use(RecorderMiddleware(MemoryEventBuffer()))``: the
                  middleware's own cost (verification is Bolt's in every
                  variant), no database.
* ``sqlite``      ``app.use(RecorderMiddleware(SQLEventBuffer(sqlite file)))``.
* ``postgresql-raw``  the database's own cost: a Bolt middleware that runs
                  one raw psycopg ``INSERT (id, body) ... ON CONFLICT DO
                  NOTHING`` (autocommit, durable) per request, then ``next()``.
* ``postgresql``  RecorderMiddleware on a scratch PostgreSQL database
                  (created on the given server, dropped afterwards).

The client posts requests signed as Slack signs them (a mix of message
events, slash commands and block actions, each a first delivery, so each is
recorded), one at a time, to each variant in turn: the variants share the
machine's noise. Latency is from just before the request is written to the
end of the answer, measured by the client. The target: p99 within 3 ms of
``plain`` on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.authorization import AuthorizeResult
from sqlalchemy.engine import make_url

from recorder import db
from recorder.adapter import EventBufferAdapter
from recorder.adapters.memory import MemoryEventBuffer
from recorder.adapters.sql import SQLEventBuffer
from recorder.slack.bolt import RecorderMiddleware
from recorder.testing.envelopes import EnvelopeFactory
from recorder.testing.slack_http import SlackHttpSender, http_body, serve_wsgi

SECRET = "bench-signing-secret"
VARIANTS = ("plain", "memory", "sqlite", "postgresql-raw", "postgresql")


def authorize(**_: Any) -> AuthorizeResult:
    return AuthorizeResult(
        enterprise_id=None,
        team_id="T0SIMTEAM",
        bot_token="xoxb-bench",
        bot_user_id="U0SIMBOT",
        bot_id="B0SIMBOT",
    )


class RawInsert:
    """A Bolt middleware: one durable raw-driver insert per request, then next()."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("CREATE TABLE raw_requests (id text PRIMARY KEY, body text)")
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any], next: Any) -> None:
        key = str(body.get("event_id") or body.get("trigger_id") or uuid.uuid4())
        with self.lock:
            self.conn.execute(
                "INSERT INTO raw_requests VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (key, json.dumps(body)),
            )
        next()


def bolt_app(middleware: RecorderMiddleware | RawInsert | None) -> App:
    # process_before_response: the answer follows the listener directly. With
    # Bolt's default, a slash command's answer waits for a 10 ms poll of ack(),
    # a quantisation that would hide the recorder's cost.
    app = App(signing_secret=SECRET, authorize=authorize, process_before_response=True)
    if middleware is not None:
        app.use(middleware)

    @app.event("message")
    def on_message() -> None:
        pass

    @app.command("/deploy")
    def on_deploy(ack: Any) -> None:
        ack()

    @app.action("approve")
    def on_approve(ack: Any) -> None:
        ack()

    return app


@contextmanager
def scratch_postgres(server_url: str) -> Iterator[str]:
    name = f"recorder_bench_http_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    libpq = make_url(server_url).set(drivername="postgresql")
    admin = libpq.render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = libpq.set(database=name).render_as_string(hide_password=False)
    try:
        db.upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def requests(factory: EnvelopeFactory, count: int) -> list[tuple[str, str]]:
    makers = [
        lambda i: factory.message(f"benchmark message {i}"),
        lambda i: factory.message(f"another message {i}"),
        lambda i: factory.slash_command("/deploy", f"service-{i}"),
        lambda i: factory.block_actions("approve", str(i)),
    ]
    return [http_body(makers[i % len(makers)](i)) for i in range(count)]


def post(url: str, sender: SlackHttpSender, body: str, content_type: str) -> float:
    """One signed request; its latency in milliseconds."""
    parts = urlsplit(url)
    headers = sender.signed_headers(body, content_type)
    data = body.encode()
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    started = time.perf_counter()
    conn.request("POST", parts.path, body=data, headers=headers)
    response = conn.getresponse()
    response.read()
    elapsed = (time.perf_counter() - started) * 1000
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"{url} answered {response.status}")
    return elapsed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", required=True, help="a PostgreSQL server's URL")
    parser.add_argument(
        "-n", type=int, default=1000, help="measured requests per variant and round"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()

    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    latencies: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        sqlite_url = f"sqlite:///{scratch / 'recorder.db'}"
        db.upgrade(sqlite_url)
        pg_url = stack.enter_context(scratch_postgres(args.postgres))
        urls: dict[str, str] = {}
        middlewares = []
        for variant in VARIANTS:
            middleware: RecorderMiddleware | RawInsert | None = None
            if variant == "postgresql-raw":
                middleware = RawInsert(pg_url)
                stack.callback(middleware.conn.close)
            elif variant != "plain":
                buffer: EventBufferAdapter = (
                    MemoryEventBuffer()
                    if variant == "memory"
                    else SQLEventBuffer(sqlite_url if variant == "sqlite" else pg_url)
                )
                stack.callback(buffer.close)
                middleware = RecorderMiddleware(buffer, spool_path=scratch / f"{variant}.spool")
                middlewares.append(middleware)
            app = SlackRequestHandler(bolt_app(middleware))
            urls[variant] = stack.enter_context(serve_wsgi(app))
        for middleware in middlewares:
            stack.callback(middleware.close)
        sender = SlackHttpSender(urls["plain"], SECRET)
        factory = EnvelopeFactory()
        for round_number in range(args.rounds + 1):
            measured = round_number > 0
            count = args.n if measured else args.warmup
            # Each variant gets its own requests (each a first delivery), in turn.
            streams = {variant: requests(factory, count) for variant in VARIANTS}
            shift = round_number % len(VARIANTS)
            order = list(VARIANTS[shift:] + VARIANTS[:shift])
            for i in range(count):
                for variant in order:
                    body, content_type = streams[variant][i]
                    elapsed = post(urls[variant], sender, body, content_type)
                    if measured:
                        latencies[variant].append(elapsed)
        stored = {m.stats.outcomes["new"] for m in middlewares}
    plain = latencies["plain"]
    print(f"requests per variant: {len(plain)}; recorded as new per recorder: {sorted(stored)}")
    print()
    print("| variant | p50 ms | p99 ms | mean ms | p50 over plain | p99 over plain |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for variant in VARIANTS:
        values = latencies[variant]
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        print(
            f"| {variant} | {p50:.2f} | {p99:.2f} | {statistics.fmean(values):.2f} "
            f"| {p50 - percentile(plain, 0.5):+.2f} | {p99 - percentile(plain, 0.99):+.2f} |"
        )
    load = os.getloadavg()
    print(f"\nload average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
