"""Right to erasure: ``recorder erase`` removes one Slack user's data and logs it.

Two kinds of envelope hold a user's data:

* **subject**: the user's own envelopes, found through indexes only: the
  ``user_id`` reporting column (the actor: ``event.user``, ``user.id``,
  ``user_id``, an edited or deleted message's author) and the
  ``message_author`` expression index (a message shortcut's message, a shared
  message's author). By default they are **erased**: the text and the
  queryable copy become a tombstone (:mod:`recorder.tombstone`), ``user_id``
  is cleared, and the row keeps its id, type, ``received_at``, the other
  reporting columns and ``envelope_sha256`` of the original text.
* **mention**: envelopes of other users that mention them (``<@U123>`` in
  text, a rich-text ``user`` element in blocks). By default they are
  **scrubbed**: the mentions are replaced and the rest is kept. Finding them
  reads the text of every envelope that contains the id (a scan).

Every envelope changed is logged in ``erased_envelopes`` with the digest of
the text it replaced and of the text it wrote, under an ``erasures`` row
(who asked, why, whose data, which database role); ``recorder verify``
accepts exactly those changes (:mod:`recorder.erasure_check`).

**Legal holds win.** An envelope a hold in force covers is not changed: its
row is logged as ``deferred`` with the holds' names, and :func:`resume`
(``recorder erase --resume``, safe to schedule next to ``prune``) completes it
once the holds are released.

On PostgreSQL every step runs inside database-side functions (migration
``0005``) so that the eraser role needs no privilege on the envelopes; on
SQLite the same steps run here, in Python, each batch in one ``BEGIN
IMMEDIATE`` transaction. Steps are serialised (an advisory lock on
PostgreSQL, the write lock on SQLite), and each batch commits on its own: an
interrupted erasure stays ``running`` and :func:`resume` finishes it.

Over 450 lines: planning, erasing, deferring and resuming share one batch
loop and its statements on both engines; the spool and archive variants live
in :mod:`recorder.erasure_spool` and :mod:`recorder.erasure_archive`.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from recorder.engine import is_sqlite, read_only, storage_errors
from recorder.envelope import ParsedEnvelope, parse_envelope
from recorder.errors import RecorderError
from recorder.holds import LegalHold
from recorder.schema import (
    DONE,
    envelopes,
    erased_envelopes,
    erasures,
    legal_holds,
    message_author,
    pruned_envelopes,
)
from recorder.tombstone import PERSONAL_COLUMNS, is_user_id, scrub, text_sha256, tombstone_text

UTC = dt.timezone.utc
DEFAULT_BATCH_SIZE = 1000
MAX_BATCH_SIZE = 100_000
#: Transaction-level advisory lock that serialises erasure steps on PostgreSQL ("rece").
ERASE_LOCK_KEY = 0x72656365
SUBJECT_ACTIONS = ("erase", "skip")
MENTION_ACTIONS = ("scrub", "erase", "skip")
_NO_LIMIT = 2**62


class ErasureError(RecorderError, ValueError):
    """An erasure request cannot be carried out (bad user id, no reason, bad option)."""


def default_actor() -> str:
    """The OS user running this process."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


@dataclass(frozen=True, slots=True)
class PlanRow:
    """How many envelopes of one kind in one channel an erasure would touch."""

    kind: str
    """``subject`` or ``mention``."""
    channel_id: str | None
    envelopes: int
    held: int
    """Of those, how many a legal hold in force covers (they would be deferred)."""


@dataclass(slots=True)
class ErasurePlan:
    """What :func:`plan` found: counts per kind and channel; nothing was changed."""

    user_id: str
    rows: list[PlanRow] = field(default_factory=list)

    def total(self, kind: str | None = None) -> int:
        return sum(r.envelopes for r in self.rows if kind is None or r.kind == kind)

    def held(self) -> int:
        return sum(r.held for r in self.rows)

    def lines(self) -> list[str]:
        out = [f"{'kind':8} {'channel':14} {'envelopes':>9} {'held':>6}"]
        out += [
            f"{r.kind:8} {r.channel_id or '-':14} {r.envelopes:>9} {r.held:>6}" for r in self.rows
        ]
        out.append(
            f"dry run: would erase {self.total('subject')} envelopes of {self.user_id} and "
            f"touch {self.total('mention')} that mention them; {self.held()} held "
            "(would be deferred); nothing changed"
        )
        return out


