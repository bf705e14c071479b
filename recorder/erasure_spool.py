"""Erasure in a listener's spool file: envelopes recorded while the database was away.

A spool (:mod:`recorder.slack.spool`) is a SQLite file with the same
``envelopes`` table; its rows move into the database when it answers again.
An erasure with ``spool=`` erases and scrubs there too, with the same
tombstones and scrubs and the database's legal holds, and logs each envelope
in the database's erasure log as ``spooled`` (or ``deferred`` when held). A
spooled entry's envelope is absent from the database until the spool drains;
``recorder verify`` then checks it like any other (the drained row carries
the tombstone, so its digest column is the tombstone's). A held spooled
envelope drains unchanged and :func:`recorder.erasure.resume` completes it
in the database once its hold is released.

The spool row is changed before the log is written: a crash in between
leaves a drained tombstone that names its erasure, never an entry that
claims a change the spool does not have.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recorder.engine import create_engine, is_sqlite, storage_errors
from recorder.erasure import (
    ErasureReport,
    _covering,
    _holds_in_force,
    _mention_filter,
    _subject_filter,
    replacement,
)
from recorder.errors import ConfigurationError
from recorder.schema import envelopes, erased_envelopes
from recorder.tombstone import text_sha256


@contextmanager
def _spool_engine(path: Path) -> Iterator[Engine]:
    if not path.is_file():
        raise ConfigurationError(f"no spool file at {path}")
    engine = create_engine(f"sqlite:///{path}")
    try:
        yield engine
    finally:
        engine.dispose()


def _candidates(
    engine: Engine, user_id: str, team_id: str | None, subjects: str, mentions: str
) -> list[tuple[Any, str, str]]:
    """``(row, kind, action)`` for every spooled envelope the erasure touches."""
    found: list[tuple[Any, str, str]] = []
    with engine.connect() as conn:
        if subjects == "erase":
            stmt = sa.select(envelopes).where(*_subject_filter(user_id, team_id))
            found += [(row, "subject", "erase") for row in conn.execute(stmt)]
        if mentions != "skip":
            stmt = sa.select(envelopes).where(*_mention_filter(user_id, team_id))
            found += [(row, "mention", mentions) for row in conn.execute(stmt)]
    return found


def plan_spool(
    path: Path, user_id: str, *, team_id: str | None, subjects: str, mentions: str
) -> int:
    """How many spooled envelopes an erasure would change."""
    with storage_errors(f"reading the spool {path}"), _spool_engine(path) as spool:
        return len(_candidates(spool, user_id, team_id, subjects, mentions))


def erase_spool(
    engine: Engine,
    path: Path,
    *,
    erasure_id: int,
    user_id: str,
    team_id: str | None,
    subjects: str,
    mentions: str,
    report: ErasureReport,
) -> None:
    """Erase in the spool at ``path`` under the running erasure ``erasure_id``; log in ``engine``."""
    with storage_errors(f"erasing in the spool {path}"), _spool_engine(path) as spool:
        with engine.connect() as conn:
            holds = _holds_in_force(conn)
        for row, kind, action in _candidates(spool, user_id, team_id, subjects, mentions):
            original = text_sha256(row.envelope_text)
            covering = _covering(holds, row)
            entry: dict[str, Any] = {
                "erasure_id": erasure_id,
                "envelope_id": row.envelope_id,
                "received_at": row.received_at,
                "kind": kind,
                "action": action,
                "original": original,
            }
            if covering:
                _log(engine, entry, state="deferred", held_by=covering, replacement=None)
                report.deferred += 1
                continue
            parsed, values = replacement(row, action, erasure_id, user_id)
            # The spool's own digest column follows its text: the drain recomputes it anyway.
            values["envelope_sha256"] = parsed.sha256
            with spool.begin() as sconn:
                sconn.execute(
                    sa.update(envelopes)
                    .where(envelopes.c.envelope_id == row.envelope_id)
                    .values(values)
                )
            _log(engine, entry, state="spooled", held_by=None, replacement=parsed.sha256)
            report.spooled += 1


def _log(
    engine: Engine,
    entry: dict[str, Any],
    *,
    state: str,
    held_by: list[str] | None,
    replacement: str | None,
) -> None:
    with engine.begin() as conn:
        if not is_sqlite(conn):
            conn.execute(
                sa.text(
                    "SELECT recorder_erasure_log_spooled(:erasure_id, :envelope_id, :received_at, "
                    ":kind, :action, :state, CAST(:held_by AS jsonb), :original, :replacement)"
                ),
                {
                    **entry,
                    "state": state,
                    "held_by": None if held_by is None else json.dumps(held_by),
                    "replacement": replacement,
                },
            )
            return
        exists = conn.execute(
            sa.select(envelopes.c.envelope_id).where(
                envelopes.c.envelope_id == entry["envelope_id"]
            )
        ).first()
        if exists is not None:
            return  # drained meanwhile: the database step erases and logs it
        conn.execute(
            sa.insert(erased_envelopes)
            .prefix_with("OR IGNORE")
            .values(
                erasure_id=entry["erasure_id"],
                envelope_id=entry["envelope_id"],
                received_at=entry["received_at"],
                kind=entry["kind"],
                action=entry["action"],
                state=state,
                held_by=held_by,
                original_sha256=entry["original"],
                replacement_sha256=replacement,
                erased_at=dt.datetime.now(dt.timezone.utc) if state == "spooled" else None,
            )
        )
