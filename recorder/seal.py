"""Tamper evidence: a hash chain of sealed blocks over the stored envelopes.

:func:`seal` appends blocks. Each ``range`` block holds the next envelopes in
``(received_at, envelope_id)`` order, received no later than a cutoff a
margin in the past (so rows still being written are left for the next run),
and records every member's SHA-256 in ``sealed_envelopes``. Its digest covers
its header, the previous block's digest and its members' digests, so changing
any sealed envelope, any member row or any block breaks every digest from
there on; publishing the latest digest elsewhere (:func:`latest_block`)
anchors the whole chain.

The block that completes a run records the run's cutoff: from then on every
envelope received up to that cutoff is sealed, and a row dated at or before
it that is not (a writer whose clock runs behind, or one forging history) is
never sealed as if it were genuine. :mod:`recorder.verify` reports it as
inserted; ``seal(adopt_late=[...])`` seals the rows an operator names, in a
``late`` block, after review. Blocks before the last of a run have no cutoff
(the run may stop between blocks; the next continues after its last key).

:mod:`recorder.verify` recomputes the chain and checks every envelope.

Over 450 lines: the block format and both sealing paths (Python, and one
statement per block on PostgreSQL), which must agree byte for byte.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from recorder import sealed_logs, statements
from recorder.engine import is_sqlite, storage_errors
from recorder.errors import RecorderError
from recorder.sealed_logs import JSON_PLAIN, LogEntry
from recorder.timespec import timestamp_text
from recorder.wording import counted

GENESIS_DIGEST = "0" * 64
DEFAULT_MARGIN = dt.timedelta(seconds=60)
DEFAULT_BLOCK_SIZE = 10_000
MAX_BLOCK_SIZE = 100_000
#: Transaction-level advisory lock that serialises seal runs on PostgreSQL ("recs").
SEAL_LOCK_KEY = 0x72656373
_DIGEST_VERSION = 1


class SealError(RecorderError, ValueError):
    """A seal or verify option is out of range, or names rows it cannot adopt."""


@dataclass(frozen=True, slots=True)
class Member:
    """One sealed envelope, as its block digest covers it."""

    envelope_id: str
    received_at: dt.datetime
    sha256: str


@dataclass(frozen=True, slots=True)
class SealBlock:
    """One row of ``seal_blocks``."""

    block_no: int
    kind: str
    sealed_at: dt.datetime
    cutoff: dt.datetime | None
    first_received_at: dt.datetime
    first_envelope_id: str
    last_received_at: dt.datetime
    last_envelope_id: str
    envelope_count: int
    prev_digest: str
    digest: str


@dataclass(frozen=True, slots=True)
class SealedThrough:
    """Where the range blocks stand: every row at or before this point is sealed.

    ``cutoff`` when the newest range block completed its run, else the key
    of its last member (``last``); both None before the first block.
    """

    cutoff: dt.datetime | None = None
    last: tuple[dt.datetime, str] | None = None

    @property
    def started(self) -> bool:
        return self.cutoff is not None or self.last is not None

    def sql_params(self) -> tuple[str | None, dict[str, Any]]:
        """How PostgreSQL statements take this point: "cutoff", "key" or None, and its values."""
        if self.cutoff is not None:
            return "cutoff", {"through_cutoff": self.cutoff}
        if self.last is not None:
            return "key", {"through_at": self.last[0], "through_id": self.last[1]}
        return None, {}

    def describe(self) -> str:
        if self.cutoff is not None:
            return f"sealed up to {timestamp_text(self.cutoff)}"
        if self.last is not None:
            return f"sealed up to {timestamp_text(self.last[0])} ({self.last[1]})"
        return "nothing sealed"


@dataclass(slots=True)
class SealReport:
    """What one :func:`seal` call appended."""

    blocks: list[SealBlock] = field(default_factory=list)
    cutoff: dt.datetime | None = None
    latest: SealBlock | None = None
    """The newest block after this run (appended now or before)."""

    @property
    def sealed(self) -> int:
        return sum(block.envelope_count for block in self.blocks)

    def summary(self) -> str:
        late = sum(b.envelope_count for b in self.blocks if b.kind == "late")
        text = (
            f"sealed {counted(self.sealed, 'envelope')} in {counted(len(self.blocks), 'new block')}"
        )
        if late:
            text += f" ({late} adopted late)"
        if self.latest is None:
            return text + "; nothing sealed yet"
        return f"{text}; latest block {self.latest.block_no} digest {self.latest.digest}"


# -- the digest


def _optional_timestamp(value: dt.datetime | None) -> str | None:
    return None if value is None else timestamp_text(value)


def member_line(envelope_id: str, received_at: dt.datetime, sha256: str) -> bytes:
    """One member's line of the block digest (JSON, ASCII-escaped, newline-terminated)."""
    return member_line_at(envelope_id, timestamp_text(received_at), sha256)