@dataclass(slots=True)
class ErasureReport:
    """What :func:`erase` or :func:`resume` did."""

    erasure_ids: list[int] = field(default_factory=list)
    status: str = "completed"
    """``completed``; ``deferred`` when some envelopes wait for legal holds."""
    erased: int = 0
    scrubbed: int = 0
    deferred: int = 0
    gone: int = 0
    """Deferred envelopes pruned before their holds were released."""
    spooled: int = 0
    """Envelopes erased or scrubbed in a spool file (see :mod:`recorder.erasure_spool`)."""
    archived: int = 0
    """Envelopes erased or scrubbed in archive files (see :mod:`recorder.erasure_archive`)."""
    archived_held: int = 0
    """Archived envelopes left as they were because a legal hold covers them."""
    deferred_by_hold: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        ids = ", ".join(str(i) for i in self.erasure_ids)
        text = (
            f"{f'erasure {ids}' if ids else 'resumed'}: erased {self.erased} envelopes, "
            f"scrubbed {self.scrubbed}, deferred {self.deferred}"
        )
        if self.spooled:
            text += f", {self.spooled} in the spool"
        if self.archived:
            text += f", {self.archived} in the archive"
        if self.archived_held:
            text += f" ({self.archived_held} archived envelopes held: erase again once released)"
        if self.gone:
            text += f", {self.gone} pruned before their holds were released"
        if self.deferred_by_hold:
            holds = ", ".join(f"{n} ({c})" for n, c in sorted(self.deferred_by_hold.items()))
            text += f" under legal holds {holds}; run `recorder erase --resume` once released"
        return text


def _check_request(
    user_id: str, team_id: str | None, subjects: str, mentions: str, batch_size: int
) -> None:
    if not is_user_id(user_id):
        raise ErasureError(f"{user_id!r} is not a Slack user id (U or W, then letters and digits)")
    if team_id is not None and (not isinstance(team_id, str) or not team_id):
        raise ErasureError("team must be a non-empty team id or unset")
    if subjects not in SUBJECT_ACTIONS:
        raise ErasureError(f"subjects must be one of {', '.join(SUBJECT_ACTIONS)}")
    if mentions not in MENTION_ACTIONS:
        raise ErasureError(f"mentions must be one of {', '.join(MENTION_ACTIONS)}")
    if subjects == "skip" and mentions == "skip":
        raise ErasureError("nothing to do: subjects and mentions are both skipped")
    _check_batch(batch_size)


def _check_batch(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ErasureError(f"batch size must be between 1 and {MAX_BATCH_SIZE}")


# -- finding: the same predicates as the PostgreSQL functions


def mention_pattern(user_id: str) -> str:
    """The regular expression (Python and PostgreSQL alike) for a mention of ``user_id``."""
    return "<@" + user_id + r'(\|[^>]*)?>|"' + user_id + '"'


def _subject_filter(user_id: str, team_id: str | None) -> list[sa.ColumnElement[bool]]:
    author = message_author(envelopes.c.envelope)
    terms = [sa.or_(envelopes.c.user_id == user_id, author == user_id)]
    if team_id is not None:
        terms.append(envelopes.c.team_id == team_id)
    return terms


def _mention_filter(user_id: str, team_id: str | None) -> list[sa.ColumnElement[bool]]:
    author = message_author(envelopes.c.envelope)
    # CASE fixes the order: the cheap substring test first, the regex and JSON only after it.
    terms: list[sa.ColumnElement[bool]] = [
        sa.case(
            (
                sa.func.instr(envelopes.c.envelope_text, user_id) > 0,
                sa.and_(
                    envelopes.c.envelope_text.regexp_match(mention_pattern(user_id)),
                    envelopes.c.user_id.is_distinct_from(user_id),
                    author.is_distinct_from(user_id),
                ),
            ),
            else_=sa.false(),
        )
    ]
    if team_id is not None:
        terms.append(envelopes.c.team_id == team_id)
    return terms


def _holds_in_force(conn: Connection) -> list[LegalHold]:
    stmt = sa.select(legal_holds).where(legal_holds.c.released_at.is_(None))
    return [LegalHold(**row._mapping) for row in conn.execute(stmt)]


def _covering(holds: Iterable[LegalHold], row: Any) -> list[str]:
    """Names of the holds in force that cover ``row``: the rule prune applies."""
    return sorted(h.name for h in holds if h.covers(row._mapping, row.received_at))


# -- the dry run


def plan(
    engine: Engine,
    user_id: str,
    *,
    team_id: str | None = None,
    subjects: str = "erase",
    mentions: str = "scrub",
) -> ErasurePlan:
    """Count what :func:`erase` would touch, per kind and channel; change nothing.

    Raises
    ------
    ErasureError
        A bad user id or option.
    StorageUnavailable
        The database failed.
    """
    _check_request(user_id, team_id, subjects, mentions, DEFAULT_BATCH_SIZE)
    result = ErasurePlan(user_id=user_id)
    with storage_errors("planning an erasure"):
        if not is_sqlite(engine):
            with engine.begin() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT kind, channel_id, envelopes, held "
                        "FROM recorder_erasure_plan(:user_id, :team_id, :subjects, :mentions)"
                    ),
                    {
                        "user_id": user_id,
                        "team_id": team_id,
                        "subjects": subjects != "skip",
                        "mentions": mentions != "skip",
                    },
                ).all()
            result.rows = [
                PlanRow(r.kind, r.channel_id, int(r.envelopes), int(r.held)) for r in rows
            ]
            return result
        with read_only(engine) as conn:
            holds = _holds_in_force(conn)
            counts: Counter[tuple[str, str | None]] = Counter()
            held: Counter[tuple[str, str | None]] = Counter()
            columns = [envelopes.c[c] for c in ("channel_id", "team_id", "user_id", "received_at")]
            kinds = []
            if subjects != "skip":
                kinds.append(("subject", _subject_filter(user_id, team_id)))
            if mentions != "skip":
                kinds.append(("mention", _mention_filter(user_id, team_id)))
            for kind, terms in kinds:
                for row in conn.execute(sa.select(*columns).where(*terms)):
                    counts[(kind, row.channel_id)] += 1
                    if _covering(holds, row):
                        held[(kind, row.channel_id)] += 1
        order = sorted(counts, key=lambda k: (k[0] != "subject", k[1] is None, k[1] or ""))
        result.rows = [PlanRow(k[0], k[1], counts[k], held[k]) for k in order]
    return result


