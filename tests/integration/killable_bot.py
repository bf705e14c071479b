"""A bot process for the SIGKILL test: records, acks, then hangs in its handler.

Usage: python killable_bot.py API_URL APP_TOKEN DATABASE_URL SPOOL_PATH MARKER LEASE_SECONDS CLOCK

The handler appends the envelope id to MARKER and then sleeps, so the test
can kill the process while the envelope is mid-handler. CLOCK is a
:class:`FileClock` file: the process's buffer and listener read the time the
test writes there, so leases expire and renewals fall due when the test
moves it, not on the wall clock.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
from pathlib import Path
from typing import Any

from slack_sdk import WebClient
from slack_sdk.socket_mode.builtin import SocketModeClient

from recorder.adapters.sql import SQLEventBuffer
from recorder.slack import RecordingListener


class FileClock:
    """A clock shared across processes: seconds since the epoch, in a file the test writes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def monotonic(self) -> float:
        return float(self.path.read_text(encoding="ascii"))

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.monotonic(), dt.timezone.utc)

    def set(self, seconds: float) -> None:
        # Written aside and renamed in, so a reader never sees half a number.
        part = self.path.with_suffix(".part")
        part.write_text(repr(seconds), encoding="ascii")
        os.replace(part, self.path)

    def advance(self, seconds: float) -> None:
        self.set(self.monotonic() + seconds)


def main(argv: list[str]) -> None:
    api_url, app_token, database_url, spool_path, marker, lease, clock_path = argv
    clock = FileClock(clock_path)

    def handler(client: Any, request: Any) -> None:
        with open(marker, "a", encoding="utf-8") as out:
            out.write(request.envelope_id + "\n")
        threading.Event().wait(120)

    buffer = SQLEventBuffer(database_url, clock=clock.now)
    client = SocketModeClient(
        app_token=app_token, web_client=WebClient(base_url=api_url), ping_interval=1
    )
    RecordingListener(
        buffer,
        handler,
        spool_path=spool_path,
        lease_seconds=float(lease),
        recovery_interval=3600,
        monotonic=clock.monotonic,
        clock=clock.now,
    ).attach(client)
    client.connect()
    threading.Event().wait(120)


if __name__ == "__main__":
    main(sys.argv[1:])
