"""A Bolt app process over HTTP for the multi-process test.

Usage: python http_app_process.py DATABASE_URL SPOOL_PATH HANDLED_LOG

Serves a sync Bolt app with RecorderMiddleware on 127.0.0.1 (a free port,
printed on stdout as the first line), and appends the event id of every
message it handles to HANDLED_LOG. Runs until its standard input closes.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from recorder.adapters.sql import SQLEventBuffer
from recorder.slack.bolt import RecorderMiddleware
from tests.integration.http_apps import serve_app, sync_app


def main(argv: list[str]) -> None:
    database_url, spool_path, handled_log = argv
    buffer = SQLEventBuffer(database_url)
    middleware = RecorderMiddleware(buffer, spool_path=spool_path)
    app = sync_app()
    app.use(middleware)
    log = os.open(handled_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    @app.event("message")
    def on_message(body: dict[str, Any]) -> None:
        # One small O_APPEND write per line: lines from both processes never interleave.
        os.write(log, f"{body['event_id']} {os.getpid()}\n".encode())

    with serve_app(app) as url:
        print(url, flush=True)
        sys.stdin.read()
    middleware.close()
    buffer.close()


if __name__ == "__main__":
    main(sys.argv[1:])