# -- erasing


def erase(
    engine: Engine,
    user_id: str,
    *,
    reason: str,
    team_id: str | None = None,
    actor: str | None = None,
    subjects: str = "erase",
    mentions: str = "scrub",
    batch_size: int = DEFAULT_BATCH_SIZE,
    spool: str | Path | None = None,
    archive: str | Path | None = None,
) -> ErasureReport:
    """Erase ``user_id``'s envelopes and scrub their mentions; log every change.

    Parameters
    ----------
    user_id
        The Slack user (``U...`` or ``W...``).
    reason
        Why (a ticket, the request's reference); stored with the erasure.
    team_id
        Only envelopes of this team (default: every team).
    actor
        Who asked for it (default: the OS user); the database role that ran
        it is stored beside it.
    subjects
        ``erase`` (default) or ``skip`` the user's own envelopes.
    mentions
        ``scrub`` (default), ``erase`` or ``skip`` envelopes that mention them.
    batch_size
        Envelopes per transaction.
    spool
        A listener's spool file to erase in as well (first, so an envelope
        that drains meanwhile is caught by the database's pass).
    archive
        An archive directory of ``recorder prune --archive`` to erase in as
        well (needs the ``archive`` extra).

    Returns
    -------
    ErasureReport
        With ``status == "deferred"`` when legal holds kept some envelopes.

    Raises
    ------
    ErasureError
        A bad user id, an empty reason, or a bad option.
    StorageUnavailable
        The database failed; every batch committed before stays done and
        logged, and :func:`resume` finishes the run.
    """
    _check_request(user_id, team_id, subjects, mentions, batch_size)
    if not isinstance(reason, str) or not reason.strip():
        raise ErasureError("an erasure needs a reason")
    actor = actor or default_actor()
    report = ErasureReport()
    with storage_errors(f"erasing the data of {user_id}"):
        erasure_id = _start(engine, user_id, team_id, reason, actor, subjects, mentions)
        report.erasure_ids.append(erasure_id)
        if spool is not None:
            from recorder.erasure_spool import erase_spool

            erase_spool(
                engine,
                Path(spool),
                erasure_id=erasure_id,
                user_id=user_id,
                team_id=team_id,
                subjects=subjects,
                mentions=mentions,
                report=report,
            )
        if archive is not None:
            from recorder.erasure_archive import erase_archive

            erase_archive(
                engine,
                archive,
                erasure_id=erasure_id,
                user_id=user_id,
                team_id=team_id,
                subjects=subjects,
                mentions=mentions,
                report=report,
            )
        _run(engine, erasure_id, batch_size, report)
        _deferred_summary(engine, report)
    return report


