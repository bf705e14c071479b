"""Checks of the deletion log (``pruned_envelopes``) against the runs that wrote it.

``recorder verify`` accepts a sealed envelope that is gone when the prune log
has its row with the sealed digest. A forged row would make any deletion
pass, so each logged deletion must also agree with its run
(:func:`check_deletion_log`):

* the run exists, really ran (not a dry run, not locked out);
* the run applied the policy the row names, and the envelope was received
  before the cutoff the run recorded for that policy;
* the run's count for the policy equals its log rows for it (the prune
  functions count in the deleting transaction);
* no legal hold covered the envelope when it was removed (``pruned_at``;
  rows written before migration 0007 lack it and are checked at the run's
  start). Hold times come from the clock of whoever placed or released the
  hold, so a hold's recorded interval is narrowed by ``tolerance`` at both
  ends before it counts: clock skew must not read as a violation.

Runs that are still ``running`` are checked like the others (their batches
are committed deletions); see ``docs/security.md`` for what stays unproven.

On PostgreSQL the server certifies the rows that plainly pass (their run and
policy pair passed the checks above in Python, the envelope is older than
the cutoff, and no hold could have covered it) and sends back only the
others, which are judged here exactly as on SQLite: a check that is 40 µs a
row in Python becomes a join (``BENCHMARKS.md``, "The deletion log at
scale").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recorder import statements
from recorder.engine import is_sqlite
from recorder.holds import LegalHold
from recorder.schema import legal_holds, prune_runs, pruned_envelopes
from recorder.statements import HOLD_MATCH_COLUMNS

DEFAULT_HOLD_TOLERANCE = dt.timedelta(seconds=60)
_FETCH_CHUNK = 5_000
_NOT_DELETING = ("locked_out",)


@dataclass(frozen=True, slots=True)
class DeletionProblem:
    """One logged deletion (or one run) that its run does not account for."""

    envelope_id: str | None
    prune_run_id: int
    detail: str


def _cutoffs(run: Any) -> dict[str, dt.datetime]:
    found: dict[str, dt.datetime] = {}
    for name, text in (run.cutoffs or {}).items():
        try:
            found[name] = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        except ValueError:
            continue
    return found


def _in_force_at(hold: LegalHold, at: dt.datetime, tolerance: dt.timedelta) -> bool:
    if hold.created_at is None or hold.created_at + tolerance > at:
        return False
    return hold.released_at is None or hold.released_at - tolerance > at


def _covering(
    holds: list[LegalHold], row: Any, at: dt.datetime, tolerance: dt.timedelta
) -> LegalHold | None:
    columns = {name: getattr(row, name) for name in HOLD_MATCH_COLUMNS}
    for hold in holds:
        if not _in_force_at(hold, at, tolerance):
            continue
        # covers() asks "in force now"; the time was checked just above.
        if LegalHold(**{**_hold_fields(hold), "released_at": None}).covers(
            columns, row.received_at
        ):
            return hold
    return None


def _hold_fields(hold: LegalHold) -> dict[str, Any]:
    return {name: getattr(hold, name) for name in LegalHold.__slots__}


def _row_columns() -> list[sa.ColumnElement[Any]]:
    p = pruned_envelopes.c
    columns = [p.prune_run_id, p.envelope_id, p.received_at, p.policy_name, p.pruned_at]
    return columns + [p[name] for name in HOLD_MATCH_COLUMNS]


def _rows(conn: Connection) -> Iterator[Any]:
    p = pruned_envelopes.c
    stmt = sa.select(*_row_columns()).order_by(p.prune_run_id, p.envelope_id)
    # One stream, in key order: pages found again by key re-read the rest.
    yield from conn.execute(stmt.execution_options(yield_per=_FETCH_CHUNK))


def check_deletion_log(
    conn: Connection,
    *,
    tolerance: dt.timedelta = DEFAULT_HOLD_TOLERANCE,
    server_side: bool = True,
) -> list[DeletionProblem]:
    """Every ``pruned_envelopes`` row checked against its run and the legal holds.

    With ``server_side`` (the default) PostgreSQL certifies the rows that
    plainly pass and only the rest are checked here; without it, or on
    SQLite, every row is (the reference the fast path is tested against).
    """
    runs = {run.id: run for run in conn.execute(sa.select(prune_runs)).all()}
    holds = [
        LegalHold(**{c.name: getattr(r, c.name) for c in legal_holds.c})
        for r in conn.execute(sa.select(legal_holds)).all()
    ]
    counted = {
        (row.prune_run_id, row.policy_name): int(row.n)
        for row in conn.execute(
            sa.select(
                pruned_envelopes.c.prune_run_id,
                pruned_envelopes.c.policy_name,
                sa.func.count().label("n"),
            ).group_by(pruned_envelopes.c.prune_run_id, pruned_envelopes.c.policy_name)
        )
    }
    miscounted: dict[tuple[int, str], str] = {}
    problems: list[DeletionProblem] = []
    for run in runs.values():
        if run.dry_run or run.status in _NOT_DELETING:
            continue
        claimed = {name: int(n) for name, n in (run.deleted_per_policy or {}).items()}
        for policy in set(claimed) | {p for (r, p) in counted if r == run.id}:
            logged = counted.get((run.id, policy), 0)
            if claimed.get(policy, 0) == logged:
                continue
            text = (
                f"prune run {run.id} counted {claimed.get(policy, 0)} deletions under policy "
                f"{policy!r} but its log has {logged} rows"
            )
            if logged:
                miscounted[(run.id, policy)] = text
            else:
                problems.append(DeletionProblem(None, run.id, text))
    cutoffs = {run_id: _cutoffs(run) for run_id, run in runs.items()}
    if not server_side or is_sqlite(conn):
        rows = _rows(conn)
    else:
        rows = _uncertified_rows(conn, runs, cutoffs, miscounted, tolerance)
    for row in rows:
        detail = _row_problem(row, runs, cutoffs, holds, miscounted, tolerance)
        if detail is not None:
            problems.append(DeletionProblem(row.envelope_id, row.prune_run_id, detail))
    return problems


def _row_problem(
    row: Any,
    runs: dict[int, Any],
    cutoffs: dict[int, dict[str, dt.datetime]],
    holds: list[LegalHold],
    miscounted: dict[tuple[int, str], str],
    tolerance: dt.timedelta,
) -> str | None:
    run = runs.get(row.prune_run_id)
    if run is None:
        return f"logged as removed by prune run {row.prune_run_id}, which does not exist"
    if run.dry_run:
        return f"logged as removed by prune run {run.id}, a dry run (it deletes nothing)"
    if run.status in _NOT_DELETING:
        return f"logged as removed by prune run {run.id}, which was {run.status}"
    cutoff = cutoffs[run.id].get(row.policy_name)
    if cutoff is None:
        return f"logged under policy {row.policy_name!r}, which prune run {run.id} did not apply"
    if row.received_at >= cutoff:
        return (
            f"received at {row.received_at.isoformat()}, not before the cutoff "
            f"{cutoff.isoformat()} prune run {run.id} recorded for policy {row.policy_name!r}"
        )
    text = miscounted.get((run.id, row.policy_name))
    if text is not None:
        return text
    at = row.pruned_at or run.started_at
    hold = _covering(holds, row, at, tolerance)
    if hold is not None:
        return f"legal hold {hold.name!r} covered it when prune run {run.id} removed it"
    return None


# Widens every hold's interval in the server's test, so that it can only send
# back more rows than the Python test would flag, never fewer.
_SLACK = dt.timedelta(milliseconds=1)


def _uncertified_rows(
    conn: Connection,
    runs: dict[int, Any],
    cutoffs: dict[int, dict[str, dt.datetime]],
    miscounted: dict[tuple[int, str], str],
    tolerance: dt.timedelta,
) -> Iterator[Any]:
    """The log rows the server cannot certify, in key order (PostgreSQL).

    A row is certified when its (run, policy) pair is one that
    :func:`_row_problem` passes up to the row's own facts (the run exists,
    deleted for real, applied the policy with a cutoff Python could read,
    and counted its rows), the envelope was received before that cutoff,
    and no hold, its interval widened by ``_SLACK``, could have covered it
    when it was removed. Every other row comes back for the exact test.
    """
    passing = [
        (run.id, policy, cutoff, run.started_at)
        for run in runs.values()
        if not run.dry_run and run.status not in _NOT_DELETING
        for policy, cutoff in cutoffs[run.id].items()
        if (run.id, policy) not in miscounted
    ]
    stmt = statements.uncertified_deletions(HOLD_MATCH_COLUMNS)
    params = {
        "run_ids": [entry[0] for entry in passing],
        "policies": [entry[1] for entry in passing],
        "cutoffs": [entry[2] for entry in passing],
        "started": [entry[3] for entry in passing],
        "in_force_after": tolerance - _SLACK,
        "released_before": tolerance - _SLACK,
    }
    # yield_per on the statement: set on the connection, it would stay set.
    yield from conn.execute(stmt.execution_options(yield_per=_FETCH_CHUNK), params)