def member_line_at(envelope_id: str, at: str, sha256: str) -> bytes:
    """:func:`member_line` with the time already spelled by :func:`timestamp_text`."""
    if JSON_PLAIN.match(envelope_id) and JSON_PLAIN.match(sha256):
        return f'["{envelope_id}","{at}","{sha256}"]\n'.encode()
    return json.dumps([envelope_id, at, sha256], separators=(",", ":")).encode() + b"\n"


def block_header(
    *,
    block_no: int,
    kind: str,
    sealed_at: dt.datetime,
    cutoff: dt.datetime | None,
    prev_digest: str,
    count: Any,
    first: Any,
    last: Any,
    logs: str | None = None,
) -> str:
    """The header line of a block's digest, without its newline.

    JSON with sorted keys (ASCII-escaped) keeps every field unambiguous
    whatever characters an envelope id holds; timestamps are UTC with
    microseconds, as stored.
    """
    header = {
        "v": _DIGEST_VERSION,
        "block_no": block_no,
        "kind": kind,
        "sealed_at": timestamp_text(sealed_at),
        "cutoff": _optional_timestamp(cutoff),
        "prev_digest": prev_digest,
        "count": count,
        "first": first,
        "last": last,
    }
    if logs is not None:
        # Log entries sealed with the block (recorder.sealed_logs); absent
        # from blocks that sealed none, so their digests stay as they were.
        header["logs"] = logs
    return json.dumps(header, sort_keys=True, separators=(",", ":"))


#: Stand-ins for the count and the first and last keys, which the server fills in.
_HOLES = ("\x00count", "\x00first", "\x00last")


def header_parts(
    *,
    block_no: int,
    kind: str,
    sealed_at: dt.datetime,
    cutoff: dt.datetime | None,
    prev_digest: str,
    logs: str | None = None,
) -> tuple[str, str, str, str]:
    """The header line split around its count, first key and last key.

    The header is rendered here, once, by :func:`block_header`, so the
    server-side digest cannot drift from :func:`block_digest`.
    """
    text = block_header(
        block_no=block_no,
        kind=kind,
        sealed_at=sealed_at,
        cutoff=cutoff,
        prev_digest=prev_digest,
        count=_HOLES[0],
        first=_HOLES[1],
        last=_HOLES[2],
        logs=logs,
    )
    head, rest = text.split(json.dumps(_HOLES[0]))
    mid, rest = rest.split(json.dumps(_HOLES[1]))
    mid_last, tail = rest.split(json.dumps(_HOLES[2]))
    return head, mid, mid_last, tail