def _start(
    engine: Engine,
    user_id: str,
    team_id: str | None,
    reason: str,
    actor: str,
    subjects: str,
    mentions: str,
) -> int:
    with engine.begin() as conn:
        if not is_sqlite(conn):
            return int(
                conn.execute(
                    sa.text(
                        "SELECT recorder_erasure_start(:user_id, :team_id, :reason, :actor, "
                        ":subjects, :mentions)"
                    ),
                    {
                        "user_id": user_id,
                        "team_id": team_id,
                        "reason": reason,
                        "actor": actor,
                        "subjects": subjects,
                        "mentions": mentions,
                    },
                ).scalar_one()
            )
        return int(
            conn.execute(
                sa.insert(erasures)
                .values(
                    requested_at=dt.datetime.now(UTC),
                    status="running",
                    user_id=user_id,
                    team_id=team_id,
                    reason=reason,
                    actor=actor,
                    db_user=default_actor(),
                    subject_action=subjects,
                    mention_action=mentions,
                )
                .returning(erasures.c.id)
            ).scalar_one()
        )


def _run(engine: Engine, erasure_id: int, batch_size: int, report: ErasureReport) -> None:
    """Step ``erasure_id`` until nothing is left to find."""
    while True:
        with engine.begin() as conn:
            if is_sqlite(conn):
                step = _step_sqlite(conn, erasure_id, batch_size)
            else:
                row = conn.execute(
                    sa.text(
                        "SELECT erased, scrubbed, deferred, examined, status "
                        "FROM recorder_erasure_step(:id, :limit)"
                    ),
                    {"id": erasure_id, "limit": batch_size},
                ).one()
                step = _Step(*row)
        report.erased += step.erased
        report.scrubbed += step.scrubbed
        report.deferred += step.deferred
        if step.status != "running":
            if step.status == "deferred":
                report.status = "deferred"
            return


@dataclass(frozen=True, slots=True)
class _Step:
    erased: int
    scrubbed: int
    deferred: int
    found: int
    status: str


def _step_sqlite(conn: Connection, erasure_id: int, limit: int) -> _Step:
    er = conn.execute(sa.select(erasures).where(erasures.c.id == erasure_id)).first()
    if er is None or er.status != "running":
        raise ErasureError(f"erasure {erasure_id} is not running")
    logged = sa.exists().where(
        erased_envelopes.c.erasure_id == erasure_id,
        erased_envelopes.c.envelope_id == envelopes.c.envelope_id,
    )
    candidates: list[tuple[str, str, str]] = []
    if er.subject_action == "erase":
        stmt = (
            sa.select(envelopes.c.envelope_id)
            .where(*_subject_filter(er.user_id, er.team_id), ~logged)
            .limit(limit)
        )
        candidates += [(r.envelope_id, "subject", "erase") for r in conn.execute(stmt)]
    if er.mention_action != "skip" and len(candidates) < limit:
        stmt = (
            sa.select(envelopes.c.envelope_id)
            .where(*_mention_filter(er.user_id, er.team_id), ~logged)
            .limit(limit - len(candidates))
        )
        candidates += [(r.envelope_id, "mention", er.mention_action) for r in conn.execute(stmt)]
    holds = _holds_in_force(conn)
    outcomes: Counter[str] = Counter()
    for envelope_id, kind, action in candidates:
        outcomes[
            _record_sqlite(conn, holds, erasure_id, envelope_id, kind, action, er.user_id)
        ] += 1
    status = "running"
    if len(candidates) < limit:
        deferred = conn.execute(
            sa.select(sa.func.count())
            .select_from(erased_envelopes)
            .where(
                erased_envelopes.c.erasure_id == erasure_id, erased_envelopes.c.state == "deferred"
            )
        ).scalar_one()
        status = "deferred" if deferred else "completed"
        conn.execute(
            sa.update(erasures)
            .where(erasures.c.id == erasure_id)
            .values(status=status, finished_at=None if deferred else dt.datetime.now(UTC))
        )
    return _Step(
        outcomes["erase"], outcomes["scrub"], outcomes["deferred"], len(candidates), status
    )


