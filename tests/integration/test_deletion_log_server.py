"""PostgreSQL's check of the deletion log against the row-by-row check, over random logs.

``check_deletion_log`` lets the server certify the logged deletions that
plainly pass and judges only the others in Python. A row the server wrongly
certified would be a forged deletion nobody reports, so hypothesis writes
deletion logs full of edge cases (runs that are missing, dry, locked out or
miscounted; cutoffs Python cannot read; envelopes received a microsecond
either side of the cutoff; holds placed or released a microsecond either
side of the tolerance; NULL match columns) and both paths must name the
same problems, in the same order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from recorder.engine import create_engine
from recorder.prune_checks import DEFAULT_HOLD_TOLERANCE, check_deletion_log
from recorder.schema import legal_holds, prune_runs, pruned_envelopes
from recorder.sealed_logs import PruneRunsLog

UTC = dt.timezone.utc
CUTOFF = dt.datetime(2026, 3, 1, tzinfo=UTC)
STARTED = CUTOFF + dt.timedelta(days=30)
PRUNED = STARTED + dt.timedelta(minutes=5)
US = dt.timedelta(microseconds=1)
# Around the cutoff, and around the edges of a hold's interval as the check
# narrows it by the tolerance (created + tolerance, released - tolerance).
NEAR = [-dt.timedelta(days=1), -dt.timedelta(milliseconds=2), -US, dt.timedelta(0), US]
EDGES = [
    -dt.timedelta(milliseconds=2),
    -dt.timedelta(milliseconds=1),
    -US,
    dt.timedelta(0),
    US,
    dt.timedelta(milliseconds=1),
]
POLICIES = ["week", "dms", "gone"]
CUTOFF_TEXTS = [
    "2026-03-01T00:00:00Z",
    "2026-03-01T00:00:00.000001+00:00",
    "2026-03-01T00:00:00.5+00:00",
    "2026-02-30T00:00:00Z",  # no such day: Python cannot read it
    "last tuesday",
    5,
]
MATCH = st.sampled_from([None, "A", "B"])


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


RUNS = st.lists(
    st.fixed_dictionaries(
        {
            "status": st.sampled_from(["running", "completed", "stopped", "failed", "locked_out"]),
            "dry_run": st.booleans(),
            "cutoffs": st.dictionaries(
                st.sampled_from(POLICIES[:2]), st.sampled_from(CUTOFF_TEXTS), max_size=2
            ),
            "miscount": st.sampled_from([None, *POLICIES]),
        }
    ),
    min_size=1,
    max_size=4,
)
ROWS = st.lists(
    st.fixed_dictionaries(
        {
            "run": st.integers(min_value=1, max_value=5),  # 5 may name no run
            "policy": st.sampled_from(POLICIES),
            "received": st.sampled_from(NEAR),
            "pruned_at": st.sampled_from([None, PRUNED]),
            "team_id": MATCH,
            "channel_id": MATCH,
            "user_id": MATCH,
        }
    ),
    max_size=40,
)
HOLDS = st.lists(
    st.fixed_dictionaries(
        {
            "team_id": MATCH,
            "channel_id": MATCH,
            "user_id": MATCH,
            "since": st.sampled_from([None, CUTOFF - dt.timedelta(days=2), CUTOFF - US]),
            "until": st.sampled_from([None, CUTOFF, CUTOFF + dt.timedelta(days=1)]),
            # Placed so that it counts from about when the row was pruned (or
            # the run started, for a row with no pruned_at).
            "placed_for": st.sampled_from([PRUNED, STARTED]),
            "placed": st.sampled_from(EDGES),
            "released": st.sampled_from([None, *EDGES]),
        }
    ),
    max_size=3,
)


def write_log(
    engine: Engine, runs: list[dict[str, Any]], rows: list[dict[str, Any]], holds: list[Any]
) -> None:
    tolerance = DEFAULT_HOLD_TOLERANCE
    with engine.begin() as conn:
        for table in (pruned_envelopes, prune_runs, legal_holds):
            conn.execute(table.delete())
        logged: dict[tuple[int, str], int] = {}
        keyed = {}
        for n, row in enumerate(rows):
            keyed[(row["run"], f"e{n}")] = row
            logged[(row["run"], row["policy"])] = logged.get((row["run"], row["policy"]), 0) + 1
        for run_id, run in enumerate(runs, start=1):
            counts = {policy: n for (r, policy), n in logged.items() if r == run_id}
            if run["miscount"] is not None:
                counts[run["miscount"]] = counts.get(run["miscount"], 0) + 1
            conn.execute(
                prune_runs.insert().values(
                    id=run_id,
                    started_at=STARTED,
                    status=run["status"],
                    dry_run=run["dry_run"],
                    cutoffs=run["cutoffs"],
                    deleted_per_policy=counts,
                    deleted_total=sum(counts.values()),
                )
            )
        for (run_id, envelope_id), row in keyed.items():
            conn.execute(
                pruned_envelopes.insert().values(
                    prune_run_id=run_id,
                    envelope_id=envelope_id,
                    envelope_sha256="0" * 64,
                    received_at=CUTOFF + row["received"],
                    policy_name=row["policy"],
                    team_id=row["team_id"],
                    channel_id=row["channel_id"],
                    user_id=row["user_id"],
                    pruned_at=row["pruned_at"],
                )
            )
        for n, hold in enumerate(holds):
            released = hold["released"]
            conn.execute(
                legal_holds.insert().values(
                    name=f"hold-{n}",
                    reason="test",
                    team_id=hold["team_id"],
                    channel_id=hold["channel_id"],
                    user_id=hold["user_id"],
                    since=hold["since"],
                    until=hold["until"],
                    created_at=hold["placed_for"] - tolerance + hold["placed"],
                    created_by="test",
                    released_at=(
                        None if released is None else hold["placed_for"] + tolerance + released
                    ),
                    released_by=None if released is None else "test",
                )
            )


def problems(engine: Engine, *, server_side: bool) -> list[tuple[str | None, int, str]]:
    with engine.connect() as conn:
        return [
            (problem.envelope_id, problem.prune_run_id, problem.detail)
            for problem in check_deletion_log(conn, server_side=server_side)
        ]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(runs=RUNS, rows=ROWS, holds=HOLDS)
def test_the_server_certifies_only_what_the_row_check_passes(
    engine: Engine, runs: list[dict[str, Any]], rows: list[dict[str, Any]], holds: list[Any]
) -> None:
    write_log(engine, runs, rows, holds)
    assert problems(engine, server_side=True) == problems(engine, server_side=False)


def test_a_forged_row_at_each_edge_is_named_by_both_paths(engine: Engine) -> None:
    """The hand-picked edges, each of which the fast path must not certify."""
    runs = [
        {
            "status": "completed",
            "dry_run": False,
            "cutoffs": {"week": CUTOFF_TEXTS[0]},
            "miscount": None,
        }
    ]
    base = {"run": 1, "policy": "week", "pruned_at": PRUNED, "channel_id": None, "user_id": None}
    rows = [
        {**base, "received": -dt.timedelta(days=1), "team_id": "B"},  # passes
        {**base, "received": dt.timedelta(0), "team_id": "B"},  # at the cutoff: not before it
        {**base, "received": -US, "team_id": "A"},  # held (placed exactly at the edge)
        {**base, "received": -US, "team_id": None, "pruned_at": None},  # held at the run's start
        {**base, "received": -US, "team_id": "S"},  # held: received when hold-2 begins
        {**base, "received": -2 * US, "team_id": "S"},  # passes: received before it
    ]
    holds = [
        {
            "team_id": "A",
            "channel_id": None,
            "user_id": None,
            "since": None,
            "until": None,
            "placed_for": PRUNED,
            "placed": dt.timedelta(0),
            "released": None,
        },
        {
            "team_id": None,
            "channel_id": None,
            "user_id": None,
            "since": None,
            "until": None,
            "placed_for": STARTED,
            "placed": dt.timedelta(0),
            "released": US,
        },
        {
            "team_id": "S",
            "channel_id": None,
            "user_id": None,
            "since": CUTOFF - US,
            "until": CUTOFF,
            "placed_for": PRUNED,
            "placed": dt.timedelta(0),
            "released": None,
        },
    ]
    write_log(engine, runs, rows, holds)
    fast = problems(engine, server_side=True)
    assert [envelope_id for envelope_id, _, _ in fast] == ["e1", "e2", "e3", "e4"]
    assert "not before the cutoff" in fast[0][2]
    assert "legal hold 'hold-0'" in fast[1][2]
    assert "legal hold 'hold-1'" in fast[2][2]
    assert "legal hold 'hold-2'" in fast[3][2]
    assert fast == problems(engine, server_side=False)


TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
PLAIN = st.text(alphabet="abcXYZ019-_.:", min_size=1, max_size=12)
TIMES = st.datetimes(
    min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.just(UTC)
)


def pruned_rows(text: st.SearchStrategy[str]) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(
        st.fixed_dictionaries(
            {
                "envelope_id": text.filter(bool),
                "envelope_sha256": text,
                "received_at": st.sampled_from([CUTOFF]) | TIMES,
                "policy_name": text,
                "team_id": st.none() | text,
                "channel_id": st.none() | PLAIN,
                "user_id": st.none() | PLAIN,
                "pruned_at": st.none() | st.sampled_from([PRUNED]) | TIMES,
            }
        ),
        max_size=30,
        unique_by=lambda row: row["envelope_id"],
    )


# Plain runs (the server joins every line) and runs with values json.dumps escapes.
PRUNED_ROWS = pruned_rows(PLAIN) | pruned_rows(PLAIN | TEXT)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=PRUNED_ROWS)
def test_the_server_renders_each_deletion_line_as_python_spells_it(
    engine: Engine, rows: list[dict[str, Any]]
) -> None:
    """A run's sealed-log digest from the lines PostgreSQL renders equals Python's own."""
    with engine.begin() as conn:
        for table in (pruned_envelopes, prune_runs):
            conn.execute(table.delete())
        conn.execute(
            prune_runs.insert().values(
                id=1, started_at=STARTED, status="completed", dry_run=False, cutoffs={}
            )
        )
        if rows:
            conn.execute(pruned_envelopes.insert(), [{**row, "prune_run_id": 1} for row in rows])
    with engine.connect() as conn:
        spelled = PruneRunsLog(server_side=False).unsealed(conn)
        # Joined by the server whole, and in chunks of three lines.
        for chunk_size in (5000, 3):
            assert PruneRunsLog(chunk_size=chunk_size).unsealed(conn) == spelled
    assert len(spelled) == 1
