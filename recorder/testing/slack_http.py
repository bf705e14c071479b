"""The fake Slack for HTTP-mode apps, for tests: :mod:`recorder.simulator.slack_http`, re-exported.

It lives outside the test kit so that ``recorder demo --http`` can use it
without importing test support; its guide is ``docs/http.md``.
"""

from __future__ import annotations

from recorder.simulator.slack_http import Delivery, SlackHttpSender, http_body, serve_wsgi

__all__ = ["Delivery", "SlackHttpSender", "http_body", "serve_wsgi"]
