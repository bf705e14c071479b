"""The per-row half of verify on SQLite: flag what a quick exact test cannot pass.

No SQLAlchemy (the statements come as SQL text, built by
:mod:`recorder.verify_sqlite`): this runs on the verifier's own connection,
and in the worker processes of a parallel verify, each on a connection of its
own whose read snapshot the verifier has lined up with its own (see
:class:`recorder.verify_sqlite.Helpers`). What comes back is only what the
verifier must judge: the keys of flagged members, the ids of flagged rows with
their kind, and how many unsealed rows passed.

A row passes when its text hashes to its stored digest (and, for a member, to
its sealed digest), its copy is byte for byte its text (compared by SQLite),
and the text decodes to an object whose reporting columns are the stored ones.
Anything else -- a ``\\u`` escape the copy may rewrite, a text that is no
JSON, a missing row, a moved time -- is flagged, and the per-row checks of
:mod:`recorder.verify` decide, so the findings are theirs.
"""

from __future__ import annotations

import hashlib
import json
import operator
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from typing import Any

from recorder.envelope import MAX_ENVELOPE_ID_LENGTH, REPORTING_COLUMNS, extract_columns

#: A worker's messages: it has connected; its read snapshot is fixed.
STARTED = "started"
READY = "ready"
#: The verifier's word to a worker: fix your snapshot now (the write lock is held).
SNAPSHOT = "snapshot"


@dataclass(frozen=True, slots=True)
class Part:
    """One share of the scan: SQL for a range of members and a range of rows.

    ``members`` selects ``block_no, position, sealed digest, same_at``,
    ``rows`` selects ``behind, sealed, future``; each then what
    :func:`consistent` reads, the reporting columns (``REPORTING_COLUMNS``) last.
    """

    members: str
    rows: str


@dataclass(slots=True)
class Flagged:
    """What one part's scan leaves for the verifier to judge."""

    members: list[tuple[int, int]] = field(default_factory=list)
    """``(block_no, position)`` of each member that did not pass."""
    rows: dict[str, str] = field(default_factory=dict)
    """envelope_id -> ``inserted``, ``future`` or ``check``, for unsealed rows."""
    unsealed_ok: int = 0
    """Unsealed rows that passed."""

    def merge(self, other: Flagged) -> None:
        self.members.extend(other.members)
        self.rows.update(other.rows)
        self.unsealed_ok += other.unsealed_ok


def check_part(cursor: sqlite3.Cursor, part: Part) -> Flagged:
    """Scan one part on ``cursor`` (inside the caller's read transaction)."""
    flagged = Flagged()
    pick = operator.itemgetter(*REPORTING_COLUMNS)
    _flag_members(cursor, part.members, pick, flagged)
    _flag_rows(cursor, part.rows, pick, flagged)
    return flagged


Pick = Callable[[dict[str, Any]], Any]


#: Where :func:`consistent`'s columns begin in each statement's rows.
_MEMBER_CHECKED = 4
_ROW_CHECKED = 3


def _flag_members(cursor: sqlite3.Cursor, sql: str, pick: Pick, flagged: Flagged) -> None:
    members = flagged.members
    # Plain tuples, read by position: anything more costs more than the checks.
    for row in cursor.execute(sql):
        text = row[5]
        if text is None or not row[3]:  # the row is gone, or its time moved
            members.append((row[0], row[1]))
            continue
        sha = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        if sha != row[2] or not consistent(row, _MEMBER_CHECKED, sha, pick):
            members.append((row[0], row[1]))


def _flag_rows(cursor: sqlite3.Cursor, sql: str, pick: Pick, flagged: Flagged) -> None:
    kinds = flagged.rows
    for row in cursor.execute(sql):
        is_behind, sealed, future, envelope_id, text = row[:5]
        if is_behind:
            if not sealed:
                kinds[envelope_id] = "inserted"
            continue
        if future:
            kinds[envelope_id] = "future"
            continue
        sha = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        if consistent(row, _ROW_CHECKED, sha, pick):
            flagged.unsealed_ok += 1
        else:
            kinds[envelope_id] = "check"


def _no_constants(name: str) -> Any:
    raise ValueError(name)


#: json.loads(text, parse_constant=...) without building a decoder per row.
_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def consistent(row: Sequence[Any], at: int, sha: str, pick: Pick) -> bool:
    """A quick pass of recorder.verify.check_consistent; False means: ask it.

    From ``row[at]`` on, ``row`` holds ``envelope_id, envelope_text,
    envelope_sha256, same_copy`` and then the reporting columns; ``sha`` is
    the text's digest; ``pick`` takes the reporting columns, as a tuple in
    that order, from extract_columns' dict.
    """
    envelope_id, text, stored_sha, same_copy = row[at : at + 4]
    # \\u escapes may need the copy rewritten (NUL, lone surrogates): leave those to it.
    if stored_sha != sha or not same_copy or "\\u" in text:
        return False
    if not 0 < len(envelope_id) <= MAX_ENVELOPE_ID_LENGTH or "\x00" in envelope_id:
        return False
    try:
        data = _DECODER.decode(text)
    except (ValueError, RecursionError):
        return False
    if not isinstance(data, dict) or data.get("envelope_id", envelope_id) != envelope_id:
        return False
    return bool(row[at + 4 :] == pick(extract_columns(data)))


def serve(pipe: Pipe, path: str, busy_timeout: float) -> None:
    """A worker process of a parallel verify: one part, in the verifier's snapshot.

    Connected, it says :data:`STARTED`; told :data:`SNAPSHOT`, it begins a
    read transaction and reads, which fixes its snapshot while the verifier
    holds the write lock, and answers :data:`READY`; then it scans the
    :class:`Part` it receives and sends back its :class:`Flagged`, or an
    error's text as a ``str``.
    """
    try:
        db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        try:
            pipe.send(STARTED)
            if pipe.recv() != SNAPSHOT:
                return
            db.execute("BEGIN DEFERRED")
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            pipe.send(READY)
            part = pipe.recv()
            pipe.send(check_part(db.cursor(), part))
        finally:
            db.close()
    except (EOFError, BrokenPipeError):
        return  # the verifier is gone or gave up: nothing to answer
    except Exception as exc:
        pipe.send(f"{type(exc).__name__}: {exc}")


def main(argv: Sequence[str]) -> None:
    """A worker's entry point: ``socket-fd path busy-timeout`` (see :func:`serve`)."""
    fd, path, busy_timeout = argv
    serve(Pipe(int(fd)), path, float(busy_timeout))
