"""Real Bolt apps on real local HTTP servers, for the HTTP-mode tests.

A sync ``App`` is served by Bolt's WSGI adapter under a threading wsgiref
server; an ``AsyncApp`` by its own aiohttp ``web_app()`` on an event loop in
a thread. Both listen on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web
from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult

from recorder.testing.slack_http import serve_wsgi

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_USER_ID = "U0SIMBOT"
BOT_ID = "B0SIMBOT"
PATH = "/slack/events"


def authorize(**_: Any) -> AuthorizeResult:
    """Bolt's authorization without a Slack API call."""
    return AuthorizeResult(
        enterprise_id=None,
        team_id="T0SIMTEAM",
        bot_token="xoxb-simulated",
        bot_user_id=BOT_USER_ID,
        bot_id=BOT_ID,
    )


async def async_authorize(**_: Any) -> AuthorizeResult:
    return authorize()


def sync_app(**options: Any) -> App:
    return App(signing_secret=SIGNING_SECRET, authorize=authorize, **options)


def async_app(**options: Any) -> AsyncApp:
    return AsyncApp(signing_secret=SIGNING_SECRET, authorize=async_authorize, **options)


class Calls:
    """What the listeners saw, thread-safe."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def add(self, key: str) -> None:
        with self.changed:
            self.counts[key] += 1
            self.changed.notify_all()

    def wait_for(
        self, predicate: Callable[[collections.Counter[str]], bool], timeout: float = 10
    ) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: predicate(self.counts), timeout), dict(self.counts)


@contextmanager
def serve_app(app: App) -> Iterator[str]:
    """Serve ``app`` over HTTP through Bolt's WSGI adapter; yield its request URL."""
    with serve_wsgi(SlackRequestHandler(app), PATH) as url:
        yield url


@contextmanager
def serve_async_app(app: AsyncApp) -> Iterator[str]:
    """Serve ``app`` through Bolt's aiohttp adapter; yield its request URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        runner = web.AppRunner(app.web_app(path=PATH))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["runner"] = runner
        state["port"] = runner.addresses[0][1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="bolt-aiohttp", daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield f"http://127.0.0.1:{state['port']}{PATH}"
    finally:
        asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
