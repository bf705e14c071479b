"""Named points where a crash test can freeze this process, to kill it exactly there.

With ``RECORDER_FAILPOINT=name`` (or ``name:N`` for the N-th time it is
reached) in the environment, :func:`reach` stops the process with SIGSTOP
at that point; the test sees it stopped and sends SIGKILL, as an operator's
``kill -9`` or the OOM killer would. Without the variable it does nothing.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "RECORDER_FAILPOINT"
_hits: Counter[str] = Counter()


def reach(name: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] == (int(nth) if nth else 1):
        os.kill(os.getpid(), signal.SIGSTOP)
