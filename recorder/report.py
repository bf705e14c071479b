"""``recorder report --html``: one self-contained HTML page about a period.

The page has its CSS inline and its charts as inline SVG; it loads nothing
(a Content-Security-Policy of ``default-src 'none'`` says so to the
browser), so it can be mailed, archived with an audit file, and opened
offline. It shows the volume per day and envelope type, the top channels,
users and event types, and the retries Slack delivered.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine

from recorder import statements
from recorder.engine import read_only, storage_errors
from recorder.stats import DailyCount, as_date, daily_counts

UTC = dt.timezone.utc
TOP = 10
#: Envelope types beyond this many are drawn together as "other".
MAX_SERIES = 7
PALETTE = ("#2f6fba", "#e07b22", "#3a9a4d", "#c8413a", "#8357b5", "#8c5a3c", "#d461a8")
OTHER_COLOUR = "#9a9a9a"
RETRY_COLOUR = "#c8413a"


@dataclass(frozen=True, slots=True)
class Retries:
    """Envelopes delivered as retries on one day, for one reason."""

    day: dt.date
    reason: str
    count: int
    max_attempt: int


@dataclass(slots=True)
class ReportData:
    """Everything the page shows, gathered in a few aggregate queries."""

    since: dt.datetime | None
    until: dt.datetime | None
    generated_at: dt.datetime
    envelopes: int = 0
    first: dt.datetime | None = None
    last: dt.datetime | None = None
    channels: int = 0
    users: int = 0
    daily_by_type: list[DailyCount] = field(default_factory=list)
    top_channels: list[tuple[str, int]] = field(default_factory=list)
    top_users: list[tuple[str, int]] = field(default_factory=list)
    top_event_types: list[tuple[str, int]] = field(default_factory=list)
    retries: list[Retries] = field(default_factory=list)
    erased: int = 0
    """Envelopes changed by logged erasures (tombstones or scrubbed mentions)."""

    @property
    def retried(self) -> int:
        return sum(r.count for r in self.retries)


def collect(
    engine: Engine,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    top: int = TOP,
    now: dt.datetime | None = None,
) -> ReportData:
    """Gather the report's figures for envelopes received in ``[since, until)``."""
    data = ReportData(since=since, until=until, generated_at=now or dt.datetime.now(UTC))
    data.daily_by_type = daily_counts(engine, by="type", since=since, until=until)
    with storage_errors("gathering the report"), read_only(engine) as conn:
        totals = conn.execute(statements.select_totals(since, until)).one()
        data.envelopes = int(totals.envelopes)
        data.first, data.last = totals.first, totals.last
        data.channels, data.users = int(totals.channels), int(totals.users)
        tops: dict[str, list[tuple[str, int]]] = {}
        for column in ("channel_id", "user_id", "event_type"):
            rows = conn.execute(statements.select_top_values(column, since, until, top)).all()
            tops[column] = [(str(r.key), int(r.n)) for r in rows]
        data.erased = int(conn.execute(statements.count_erased(since, until)).scalar_one())
        retry_rows = conn.execute(
            statements.select_daily_retries(engine.dialect, since, until)
        ).all()
    data.top_channels = tops["channel_id"]
    data.top_users = tops["user_id"]
    data.top_event_types = tops["event_type"]
    data.retries = [
        Retries(as_date(r.day), str(r.retry_reason), int(r.n), int(r.max_attempt or 0))
        for r in retry_rows
    ]
    return data


