"""Counts of recorded envelopes per UTC day, by envelope type, event type, channel or user.

``recorder stats`` prints them as a table, CSV or JSON; ``recorder report``
draws them. Each count is one ``GROUP BY`` in the database (served by the
``received_at`` index for a time range), so a month of a million envelopes
is counted without reading them into Python.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy.engine import Engine

from recorder import statements
from recorder.engine import read_only, storage_errors

#: ``--by`` names, to the column each counts.
DIMENSIONS: dict[str, str] = {
    "type": "envelope_type",
    "event-type": "event_type",
    "channel": "channel_id",
    "user": "user_id",
}
FORMATS: tuple[str, ...] = ("table", "csv", "json")


@dataclass(frozen=True, slots=True)
class DailyCount:
    """Envelopes received on one UTC day with one value of the counted column."""

    day: dt.date
    key: str | None
    """The column's value; None where the envelope has none."""
    count: int


def as_date(value: Any) -> dt.date:
    """A day as the database returns it: a date (PostgreSQL) or ISO text (SQLite)."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def _column(by: str) -> str:
    column = DIMENSIONS.get(by, by)
    if column not in statements.STATS_DIMENSIONS:
        choices = ", ".join(DIMENSIONS)
        raise ValueError(f"cannot count by {by!r}; choose one of {choices}")
    return column


def daily_counts(
    engine: Engine,
    *,
    by: str = "type",
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[DailyCount]:
    """Envelopes per UTC day and value of ``by``, oldest day first.

    Parameters
    ----------
    by
        ``type``, ``event-type``, ``channel`` or ``user`` (or the column name).
    since, until
        Received at or after ``since`` and before ``until``; open when None.

    Raises
    ------
    ValueError
        An unknown ``by``.
    StorageUnavailable
        The database failed.
    """
    column = _column(by)
    stmt = statements.select_daily_counts(engine.dialect, column, since, until)
    with storage_errors("counting envelopes"), read_only(engine) as conn:
        rows = conn.execute(stmt).all()
    return [DailyCount(as_date(r.day), r.key, int(r.n)) for r in rows]


def write_stats(rows: Sequence[DailyCount], fmt: str, out: IO[str], *, by: str = "type") -> None:
    """Write ``rows`` as ``table``, ``csv`` or ``json`` (an array of objects)."""
    label = _column(by).removesuffix("_id")
    if fmt == "json":
        json.dump(
            [{"day": r.day.isoformat(), label: r.key, "count": r.count} for r in rows],
            out,
            indent=1,
        )
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["day", label, "count"])
        writer.writerows([r.day.isoformat(), r.key or "", r.count] for r in rows)
    elif fmt == "table":
        cells = [(r.day.isoformat(), r.key or "-", str(r.count)) for r in rows]
        header = ("day", label, "count")
        widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header)]
        for line in [header, tuple("-" * w for w in widths), *cells]:
            out.write(f"{line[0]:<{widths[0]}}  {line[1]:<{widths[1]}}  {line[2]:>{widths[2]}}\n")
        out.write(f"{sum(r.count for r in rows)} envelopes\n")
    else:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
