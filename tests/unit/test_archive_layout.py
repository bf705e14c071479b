"""The archive's pure parts: partitions, file names, the members digest."""

from __future__ import annotations

import datetime as dt
import hashlib

import pyarrow as pa
import pytest

from recorder.archive import ArchiveError
from recorder.archive.files import MembersDigest
from recorder.archive.layout import new_file_name, partition_of

UTC = dt.timezone.utc
TS = pa.timestamp("us", tz="UTC")


def test_month_and_day_partitions_end_where_the_next_begins() -> None:
    at = dt.datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert partition_of(at, "month") == ("month=2025-12", dt.datetime(2026, 1, 1, tzinfo=UTC))
    assert partition_of(at, "day") == ("day=2025-12-31", dt.datetime(2026, 1, 1, tzinfo=UTC))
    # A time given in another zone falls in its UTC partition.
    local = dt.datetime(2026, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert partition_of(local, "month")[0] == "month=2025-12"
    with pytest.raises(ArchiveError, match="unknown partition 'year'"):
        partition_of(at, "year")


def test_file_names_sit_in_their_partition_and_never_repeat() -> None:
    names = {new_file_name("month=2025-01", 42, 1) for _ in range(50)}
    assert len(names) == 50
    assert all(
        n.startswith("month=2025-01/r000042-00001-") and n.endswith(".parquet") for n in names
    )


def _digest(batches: list[tuple[list[str], list[dt.datetime], list[str]]]) -> MembersDigest:
    members = MembersDigest()
    for ids, ats, shas in batches:
        members.add(pa.array(ids), pa.array(ats, type=TS), pa.array(shas))
    return members


def test_members_digest_is_the_documented_sequence_however_batched() -> None:
    t1 = dt.datetime(2026, 1, 1, tzinfo=UTC)
    t2 = t1 + dt.timedelta(microseconds=1)
    whole = _digest([(["a", "bé"], [t2, t1], ["x", "y"])])
    expected = hashlib.sha256(
        "a\x001767225600000001\x00x\x00bé\x001767225600000000\x00y\x00".encode()
    )
    assert whole.hexdigest() == expected.hexdigest()
    assert (whole.count, whole.first, whole.last) == (2, t1, t2)
    split = _digest([(["a"], [t2], ["x"]), (["bé"], [t1], ["y"])])
    assert split.hexdigest() == whole.hexdigest()
    sliced = MembersDigest()
    sliced.add(
        pa.array(["z", "a", "bé"]).slice(1), pa.array([t2, t1], type=TS), pa.array(["x", "y"])
    )
    assert sliced.hexdigest() == whole.hexdigest()
    # Moving a boundary between fields changes the digest.
    assert (
        _digest([(["a\x00"], [t1], ["x"])]).hexdigest()
        != _digest([(["a"], [t1], ["\x00x"])]).hexdigest()
    )