def write_report(
    engine: Engine,
    path: str | Path,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> ReportData:
    """Gather the figures and write the page to ``path`` (UTF-8)."""
    data = collect(engine, since=since, until=until)
    Path(path).write_text(render_html(data), encoding="utf-8")
    return data


# -- rendering


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _days(data: ReportData) -> list[dt.date]:
    """Every day of the period, so quiet days show as gaps rather than vanish."""
    first = data.since or data.first
    last = (data.until - dt.timedelta(microseconds=1)) if data.until else data.last
    if first is None or last is None:
        return sorted({c.day for c in data.daily_by_type})
    start, end = first.astimezone(UTC).date(), last.astimezone(UTC).date()
    if (end - start).days > 3660:
        # A period of decades would draw hair-thin bars; show the days with data.
        return sorted({c.day for c in data.daily_by_type})
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def _nice_step(value: int) -> int:
    """The smallest whole 1, 1.5, 2, 2.5 or 5 times a power of ten that is at least ``value``."""
    magnitude = 1
    while True:
        for tenths in (10, 15, 20, 25, 50):
            step = tenths * magnitude
            if step % 10 == 0 and step // 10 >= value:
                return step // 10
        magnitude *= 10


def _series(counts: list[DailyCount]) -> tuple[list[str], dict[tuple[dt.date, str], int]]:
    """Series names, largest first (the tail merged into "other"), and counts per day."""
    totals: dict[str, int] = defaultdict(int)
    for c in counts:
        totals[c.key or "(none)"] += c.count
    names = sorted(totals, key=lambda k: (-totals[k], k))
    shown = names if len(names) <= MAX_SERIES + 1 else names[:MAX_SERIES]
    by_day: dict[tuple[dt.date, str], int] = defaultdict(int)
    for c in counts:
        name = c.key or "(none)"
        by_day[(c.day, name if name in shown else "other")] += c.count
    if len(shown) < len(names):
        shown = [*shown, "other"]
    return shown, by_day


def _colour(index: int, name: str) -> str:
    return OTHER_COLOUR if name == "other" else PALETTE[index % len(PALETTE)]


def _bar_chart(
    days: list[dt.date],
    series: list[str],
    values: dict[tuple[dt.date, str], int],
    colours: dict[str, str],
    *,
    title: str,
    height: int = 260,
) -> str:
    """A stacked bar chart, one bar per day, as an inline SVG element."""
    width, left, right, top, bottom = 960, 56, 12, 12, 42
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values.get((d, s), 0) for s in series) for d in days]
    # Four gridline steps of a round size, so every axis label is a whole number.
    y_max = 4 * _nice_step(math.ceil(max(totals, default=0) / 4))
    slot = plot_w / max(len(days), 1)
    bar_w = max(slot * 0.8, 1.0)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{_e(title)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i in range(5):
        value = y_max * i // 4
        y = top + plot_h - plot_h * i / 4
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">{value:,}</text>'
        )
    label_every = max(1, math.ceil(len(days) / 12))
    for index, day in enumerate(days):
        x = left + index * slot + (slot - bar_w) / 2
        y = top + plot_h
        for name in series:
            count = values.get((day, name), 0)
            if count == 0:
                continue
            h = plot_h * count / y_max
            y -= h
            parts.append(
                f'<rect x="{x:.2f}" y="{y:.2f}" width="{bar_w:.2f}" height="{h:.2f}" '
                f'fill="{colours[name]}"><title>{_e(day.isoformat())} {_e(name)}: '
                f"{count:,}</title></rect>"
            )
        if index % label_every == 0:
            parts.append(
                f'<text x="{left + index * slot + slot / 2:.1f}" y="{height - bottom + 16}" '
                f'class="axis" text-anchor="middle">{_e(day.strftime("%b %d"))}</text>'
            )
    parts.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" '
        'class="baseline"/></svg>'
    )
    return "".join(parts)


def _legend(series: list[str], colours: dict[str, str]) -> str:
    items = "".join(
        f'<li><span class="swatch" style="background:{colours[s]}"></span>{_e(s)}</li>'
        for s in series
    )
    return f'<ul class="legend">{items}</ul>'


def _share(count: int, total: int) -> float:
    return min(100.0, 100 * count / max(total, 1))


def _top_table(title: str, rows: list[tuple[str, int]], total: int) -> str:
    if not rows:
        body = '<tr><td colspan="3" class="empty">none</td></tr>'
    else:
        # Each bar is drawn to its share of the total, on a track that is
        # 100%, with its label beside it (never over it).
        body = "".join(
            f"<tr><td><code>{_e(key)}</code></td><td class=num>{count:,}</td>"
            f'<td class="barcell"><div class="track"><div class="bar" '
            f'style="width:{_share(count, total):.1f}%"></div></div>'
            f"<span>{_share(count, total):.1f}%</span></td></tr>"
            for key, count in rows
        )
    return (
        f'<section class="top"><h3>{_e(title)}</h3><table><thead><tr><th>value</th>'
        f"<th class=num>envelopes</th><th>share</th></tr></thead><tbody>{body}</tbody>"
        "</table></section>"
    )


def _period(data: ReportData) -> str:
    def show(value: dt.datetime | None, fallback: str) -> str:
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else fallback

    return f"{show(data.since, 'the beginning')} to {show(data.until, 'now')}"


CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
  background: #f4f5f7; color: #1d2330; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
