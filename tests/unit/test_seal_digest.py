"""The digests' lines (block members, sealed log entries): the fast spellings equal the JSON ones."""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import given
from hypothesis import strategies as st

from recorder.seal import header_parts, member_line
from recorder.sealed_logs import _line

UTC = dt.timezone.utc


@given(
    envelope_id=st.text(min_size=1, max_size=40),
    at=st.datetimes(timezones=st.just(UTC)),
    sha=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64) | st.text(max_size=5),
)
def test_member_line_is_the_json_line(envelope_id: str, at: dt.datetime, sha: str) -> None:
    spelled = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    expected = json.dumps([envelope_id, spelled, sha], separators=(",", ":")).encode() + b"\n"
    assert member_line(envelope_id, at, sha) == expected


def test_header_parts_put_back_together_are_the_header() -> None:
    at = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    head, mid, mid_last, tail = header_parts(
        block_no=7, kind="range", sealed_at=at, cutoff=None, prev_digest="ab" * 32
    )
    first, last = json.dumps(["t1", "e1"]), json.dumps(["t2", "e2"])
    header = json.loads(head + "12" + mid + first + mid_last + last + tail)
    assert header == {
        "v": 1,
        "block_no": 7,
        "kind": "range",
        "sealed_at": "2026-01-02T03:04:05.000006Z",
        "cutoff": None,
        "prev_digest": "ab" * 32,
        "count": 12,
        "first": ["t1", "e1"],
        "last": ["t2", "e2"],
    }


LOG_VALUES = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.text(alphabet="abcXYZ019-_.:", max_size=20),  # the plain strings of a deletion log row
    st.datetimes(timezones=st.just(UTC)),
    st.integers(),
    st.booleans(),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@given(values=st.lists(LOG_VALUES, max_size=9))
def test_log_line_is_the_json_line(values: list[object]) -> None:
    """A sealed log entry's line: the fast spelling of plain rows equals json.dumps's."""
    spelled = [
        v.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if isinstance(v, dt.datetime) else v for v in values
    ]
    expected = json.dumps(spelled, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    assert _line(values) == expected
