"""A bot process for the SIGKILL test: records, acks, then hangs in its handler.

Usage: python killable_bot.py API_URL APP_TOKEN DATABASE_URL SPOOL_PATH MARKER LEASE_SECONDS

The handler appends the envelope id to MARKER and then sleeps, so the test
can kill the process while the envelope is mid-handler.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from slack_sdk import WebClient
from slack_sdk.socket_mode.builtin import SocketModeClient

from recorder.adapters.sql import SQLEventBuffer
from recorder.slack import RecordingListener


def main(argv: list[str]) -> None:
    api_url, app_token, database_url, spool_path, marker, lease = argv

    def handler(client: Any, request: Any) -> None:
        with open(marker, "a", encoding="utf-8") as out:
            out.write(request.envelope_id + "\n")
        threading.Event().wait(120)

    buffer = SQLEventBuffer(database_url)
    client = SocketModeClient(
        app_token=app_token, web_client=WebClient(base_url=api_url), ping_interval=1
    )
    RecordingListener(
        buffer,
        handler,
        spool_path=spool_path,
        lease_seconds=float(lease),
        recovery_interval=3600,
    ).attach(client)
    client.connect()
    threading.Event().wait(120)


if __name__ == "__main__":
    main(sys.argv[1:])