h3 { font-size: 14px; margin: 0 0 6px; } .sub { color: #5a6375; margin: 0 0 16px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; }
.card { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 10px 14px;
  min-width: 140px; } .card b { display: block; font-size: 20px; }
.panel { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 12px; }
svg.chart { display: block; max-width: 100%; height: auto; }
svg .grid { stroke: #e6e9ef; } svg .baseline { stroke: #8a93a3; }
svg .axis { font-size: 11px; fill: #5a6375; }
.legend { list-style: none; padding: 0; margin: 8px 0 0; display: flex; flex-wrap: wrap;
  gap: 14px; } .swatch { display: inline-block; width: 11px; height: 11px;
  margin-right: 5px; border-radius: 2px; vertical-align: -1px; }
.tops { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 12px; }
.top { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 12px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid #eef0f4; }
th { font-weight: 600; color: #5a6375; } .num { text-align: right; }
.barcell { width: 40%; } .barcell > * { display: inline-block; vertical-align: middle; }
.track { width: calc(100% - 56px); height: 14px; } .bar { background: #cfe0f5; height: 14px; }
.barcell span { width: 48px; margin-left: 6px; font-size: 11px; text-align: right; }
.empty { color: #8a93a3; } code { font-size: 12px; }
footer { color: #8a93a3; margin-top: 28px; font-size: 12px; }
"""


def render_html(data: ReportData) -> str:
    """The page, as one string."""
    days = _days(data)
    series, by_day = _series(data.daily_by_type)
    colours = {name: _colour(i, name) for i, name in enumerate(series)}
    volume = (
        _bar_chart(days, series, by_day, colours, title="envelopes per day and type")
        + _legend(series, colours)
        if data.envelopes
        else '<p class="empty">No envelopes were received in this period.</p>'
    )
    retries_by_day: dict[tuple[dt.date, str], int] = defaultdict(int)
    reasons: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in data.retries:
        retries_by_day[(r.day, "retries")] += r.count
        reasons[r.reason or "(none given)"][0] += r.count
        reasons[r.reason or "(none given)"][1] = max(
            reasons[r.reason or "(none given)"][1], r.max_attempt
        )
    if data.retries:
        retry_chart = _bar_chart(
            days,
            ["retries"],
            retries_by_day,
            {"retries": RETRY_COLOUR},
            title="retries per day",
            height=170,
        )
        reason_rows = "".join(
            f"<tr><td><code>{_e(reason)}</code></td><td class=num>{count:,}</td>"
            f"<td class=num>{attempt}</td></tr>"
            for reason, (count, attempt) in sorted(reasons.items(), key=lambda kv: -kv[1][0])
        )
        retry_block = (
            f'{retry_chart}<table class="reasons"><thead><tr><th>retry_reason</th>'
            f"<th class=num>envelopes</th><th class=num>highest retry_attempt</th></tr></thead>"
            f"<tbody>{reason_rows}</tbody></table>"
        )
    else:
        retry_block = '<p class="empty">No retries were recorded in this period.</p>'
    share = 100 * data.retried / data.envelopes if data.envelopes else 0.0
    cards = "".join(
        f'<div class="card"><b>{value}</b>{_e(label)}</div>'
        for value, label in (
            (f"{data.envelopes:,}", "envelopes"),
            (f"{data.channels:,}", "channels"),
            (f"{data.users:,}", "users"),
            (f"{data.retried:,}", f"retries ({share:.1f}%)"),
            (f"{data.erased:,}", "erased (right to erasure)"),
        )
    )
    tops = "".join(
        _top_table(title, rows, data.envelopes)
        for title, rows in (
            ("Top channels", data.top_channels),
            ("Top users", data.top_users),
            ("Top event types", data.top_event_types),
        )
    )
    generated = data.generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Envelope audit report: {_e(_period(data))}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<h1>Envelope audit report</h1>
<p class="sub">Envelopes received from {_e(_period(data))}.</p>
<div class="cards">{cards}</div>
<h2>Volume per day and envelope type</h2>
<div class="panel" id="volume">{volume}</div>
<h2>Top channels, users and event types</h2>
<div class="tops">{tops}</div>
<h2>Retries and duplicates</h2>
<div class="panel" id="retries">
<p class="sub">Envelopes Slack delivered with <code>retry_attempt</code> &gt; 0. A retry of an
event already recorded is a duplicate (same <code>event_id</code>) and is not stored again, so
these are the retries whose earlier deliveries never reached the recorder.</p>
{retry_block}
</div>
<footer>Generated {_e(generated)} by envelope-recorder. Times are UTC.</footer>
</main>
</body>
</html>
"""
