"""A fake Slack for HTTP-mode apps: signs requests as Slack does and posts them, with retries.

::

    slack = SlackHttpSender("http://127.0.0.1:3000/slack/events", SIGNING_SECRET)
    deliveries = slack.send(slack.factory.message("hello"), retries=3)
    assert [d.status for d in deliveries] == [200, 200, 200, 200]

Bodies are what Slack posts: an Events API callback as JSON, a slash command
as a form, an interaction as a form whose ``payload`` field is JSON. They are
built from :class:`~recorder.simulator.envelopes.EnvelopeFactory` envelopes
(the Socket Mode envelope's ``payload`` *is* the HTTP body), so the same
factory serves both modes. Each request carries ``X-Slack-Request-Timestamp``
and ``X-Slack-Signature`` computed with slack_sdk's ``SignatureVerifier``,
exactly as Slack computes them.

Retries: Slack retries an event it got no 200 for, up to three times, each a
new signed request with ``X-Slack-Retry-Num`` and ``X-Slack-Retry-Reason``.
:meth:`SlackHttpSender.send` with ``retries=n`` sends n such retries after
the first delivery, whatever the app answered. Slack never retries slash
commands or interactions; for those ``retries`` re-sends the identical
signed request (a replay of the same delivery).

Standard library HTTP only; no I/O at import. It lives beside the Socket
Mode simulator, outside the test kit, so that ``recorder demo --http`` can use
it; tests import it as :mod:`recorder.testing.slack_http`.
"""

from __future__ import annotations

import json
import socketserver
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from slack_sdk.signature import SignatureVerifier

from recorder.simulator.envelopes import EnvelopeFactory, SimulatorError

__all__ = ["Delivery", "SlackHttpSender", "http_body", "serve_wsgi"]

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One request the fake Slack sent, and the app's answer."""

    status: int
    body: str
    headers: dict[str, str]
    """The answer's headers, names lower-cased."""
    request_headers: dict[str, str]
    seconds: float
    """From sending to the end of the answer."""


def http_body(envelope: Mapping[str, Any]) -> tuple[str, str]:
    """``(body, content_type)`` Slack posts for a Socket Mode ``envelope``'s payload.

    Raises
    ------
    SimulatorError
        The envelope is not ``events_api``, ``slash_commands`` or ``interactive``.
    """
    kind = envelope.get("type")
    payload = envelope.get("payload")
    if not isinstance(payload, Mapping):
        raise SimulatorError("an envelope without a payload has no HTTP body")
    if kind == "events_api":
        return json.dumps(payload, separators=(",", ":")), JSON
    if kind == "slash_commands":
        return urlencode({key: str(value) for key, value in payload.items()}), FORM
    if kind == "interactive":
        return urlencode({"payload": json.dumps(payload, separators=(",", ":"))}), FORM
    raise SimulatorError(f"Slack posts no HTTP request for a {kind!r} envelope")


class SlackHttpSender:
    """Posts signed Slack requests at an app's URL.

    Parameters
    ----------
    url
        The app's request URL (``http://127.0.0.1:3000/slack/events``).
    signing_secret
        The secret the app verifies with.
    factory
        Builds the envelopes; a new :class:`EnvelopeFactory` by default.
    timeout
        Seconds to wait for each answer (Slack waits 3).
    clock
        Unix time for the signature timestamps; move it to test stale requests.
    """

    def __init__(
        self,
        url: str,
        signing_secret: str,
        *,
        factory: EnvelopeFactory | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.factory = factory or EnvelopeFactory()
        self.timeout = timeout
        self._verifier = SignatureVerifier(signing_secret)
        self._clock = clock

    def signed_headers(
        self, body: str, content_type: str = JSON, *, timestamp: int | None = None
    ) -> dict[str, str]:
        """The headers Slack sends with ``body``: content type, timestamp, signature."""
        stamp = str(int(self._clock()) if timestamp is None else timestamp)
        signature = self._verifier.generate_signature(timestamp=stamp, body=body)
        assert signature is not None
        return {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature,
        }

    def post(self, body: str | bytes, headers: Mapping[str, str]) -> Delivery:
        """Post ``body`` with exactly ``headers``; an error status is returned, not raised."""
        data = body.encode("utf-8") if isinstance(body, str) else body
        request = urllib.request.Request(self.url, data=data, headers=dict(headers), method="POST")
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status = int(response.status)
                answer = response.read().decode("utf-8", "replace")
                answer_headers = {k.lower(): v for k, v in response.headers.items()}
        except urllib.error.HTTPError as exc:
            status = exc.code
            answer = exc.read().decode("utf-8", "replace")
            answer_headers = {k.lower(): v for k, v in exc.headers.items()}
        return Delivery(
            status=status,
            body=answer,
            headers=answer_headers,
            request_headers=dict(headers),
            seconds=time.perf_counter() - started,
        )

    def send(
        self,
        envelope: Mapping[str, Any],
        *,
        retries: int = 0,
        retry_reason: str = "http_timeout",
    ) -> list[Delivery]:
        """Deliver ``envelope``'s request, then ``retries`` retries; every answer, in order."""
        body, content_type = http_body(envelope)
        first = self.signed_headers(body, content_type)
        deliveries = [self.post(body, first)]
        for attempt in range(1, retries + 1):
            if envelope.get("type") == "events_api":
                headers = self.signed_headers(body, content_type)
                headers["X-Slack-Retry-Num"] = str(attempt)
                headers["X-Slack-Retry-Reason"] = retry_reason
            else:
                headers = dict(first)
            deliveries.append(self.post(body, headers))
        return deliveries

    def send_one(self, envelope: Mapping[str, Any]) -> Delivery:
        """Deliver ``envelope``'s request once."""
        return self.send(envelope)[0]


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_wsgi(app: Any, path: str = "/slack/events") -> Iterator[str]:
    """Serve a WSGI app (Flask, Bolt's ``SlackRequestHandler``) on 127.0.0.1 in a thread.

    Yields the URL of ``path`` on a free port; the server stops on exit. One
    thread per request, as a production server would answer Slack's
    concurrent deliveries.
    """
    server = make_server(
        "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="slack-http-app", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}{path}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