def block_digest(
    *,
    block_no: int,
    kind: str,
    sealed_at: dt.datetime,
    cutoff: dt.datetime | None,
    prev_digest: str,
    members: Sequence[Member],
    logs: Sequence[LogEntry] = (),
) -> str:
    """Hex SHA-256 of a block: a JSON header line, then one JSON line per member."""
    if not members:
        raise ValueError("a block has at least one member")
    header = block_header(
        block_no=block_no,
        kind=kind,
        sealed_at=sealed_at,
        cutoff=cutoff,
        prev_digest=prev_digest,
        count=len(members),
        first=[timestamp_text(members[0].received_at), members[0].envelope_id],
        last=[timestamp_text(members[-1].received_at), members[-1].envelope_id],
        logs=sealed_logs.logs_digest(logs) if logs else None,
    )
    digest = hashlib.sha256(header.encode() + b"\n")
    for m in members:
        digest.update(member_line(m.envelope_id, m.received_at, m.sha256))
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    """The digest ``envelope_sha256`` holds: SHA-256 of the text as UTF-8."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# -- sealing


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def seal(
    engine: Engine,
    *,
    margin: dt.timedelta = DEFAULT_MARGIN,
    block_size: int = DEFAULT_BLOCK_SIZE,
    adopt_late: Collection[str] = (),
    now: dt.datetime | None = None,
) -> SealReport:
    """Append sealed blocks over every envelope received up to ``now - margin``.

    Incremental: each call continues where the range blocks stand. Each
    block is its own short transaction (serialised with other seal runs by
    an advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so it is
    safe while bots write and while another seal runs.

    Parameters
    ----------
    margin
        How far behind the current time the cutoff stays. A row dated at or
        before a cutoff already sealed (a writer whose clock is behind by more
        than this, or a forged row) is never sealed in a range block:
        :func:`recorder.verify.verify` reports it as inserted.
    block_size
        Envelopes per block.
    adopt_late
        Envelope ids of such rows to seal anyway, in ``late`` blocks, once an
        operator has checked that :func:`recorder.verify.verify`'s
        ``inserted`` findings for them are genuine. Only the rows named are
        adopted.
    now
        The current time (default: the clock).

    Raises
    ------
    SealError
        ``block_size`` or ``margin`` is out of range, or ``adopt_late`` names
        an id that is not an unsealed row behind the sealed range (nothing is
        sealed then).
    StorageUnavailable
        The database failed; blocks committed before stay sealed.
    """
    if isinstance(block_size, bool) or not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise SealError(f"block size must be between 1 and {MAX_BLOCK_SIZE}")
    if margin < dt.timedelta(0):
        raise SealError("the margin cannot be negative")
    if isinstance(adopt_late, str):
        raise SealError("adopt_late takes a collection of envelope ids, not one string")
    now = now or utc_now()
    cutoff = now - margin
    report = SealReport(cutoff=cutoff)
    adopt = sorted(set(adopt_late))
    with storage_errors("sealing envelopes"):
        if adopt:
            report.blocks.extend(_adopt(engine, adopt, block_size, now))
        while (block := _seal_range_block(engine, cutoff, block_size, now)) is not None:
            report.blocks.append(block)
        report.latest = latest_block(engine)
    return report


def sealed_through(conn: Connection) -> SealedThrough:
    """Where the range blocks stand (see :class:`SealedThrough`)."""
    row = conn.execute(statements.select_last_block("range")).first()
    if row is None:
        return SealedThrough()
    if row.cutoff is not None:
        return SealedThrough(cutoff=row.cutoff)
    return SealedThrough(last=(row.last_received_at, row.last_envelope_id))


def _through_condition(conn: Connection, through: SealedThrough) -> sa.ColumnElement[bool]:
    return statements.sealed_through(conn.dialect, through.cutoff, through.last)


def _lock(conn: Connection) -> None:
    if not is_sqlite(conn):
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SEAL_LOCK_KEY)))


def _seal_range_block(
    engine: Engine, cutoff: dt.datetime, block_size: int, now: dt.datetime
) -> SealBlock | None:
    with engine.begin() as conn:
        _lock(conn)
        through = sealed_through(conn)
        if not is_sqlite(conn):
            block, done = _seal_range_block_postgresql(conn, through, cutoff, block_size, now)
            if done:
                return block
        after = ~_through_condition(conn, through) if through.started else None
        # One row more than a block: whether this block completes the run.
        rows = conn.execute(
            statements.select_next_range(conn.dialect, after, cutoff, block_size + 1)
        ).all()
        if not rows:
            return None
        final = len(rows) <= block_size
        members = [Member(r.envelope_id, r.received_at, text_sha256(r.envelope_text)) for r in rows]
        return _append(conn, "range", members[:block_size], cutoff if final else None, now)


def _seal_range_block_postgresql(
    conn: Connection,
    through: SealedThrough,
    cutoff: dt.datetime,
    block_size: int,
    now: dt.datetime,
) -> tuple[SealBlock | None, bool]:
    """The next range block sealed by the server (None: nothing to seal), and whether it was."""
    variant, where = through.sql_params()
    where["cutoff"] = cutoff
    if conn.execute(statements.seal_probe_postgresql(variant), where).first() is None:
        # Nothing to seal, so no block to carry the logs: their digests
        # (a pass over every row a large prune logged) would be thrown away.
        return None, True
    last = _last_block(conn)
    block_no = 1 if last is None else last.block_no + 1
    prev = GENESIS_DIGEST if last is None else last.digest
    # The covered logs' entries that became final since the last block ride on this one.
    logs = sealed_logs.unsealed_entries(conn)
    logs_digest = sealed_logs.logs_digest(logs) if logs else None
    parts = {
        name: header_parts(
            block_no=block_no,
            kind="range",
            sealed_at=now,
            cutoff=at,
            prev_digest=prev,
            logs=logs_digest,
        )
        for name, at in (("final", cutoff), ("open", None))
    }
    params: dict[str, Any] = {
        **where,
        "lookahead": block_size + 1,
        "block_size": block_size,
        "block_no": block_no,
        "sealed_at": now,
        "prev_digest": prev,
        "head": parts["final"][0],
        "mid_final": parts["final"][1],
        "mid_open": parts["open"][1],
        "mid_last": parts["final"][2],
        "tail": parts["final"][3],
    }
    _read_in_key_order(conn)
    row = conn.execute(statements.seal_range_block_postgresql(variant), params).one()
    if row.n == 0:
        return None, True
    if row.block_no is None:  # an id JSON escapes: the Python path renders it
        return None, False
    sealed_logs.insert_entries(conn, block_no, logs)
    return SealBlock(**{name: getattr(row, name) for name in SealBlock.__slots__}), True


def _read_in_key_order(conn: Connection) -> None:
    """Make this transaction read the next block through ``ix_envelopes_received_at``.

    A block is the next rows in key order, so the index scan that stops after
    them is always the plan to take. Without statistics (right after a bulk
    import, before autovacuum analyzes the table) the planner chose instead a
    scan of the whole table and a sort of every row with its text, once per
    block: sealing slowed with the square of the table's size (1M envelopes,
    BENCHMARKS.md). SET LOCAL ends with the block's transaction.
    """
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")


def _adopt(engine: Engine, ids: list[str], block_size: int, now: dt.datetime) -> list[SealBlock]:
    """Seal the named late rows in ``late`` blocks, or none of them."""
    blocks: list[SealBlock] = []
    with engine.begin() as conn:
        _lock(conn)
        through = sealed_through(conn)
        rows: list[Any] = []
        if through.started:
            condition = _through_condition(conn, through)
            for start in range(0, len(ids), 1000):
                named = ids[start : start + 1000]
                stmt = statements.select_unsealed_behind(
                    conn.dialect, condition, envelope_ids=named
                )
                rows.extend(conn.execute(stmt))
        found = {r.envelope_id for r in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise SealError(
                f"cannot adopt {len(missing)} of the {len(ids)} envelopes named: {shown}: "
                "not a stored row behind the sealed range that no block holds "
                "(`recorder verify` lists those as INSERTED); nothing was sealed"
            )
        rows.sort(key=lambda r: (r.received_at, r.envelope_id.encode("utf-8", "surrogatepass")))
        for start in range(0, len(rows), block_size):
            chunk = rows[start : start + block_size]
            members = [
                Member(r.envelope_id, r.received_at, text_sha256(r.envelope_text)) for r in chunk
            ]
            blocks.append(_append(conn, "late", members, None, now))
    return blocks


def _append(
    conn: Connection,
    kind: str,
    members: Sequence[Member],
    cutoff: dt.datetime | None,
    sealed_at: dt.datetime,
) -> SealBlock:
    last = _last_block(conn)
    block_no = 1 if last is None else last.block_no + 1
    prev = GENESIS_DIGEST if last is None else last.digest
    # The covered logs' entries that became final since the last block ride on this one.
    logs = sealed_logs.unsealed_entries(conn)
    digest = block_digest(
        block_no=block_no,
        kind=kind,
        sealed_at=sealed_at,
        cutoff=cutoff,
        prev_digest=prev,
        members=members,
        logs=logs,
    )
    block = SealBlock(
        block_no=block_no,
        kind=kind,
        sealed_at=sealed_at,
        cutoff=cutoff,
        first_received_at=members[0].received_at,
        first_envelope_id=members[0].envelope_id,
        last_received_at=members[-1].received_at,
        last_envelope_id=members[-1].envelope_id,
        envelope_count=len(members),
        prev_digest=prev,
        digest=digest,
    )
    conn.execute(statements.insert_block().values(_block_row(block)))
    _insert_members(conn, block_no, members)
    sealed_logs.insert_entries(conn, block_no, logs)
    return block


def _insert_members(conn: Connection, block_no: int, members: Sequence[Member]) -> None:
    if not is_sqlite(conn):
        conn.execute(
            statements.INSERT_MEMBERS_POSTGRESQL,
            {
                "block_no": block_no,
                "ids": [m.envelope_id for m in members],
                "ats": [m.received_at for m in members],
                "shas": [m.sha256 for m in members],
            },
        )
        return
    conn.execute(
        statements.insert_members(),
        [
            {
                "block_no": block_no,
                "position": i,
                "envelope_id": m.envelope_id,
                "received_at": m.received_at,
                "envelope_sha256": m.sha256,
            }
            for i, m in enumerate(members)
        ],
    )


def _block_row(block: SealBlock) -> dict[str, Any]:
    return {name: getattr(block, name) for name in SealBlock.__slots__}


def _last_block(conn: Connection) -> SealBlock | None:
    first = conn.execute(statements.select_last_block()).first()
    return None if first is None else SealBlock(**first._mapping)


def latest_block(engine: Engine) -> SealBlock | None:
    """The newest sealed block (its ``digest`` is the one to anchor elsewhere), or None."""
    with storage_errors("reading the seal chain"), engine.connect() as conn:
        return _last_block(conn)


def block_description(block: SealBlock) -> Mapping[str, Any]:
    """A block as JSON-friendly values."""
    return {
        name: (timestamp_text(value) if isinstance(value, dt.datetime) else value)
        for name, value in _block_row(block).items()
    }