def replacement(
    row: Any, action: str, erasure_id: int, user_id: str
) -> tuple[ParsedEnvelope, dict[str, Any]]:
    """The text an erasure writes over ``row`` (an ``envelopes`` row), and the new column values.

    ``erase`` writes the tombstone and clears the personal columns (and marks
    the envelope handled: a tombstone is nothing to dispatch); ``scrub``
    replaces the user's mentions. The digest column is left alone: it keeps
    the original's digest.
    """
    current = text_sha256(row.envelope_text)
    values: dict[str, Any] = {}
    if action == "erase":
        new_text = tombstone_text(
            envelope_id=row.envelope_id,
            envelope_type=row.envelope_type,
            columns=dict(row._mapping),
            erasure_id=erasure_id,
            original_sha256=current,
        )
        values.update({name: None for name in PERSONAL_COLUMNS})
        values.update(status=DONE, completed_at=row.completed_at or dt.datetime.now(UTC))
    elif action == "scrub":
        new_text = scrub(row.envelope_text, user_id)
    else:
        raise ValueError(f"unknown erasure action {action!r}")
    parsed = parse_envelope(row.envelope_id, new_text, max_bytes=_NO_LIMIT)
    # sa.literal: the text is already JSON; the JSON type would encode it again.
    values.update(envelope_text=new_text, envelope=sa.literal(parsed.queryable_text))
    return parsed, values


def _record_sqlite(
    conn: Connection,
    holds: Sequence[Any],
    erasure_id: int,
    envelope_id: str,
    kind: str,
    action: str,
    user_id: str,
) -> str:
    """Erase, scrub or defer one envelope and log it (recorder_erasure_record, in Python)."""
    row = conn.execute(sa.select(envelopes).where(envelopes.c.envelope_id == envelope_id)).first()
    if row is None:
        return "absent"
    current = text_sha256(row.envelope_text)
    key = {"erasure_id": erasure_id, "envelope_id": envelope_id}
    existing = conn.execute(
        sa.select(erased_envelopes.c.state).where(
            *(erased_envelopes.c[k] == v for k, v in key.items())
        )
    ).first()
    covering = _covering(holds, row)
    if covering:
        if existing is None:
            conn.execute(
                sa.insert(erased_envelopes).values(
                    **key,
                    received_at=row.received_at,
                    kind=kind,
                    action=action,
                    state="deferred",
                    held_by=covering,
                    original_sha256=current,
                )
            )
        else:
            conn.execute(
                sa.update(erased_envelopes)
                .where(*(erased_envelopes.c[k] == v for k, v in key.items()))
                .values(held_by=covering)
            )
        return "deferred"
    parsed, values = replacement(row, action, erasure_id, user_id)
    conn.execute(sa.update(envelopes).where(envelopes.c.envelope_id == envelope_id).values(values))
    done = {
        "state": "done",
        "original_sha256": current,
        "replacement_sha256": parsed.sha256,
        "erased_at": dt.datetime.now(UTC),
    }
    if existing is None:
        conn.execute(
            sa.insert(erased_envelopes).values(
                **key, received_at=row.received_at, kind=kind, action=action, **done
            )
        )
    else:
        conn.execute(
            sa.update(erased_envelopes)
            .where(*(erased_envelopes.c[k] == v for k, v in key.items()))
            .values(**done)
        )
    return action


# -- resuming: deferred envelopes whose holds were released, and interrupted runs


def resume(engine: Engine, *, batch_size: int = DEFAULT_BATCH_SIZE) -> ErasureReport:
    """Finish interrupted erasures, and complete deferred envelopes no hold covers any more.

    Safe to run on a schedule (next to ``recorder prune``): with nothing to do
    it changes nothing. Envelopes still held stay deferred (their holds'
    names refreshed); deferred envelopes that retention pruned meanwhile are
    marked ``gone``.

    Raises
    ------
    StorageUnavailable
        The database failed; every batch committed before stays done.
    """
    _check_batch(batch_size)
    report = ErasureReport(status="completed")
    with storage_errors("resuming erasures"):
        with read_only(engine) as conn:
            running = list(
                conn.execute(
                    sa.select(erasures.c.id).where(erasures.c.status == "running").order_by("id")
                ).scalars()
            )
        for erasure_id in running:
            report.erasure_ids.append(erasure_id)
            _run(engine, erasure_id, batch_size, report)
        report.deferred = 0
        after: tuple[int, str] | None = None
        while True:
            with engine.begin() as conn:
                if is_sqlite(conn):
                    step = _resume_sqlite(conn, batch_size, after)
                else:
                    row = conn.execute(
                        sa.text(
                            "SELECT erased, scrubbed, deferred, gone, examined, last_erasure, "
                            "last_envelope FROM recorder_erasure_resume(:limit, :after_erasure, "
                            ":after_envelope)"
                        ),
                        {
                            "limit": batch_size,
                            "after_erasure": after[0] if after else None,
                            "after_envelope": after[1] if after else None,
                        },
                    ).one()
                    step = _ResumeStep(*row)
            report.erased += step.erased
            report.scrubbed += step.scrubbed
            report.deferred += step.deferred
            report.gone += step.gone
            if step.found < batch_size or step.last_erasure is None or step.last_envelope is None:
                break
            after = (step.last_erasure, step.last_envelope)
        _deferred_summary(engine, report)
    report.status = "deferred" if report.deferred else "completed"
    return report


@dataclass(frozen=True, slots=True)
class _ResumeStep:
    erased: int
    scrubbed: int
    deferred: int
    gone: int
    found: int
    last_erasure: int | None
    last_envelope: str | None


def _resume_sqlite(conn: Connection, limit: int, after: tuple[int, str] | None) -> _ResumeStep:
    q = erased_envelopes.c
    stmt = (
        sa.select(q.erasure_id, q.envelope_id, q.kind, q.action, erasures.c.user_id)
        .join(erasures, erasures.c.id == q.erasure_id)
        .where(q.state == "deferred")
        .order_by(q.erasure_id, q.envelope_id)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(sa.tuple_(q.erasure_id, q.envelope_id) > sa.tuple_(*after))
    rows = conn.execute(stmt).all()
    holds = _holds_in_force(conn)
    outcomes: Counter[str] = Counter()
    for r in rows:
        outcome = _record_sqlite(
            conn, holds, r.erasure_id, r.envelope_id, r.kind, r.action, r.user_id
        )
        if outcome == "absent" and _was_pruned(conn, r.envelope_id):
            outcome = "gone"
            conn.execute(
                sa.update(erased_envelopes)
                .where(q.erasure_id == r.erasure_id, q.envelope_id == r.envelope_id)
                .values(state="gone", erased_at=dt.datetime.now(UTC))
            )
        elif outcome == "absent":
            outcome = "deferred"  # not here yet: still in a spool, to be drained
        outcomes[outcome] += 1
    _complete_released(conn)
    last = rows[-1] if rows else None
    return _ResumeStep(
        outcomes["erase"],
        outcomes["scrub"],
        outcomes["deferred"],
        outcomes["gone"],
        len(rows),
        last.erasure_id if last else None,
        last.envelope_id if last else None,
    )


def _was_pruned(conn: Connection, envelope_id: str) -> bool:
    stmt = sa.select(sa.literal(1)).where(pruned_envelopes.c.envelope_id == envelope_id)
    return conn.execute(stmt).first() is not None


def _complete_released(conn: Connection) -> None:
    waiting = sa.exists().where(
        erased_envelopes.c.erasure_id == erasures.c.id, erased_envelopes.c.state == "deferred"
    )
    conn.execute(
        sa.update(erasures)
        .where(erasures.c.status == "deferred", ~waiting)
        .values(status="completed", finished_at=dt.datetime.now(UTC))
    )


def _deferred_summary(engine: Engine, report: ErasureReport) -> None:
    """Fill ``deferred_by_hold`` from the log: envelopes still deferred, per hold."""
    stmt = sa.select(erased_envelopes.c.held_by).where(erased_envelopes.c.state == "deferred")
    if report.erasure_ids:
        stmt = stmt.where(erased_envelopes.c.erasure_id.in_(report.erasure_ids))
    with read_only(engine) as conn:
        counts: Counter[str] = Counter()
        for held_by in conn.execute(stmt).scalars():
            counts.update(held_by or [])
    report.deferred_by_hold = dict(counts)


# -- the log


@dataclass(frozen=True, slots=True)
class Erasure:
    """One row of ``erasures``."""

    id: int
    requested_at: dt.datetime
    finished_at: dt.datetime | None
    status: str
    user_id: str
    team_id: str | None
    reason: str
    actor: str
    db_user: str
    subject_action: str
    mention_action: str


def read_erasures(engine: Engine, *, limit: int | None = None) -> list[Erasure]:
    """Erasures, oldest first (the newest ``limit`` when given)."""
    stmt = sa.select(erasures).order_by(erasures.c.id.desc())
    if limit is not None:
        stmt = stmt.limit(limit)
    with storage_errors("reading the erasure log"), read_only(engine) as conn:
        rows = conn.execute(stmt).all()
    return [Erasure(**r._mapping) for r in reversed(rows)]
