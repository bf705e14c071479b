"""Tamper evidence: a hash chain of sealed blocks over the stored envelopes.

:func:`seal` appends blocks. Each block holds the next envelopes in
``(received_at, envelope_id)`` order, received no later than a cutoff a
margin in the past (so rows still being written are left for the next run),
and records every member's SHA-256 in ``sealed_envelopes``. Its digest covers
its header, the previous block's digest and its members' digests, so changing
any sealed envelope, any member row or any block breaks every digest from
there on; publishing the latest digest elsewhere (:func:`latest_block`)
anchors the whole chain.

:func:`verify` recomputes the chain and compares it with the envelopes, and
names each envelope that was

* **modified**: its text no longer has its sealed digest, its received_at
  moved, or (sealed or not) its stored digest, reporting columns or queryable
  ``envelope`` copy no longer match its text;
* **erased** is not a finding: an envelope whose text an erasure replaced is
  accepted exactly when the erasure log leads from its sealed digest to its
  current one (:mod:`recorder.erasure_check`), and a log entry the envelopes
  do not bear out is an ``erasure`` finding;
* **deleted**: sealed, gone, and not in the prune log (``pruned_envelopes``
  with the sealed digest) -- so pruning keeps verification passing;
* **inserted**: present inside the sealed range but not sealed -- a forged
  row, or a genuine one written by a clock that ran more than the margin
  behind; :func:`seal` with ``adopt_late=True`` seals those after review.

Verification reads one snapshot (REPEATABLE READ on PostgreSQL, one read
transaction on SQLite), so prunes and writes running meanwhile never show up
as half-done.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Engine

from recorder.engine import READ_ONLY, is_sqlite, storage_errors
from recorder.envelope import parse_envelope
from recorder.erasure_check import ErasureLedger
from recorder.errors import InvalidEnvelope, RecorderError
from recorder.schema import UTCDateTime, envelopes, pruned_envelopes, seal_blocks, sealed_envelopes

GENESIS_DIGEST = "0" * 64
DEFAULT_MARGIN = dt.timedelta(seconds=60)
DEFAULT_BLOCK_SIZE = 10_000
MAX_BLOCK_SIZE = 100_000
#: Transaction-level advisory lock that serialises seal runs on PostgreSQL ("recs").
SEAL_LOCK_KEY = 0x72656373
_DIGEST_VERSION = 1
_FETCH_CHUNK = 1_000
# PostgreSQL regex for the JSON escapes jsonb refuses (see recorder.envelope).
_JSONB_UNSAFE_PATTERN = r"\\u(0000|[dD][89abAB])"
_REPORTING_COLUMNS = (
    "envelope_type",
    "team_id",
    "enterprise_id",
    "api_app_id",
    "event_id",
    "event_type",
    "channel_id",
    "user_id",
    "retry_attempt",
    "retry_reason",
)


class SealError(RecorderError, ValueError):
    """A seal or verify option is out of range."""


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
        text = f"sealed {self.sealed} envelopes in {len(self.blocks)} new blocks"
        if late:
            text += f" ({late} adopted late)"
        if self.latest is None:
            return text + "; nothing sealed yet"
        return f"{text}; latest block {self.latest.block_no} digest {self.latest.digest}"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem :func:`verify` found."""

    kind: str
    """``modified``, ``deleted``, ``inserted``, ``chain``, ``anchor`` or ``erasure``."""
    envelope_id: str | None
    detail: str
    block_no: int | None = None

    def line(self) -> str:
        subject = self.envelope_id if self.envelope_id is not None else f"block {self.block_no}"
        return f"{self.kind.upper()} {subject}: {self.detail}"


@dataclass(slots=True)
class VerifyReport:
    """The outcome of :func:`verify`; ``ok`` when nothing was found."""

    findings: list[Finding] = field(default_factory=list)
    blocks: int = 0
    sealed: int = 0
    pruned: int = 0
    unsealed: int = 0
    erased: int = 0
    """Envelopes changed by logged erasures (their tombstones or scrubbed texts checked)."""
    latest_digest: str | None = None

    @property
    def ok(self) -> bool:
        return not self.findings

    def of_kind(self, kind: str) -> set[str]:
        """Envelope ids named by findings of ``kind``."""
        return {f.envelope_id for f in self.findings if f.kind == kind and f.envelope_id}

    def summary(self) -> str:
        verdict = "OK" if self.ok else f"FAILED: {len(self.findings)} problems"
        return (
            f"{verdict}; {self.blocks} blocks, {self.sealed} sealed envelopes "
            f"({self.pruned} since pruned by logged prunes), {self.unsealed} not yet sealed, "
            f"{self.erased} erased by logged erasures; "
            f"latest digest {self.latest_digest or 'none'}"
        )


# -- the digest


def _timestamp(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def block_digest(
    *,
    block_no: int,
    kind: str,
    sealed_at: dt.datetime,
    cutoff: dt.datetime | None,
    prev_digest: str,
    members: Sequence[Member],
) -> str:
    """Hex SHA-256 of a block: a JSON header line, then one JSON line per member.

    JSON (ASCII-escaped) keeps every field unambiguous whatever characters an
    envelope id holds; timestamps are UTC with microseconds, as stored.
    """
    if not members:
        raise ValueError("a block has at least one member")
    header = {
        "v": _DIGEST_VERSION,
        "block_no": block_no,
        "kind": kind,
        "sealed_at": _timestamp(sealed_at),
        "cutoff": _timestamp(cutoff),
        "prev_digest": prev_digest,
        "count": len(members),
        "first": [_timestamp(members[0].received_at), members[0].envelope_id],
        "last": [_timestamp(members[-1].received_at), members[-1].envelope_id],
    }
    digest = hashlib.sha256()
    digest.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    for m in members:
        line = [m.envelope_id, _timestamp(m.received_at), m.sha256]
        digest.update(json.dumps(line, separators=(",", ":")).encode() + b"\n")
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    """The digest ``envelope_sha256`` holds: SHA-256 of the text as UTF-8."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# -- ordering: (received_at, envelope_id), byte order for ids on every engine


def _id_key(conn: Connection | Engine) -> sa.ColumnElement[str]:
    # Byte order, not the database's locale: a restore onto a server with
    # another collation must order (and so seal and verify) the same way.
    if is_sqlite(conn):
        return envelopes.c.envelope_id
    return envelopes.c.envelope_id.collate("C")


def _after(conn: Connection, at: dt.datetime, envelope_id: str) -> sa.ColumnElement[bool]:
    key = sa.tuple_(envelopes.c.received_at, _id_key(conn))
    # The plain received_at bound lets the planner use ix_envelopes_received_at.
    return sa.and_(
        envelopes.c.received_at >= at, key > sa.tuple_(sa.literal(at, UTCDateTime), envelope_id)
    )


def _at_or_before(conn: Connection, at: dt.datetime, envelope_id: str) -> sa.ColumnElement[bool]:
    key = sa.tuple_(envelopes.c.received_at, _id_key(conn))
    return sa.and_(
        envelopes.c.received_at <= at, key <= sa.tuple_(sa.literal(at, UTCDateTime), envelope_id)
    )


# -- sealing


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def seal(
    engine: Engine,
    *,
    margin: dt.timedelta = DEFAULT_MARGIN,
    block_size: int = DEFAULT_BLOCK_SIZE,
    adopt_late: bool = False,
    now: dt.datetime | None = None,
) -> SealReport:
    """Append sealed blocks over every envelope received up to ``now - margin``.

    Incremental: each call continues after the last sealed key. Each block is
    its own short transaction (serialised with other seal runs by an
    advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so it is
    safe while bots write and while another seal runs.

    Parameters
    ----------
    margin
        How far behind the current time the cutoff stays. A row whose
        ``received_at`` is already behind the cutoff when it commits (a
        writer whose clock is behind by more than this, or a forged row) is
        not sealed: :func:`verify` reports it as inserted.
    block_size
        Envelopes per block.
    adopt_late
        Also seal such rows, in ``late`` blocks, after an operator has
        checked that :func:`verify`'s ``inserted`` findings are genuine.
    now
        The current time (default: the clock).

    Raises
    ------
    SealError
        ``block_size`` or ``margin`` is out of range.
    StorageUnavailable
        The database failed; blocks committed before stay sealed.
    """
    if isinstance(block_size, bool) or not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise SealError(f"block size must be between 1 and {MAX_BLOCK_SIZE}")
    if margin < dt.timedelta(0):
        raise SealError("the margin cannot be negative")
    now = now or utc_now()
    cutoff = now - margin
    report = SealReport(cutoff=cutoff)
    with storage_errors("sealing envelopes"):
        if adopt_late:
            while (block := _seal_block(engine, "late", cutoff, block_size, now)) is not None:
                report.blocks.append(block)
        while (block := _seal_block(engine, "range", cutoff, block_size, now)) is not None:
            report.blocks.append(block)
        report.latest = latest_block(engine)
    return report


def _seal_block(
    engine: Engine, kind: str, cutoff: dt.datetime, block_size: int, now: dt.datetime
) -> SealBlock | None:
    with engine.begin() as conn:
        if not is_sqlite(conn):
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SEAL_LOCK_KEY)))
        last = _last_block(conn)
        high = _high_water(conn)
        if kind == "range":
            rows = _next_range(conn, high, cutoff, block_size)
        elif high is None:
            return None
        else:
            rows = _late_rows(conn, high, block_size)
        if not rows:
            return None
        members = [Member(r.envelope_id, r.received_at, text_sha256(r.envelope_text)) for r in rows]
        block_no = 1 if last is None else last.block_no + 1
        prev = GENESIS_DIGEST if last is None else last.digest
        sealed_at = now
        block_cutoff = cutoff if kind == "range" else None
        digest = block_digest(
            block_no=block_no,
            kind=kind,
            sealed_at=sealed_at,
            cutoff=block_cutoff,
            prev_digest=prev,
            members=members,
        )
        block = SealBlock(
            block_no=block_no,
            kind=kind,
            sealed_at=sealed_at,
            cutoff=block_cutoff,
            first_received_at=members[0].received_at,
            first_envelope_id=members[0].envelope_id,
            last_received_at=members[-1].received_at,
            last_envelope_id=members[-1].envelope_id,
            envelope_count=len(members),
            prev_digest=prev,
            digest=digest,
        )
        conn.execute(sa.insert(seal_blocks).values(_block_row(block)))
        _insert_members(conn, block_no, members)
        return block


# One statement over arrays on PostgreSQL: a block of 10,000 members in one round trip.
_INSERT_MEMBERS_POSTGRESQL = sa.text(
    """
    INSERT INTO sealed_envelopes (block_no, position, envelope_id, received_at, envelope_sha256)
    SELECT :block_no, m.ord - 1, m.envelope_id, m.received_at, m.envelope_sha256
    FROM unnest(CAST(:ids AS text[]), CAST(:ats AS timestamptz[]), CAST(:shas AS text[]))
        WITH ORDINALITY AS m(envelope_id, received_at, envelope_sha256, ord)
    """
)


def _insert_members(conn: Connection, block_no: int, members: Sequence[Member]) -> None:
    if not is_sqlite(conn):
        conn.execute(
            _INSERT_MEMBERS_POSTGRESQL,
            {
                "block_no": block_no,
                "ids": [m.envelope_id for m in members],
                "ats": [m.received_at for m in members],
                "shas": [m.sha256 for m in members],
            },
        )
        return
    conn.execute(
        sa.insert(sealed_envelopes),
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
    row = conn.execute(sa.select(seal_blocks).order_by(seal_blocks.c.block_no.desc()).limit(1))
    first = row.first()
    return None if first is None else SealBlock(**first._mapping)


def _high_water(conn: Connection) -> tuple[dt.datetime, str] | None:
    """The last key of the newest range block: everything at or before it is sealed range."""
    row = conn.execute(
        sa.select(seal_blocks.c.last_received_at, seal_blocks.c.last_envelope_id)
        .where(seal_blocks.c.kind == "range")
        .order_by(seal_blocks.c.block_no.desc())
        .limit(1)
    ).first()
    return None if row is None else (row[0], row[1])


def _row_columns() -> list[sa.ColumnElement[Any]]:
    return [envelopes.c.envelope_id, envelopes.c.received_at, envelopes.c.envelope_text]


def _next_range(
    conn: Connection, high: tuple[dt.datetime, str] | None, cutoff: dt.datetime, limit: int
) -> Sequence[Any]:
    stmt = sa.select(*_row_columns()).where(envelopes.c.received_at <= cutoff)
    if high is not None:
        stmt = stmt.where(_after(conn, *high))
    stmt = stmt.order_by(envelopes.c.received_at, _id_key(conn)).limit(limit)
    return conn.execute(stmt).all()


def _unsealed_in_range(conn: Connection, high: tuple[dt.datetime, str]) -> sa.Select[Any]:
    sealed = sa.exists().where(
        sealed_envelopes.c.envelope_id == envelopes.c.envelope_id,
        sealed_envelopes.c.received_at == envelopes.c.received_at,
    )
    return (
        sa.select(*_row_columns())
        .where(_at_or_before(conn, *high), ~sealed)
        .order_by(envelopes.c.received_at, _id_key(conn))
    )


def _late_rows(conn: Connection, high: tuple[dt.datetime, str], limit: int) -> Sequence[Any]:
    return conn.execute(_unsealed_in_range(conn, high).limit(limit)).all()


def latest_block(engine: Engine) -> SealBlock | None:
    """The newest sealed block (its ``digest`` is the one to anchor elsewhere), or None."""
    with storage_errors("reading the seal chain"), engine.connect() as conn:
        return _last_block(conn)


# -- verification


def verify(
    engine: Engine,
    *,
    anchors: Iterable[str] = (),
    future_tolerance: dt.timedelta = DEFAULT_MARGIN,
    now: dt.datetime | None = None,
) -> VerifyReport:
    """Recompute the seal chain and check every envelope against it.

    Parameters
    ----------
    anchors
        Digests published elsewhere earlier (``recorder verify --latest``):
        each must still be the digest of a block, which catches a chain
        rewritten from some block onwards by someone able to write the seal
        tables.
    future_tolerance
        An unsealed row received more than this after ``now`` is reported as
        inserted: once its time came, :func:`seal` would seal it like any other.
    now
        The current time (default: the clock).

    Returns
    -------
    VerifyReport
        ``ok`` when nothing was found; otherwise one :class:`Finding` per
        problem, naming the envelope.
    """
    report = VerifyReport()
    latest_plausible = (now or utc_now()) + future_tolerance
    with storage_errors("verifying the seal chain"), _snapshot(engine) as conn:
        blocks = [
            SealBlock(**row._mapping)
            for row in conn.execute(sa.select(seal_blocks).order_by(seal_blocks.c.block_no))
        ]
        report.blocks = len(blocks)
        report.latest_digest = blocks[-1].digest if blocks else None
        ledger = ErasureLedger.load(conn)
        _check_chain(conn, blocks, report, ledger)
        digests = {b.digest for b in blocks}
        for anchor in anchors:
            if anchor.strip().lower() not in digests:
                report.findings.append(
                    Finding(
                        "anchor",
                        None,
                        f"anchored digest {anchor.strip()} is not in the chain: "
                        "the seal tables were rewritten",
                    )
                )
        ranges = [b for b in blocks if b.kind == "range"]
        high = (ranges[-1].last_received_at, ranges[-1].last_envelope_id) if ranges else None
        if high is not None:
            _check_unsealed_in_range(conn, high, report, ledger)
        _check_beyond(conn, high, report, latest_plausible, ledger)
        check_erasure_log(conn, ledger, report)
    return report


def check_erasure_log(conn: Connection, ledger: ErasureLedger, report: VerifyReport) -> None:
    """Every finished erasure log entry must be borne out by its envelope (or a logged prune)."""
    report.erased = len(ledger)
    report.findings.extend(
        Finding("erasure", envelope_id, problem) for envelope_id, problem in ledger.findings(conn)
    )


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """One consistent read: a prune or write running meanwhile is seen whole or not at all."""
    with engine.connect() as conn:
        if is_sqlite(conn):
            options: dict[str, Any] = {READ_ONLY: True}
        else:
            options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        conn = conn.execution_options(**options)
        with conn.begin():
            yield conn


def _check_chain(
    conn: Connection, blocks: list[SealBlock], report: VerifyReport, ledger: ErasureLedger
) -> None:
    prev = GENESIS_DIGEST
    for expected_no, block in enumerate(blocks, start=1):
        members = [
            Member(r.envelope_id, r.received_at, r.envelope_sha256)
            for r in conn.execute(
                sa.select(sealed_envelopes)
                .where(sealed_envelopes.c.block_no == block.block_no)
                .order_by(sealed_envelopes.c.position)
            )
        ]
        problems = _block_problems(block, expected_no, prev, members)
        report.findings.extend(
            Finding("chain", None, problem, block.block_no) for problem in problems
        )
        prev = block.digest
        report.sealed += len(members)
        _check_members(conn, block, members, report, ledger)


def _block_problems(
    block: SealBlock, expected_no: int, prev: str, members: list[Member]
) -> list[str]:
    problems = []
    if block.block_no != expected_no:
        problems.append(f"expected block {expected_no} here: a block is missing")
    if block.prev_digest != prev:
        problems.append("its prev_digest is not the previous block's digest")
    if len(members) != block.envelope_count:
        problems.append(
            f"{len(members)} sealed envelopes listed, the block says {block.envelope_count}"
        )
    if not members:
        return [*problems, "it lists no sealed envelopes"]
    if (members[0].received_at, members[0].envelope_id) != (
        block.first_received_at,
        block.first_envelope_id,
    ) or (members[-1].received_at, members[-1].envelope_id) != (
        block.last_received_at,
        block.last_envelope_id,
    ):
        problems.append("its first or last key does not match its sealed envelopes")
    digest = block_digest(
        block_no=block.block_no,
        kind=block.kind,
        sealed_at=block.sealed_at,
        cutoff=block.cutoff,
        prev_digest=block.prev_digest,
        members=members,
    )
    if digest != block.digest:
        problems.append(
            "its digest does not match its contents: the seal tables were edited "
            f"(recomputed {digest}, stored {block.digest})"
        )
    return problems


def _chunks(items: Sequence[Any], size: int = _FETCH_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _current_rows(conn: Connection, ids: Sequence[str]) -> dict[str, Any]:
    stmt = sa.select(*_full_columns(conn)).where(envelopes.c.envelope_id.in_(list(ids)))
    return {row.envelope_id: row for row in conn.execute(stmt)}


def _full_columns(conn: Connection) -> list[sa.ColumnElement[Any]]:
    if is_sqlite(conn):
        # SQLite keeps the queryable copy as the very text the recorder wrote.
        queryable_ok: sa.ColumnElement[Any] = sa.null()
        queryable: sa.ColumnElement[Any] = sa.cast(envelopes.c.envelope, sa.Text)
    else:
        # jsonb equality, in the server: a jsonb-safe text must cast to the stored copy.
        # Texts with escapes jsonb refuses (NUL, lone surrogates) are compared in Python.
        unsafe = envelopes.c.envelope_text.regexp_match(_JSONB_UNSAFE_PATTERN)
        queryable_ok = sa.case(
            (unsafe, sa.null()),
            else_=envelopes.c.envelope == sa.cast(envelopes.c.envelope_text, JSONB),
        )
        queryable = sa.case((unsafe, sa.cast(envelopes.c.envelope, sa.Text)), else_=sa.null())
    return [
        envelopes.c.envelope_id,
        envelopes.c.received_at,
        envelopes.c.envelope_text,
        envelopes.c.envelope_sha256,
        queryable_ok.label("queryable_ok"),
        queryable.label("queryable"),
        *(envelopes.c[name] for name in _REPORTING_COLUMNS),
    ]


def _pruned(conn: Connection, ids: Sequence[str]) -> dict[str, list[Any]]:
    stmt = sa.select(
        pruned_envelopes.c.envelope_id,
        pruned_envelopes.c.envelope_sha256,
        pruned_envelopes.c.received_at,
        pruned_envelopes.c.prune_run_id,
    ).where(pruned_envelopes.c.envelope_id.in_(list(ids)))
    found: dict[str, list[Any]] = {}
    for row in conn.execute(stmt):
        found.setdefault(row.envelope_id, []).append(row)
    return found


def _check_members(
    conn: Connection,
    block: SealBlock,
    members: list[Member],
    report: VerifyReport,
    ledger: ErasureLedger,
) -> None:
    for chunk in _chunks(members):
        current = _current_rows(conn, [m.envelope_id for m in chunk])
        missing = [
            m
            for m in chunk
            if m.envelope_id not in current or current[m.envelope_id].received_at != m.received_at
        ]
        pruned = _pruned(conn, [m.envelope_id for m in missing]) if missing else {}
        for m in chunk:
            row = current.get(m.envelope_id)
            if row is not None and row.received_at == m.received_at:
                _check_sealed_row(block, m, row, report, ledger)
                continue
            logged = [p for p in pruned.get(m.envelope_id, []) if p.received_at == m.received_at]
            if any(_same_or_erased(ledger, m, p.envelope_sha256) for p in logged):
                report.pruned += 1
            elif logged:
                report.findings.append(
                    Finding(
                        "modified",
                        m.envelope_id,
                        f"pruned by run {logged[0].prune_run_id}, but the prune log's digest "
                        f"{logged[0].envelope_sha256} is not the sealed {m.sha256}: "
                        "changed before it was pruned",
                        block.block_no,
                    )
                )
            elif row is not None:
                report.findings.append(
                    Finding(
                        "modified",
                        m.envelope_id,
                        f"received_at changed from {_timestamp(m.received_at)} (sealed in block "
                        f"{block.block_no}) to {_timestamp(row.received_at)}",
                        block.block_no,
                    )
                )
            else:
                report.findings.append(
                    Finding(
                        "deleted",
                        m.envelope_id,
                        f"sealed in block {block.block_no} (received_at "
                        f"{_timestamp(m.received_at)}), gone, and no logged prune removed it",
                        block.block_no,
                    )
                )


def _same_or_erased(ledger: ErasureLedger, m: Member, logged_sha256: str) -> bool:
    # A prune logs the envelope_sha256 column (the original's digest), while a
    # block sealed after an erasure holds the tombstone's: the log links them.
    return (
        logged_sha256 == m.sha256
        or ledger.accounts_for(m.envelope_id, logged_sha256, m.sha256)
        or ledger.accounts_for(m.envelope_id, m.sha256, logged_sha256)
    )


def _check_sealed_row(
    block: SealBlock, m: Member, row: Any, report: VerifyReport, ledger: ErasureLedger
) -> None:
    actual = text_sha256(row.envelope_text)
    if actual != m.sha256 and not ledger.accounts_for(m.envelope_id, m.sha256, actual):
        report.findings.append(
            Finding(
                "modified",
                m.envelope_id,
                f"envelope_text digest {actual} is not the {m.sha256} sealed in block "
                f"{block.block_no}",
                block.block_no,
            )
        )
        return
    _check_consistent(row, report, ledger, block.block_no)


def _check_consistent(
    row: Any, report: VerifyReport, ledger: ErasureLedger, block_no: int | None = None
) -> None:
    """The row's digest column, reporting columns and queryable copy agree with its text.

    After a logged erasure the digest column keeps the original's digest.
    """
    problems = []
    actual = text_sha256(row.envelope_text)
    if row.envelope_sha256 != actual and not ledger.accounts_for(
        row.envelope_id, row.envelope_sha256, actual
    ):
        problems.append(f"envelope_sha256 {row.envelope_sha256} is not the text's digest {actual}")
    try:
        parsed = parse_envelope(row.envelope_id, row.envelope_text, max_bytes=2**62)
    except InvalidEnvelope as exc:
        problems.append(f"envelope_text is no longer a valid envelope ({exc})")
    else:
        columns = parsed.columns
        for name in _REPORTING_COLUMNS:
            if getattr(row, name) != columns[name]:
                problems.append(
                    f"column {name} is {getattr(row, name)!r}; the envelope text gives "
                    f"{columns[name]!r}"
                )
        same = row.queryable_ok
        if same is None:
            same = _same_json(row.queryable, parsed.queryable_text)
        if not same:
            problems.append("the queryable envelope column no longer matches envelope_text")
    report.findings.extend(
        Finding("modified", row.envelope_id, problem, block_no) for problem in problems
    )


def _same_json(stored: str | None, expected: str) -> bool:
    if stored == expected:
        return True
    if stored is None:
        return False
    # jsonb normalises numbers (1e3 -> 1000) and spacing; Decimal compares values.
    try:
        return bool(_decimal_json(stored) == _decimal_json(expected))
    except ValueError:
        return False


def _decimal_json(text: str) -> Any:
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def _check_unsealed_in_range(
    conn: Connection, high: tuple[dt.datetime, str], report: VerifyReport, ledger: ErasureLedger
) -> None:
    stmt = _unsealed_in_range(conn, high).with_only_columns(*_full_columns(conn))
    for row in conn.execute(stmt):
        report.unsealed += 1
        report.findings.append(
            Finding(
                "inserted",
                row.envelope_id,
                f"received_at {_timestamp(row.received_at)} is inside the sealed range "
                f"(sealed up to {_timestamp(high[0])}) but it was never sealed: a forged row, "
                "or a late write from a clock behind by more than the seal margin "
                "(if genuine, `recorder seal --adopt-late` seals it)",
            )
        )
        _check_consistent(row, report, ledger)


def _check_beyond(
    conn: Connection,
    high: tuple[dt.datetime, str] | None,
    report: VerifyReport,
    latest_plausible: dt.datetime,
    ledger: ErasureLedger,
) -> None:
    after = high
    while True:
        stmt = sa.select(*_full_columns(conn))
        if after is not None:
            stmt = stmt.where(_after(conn, *after))
        stmt = stmt.order_by(envelopes.c.received_at, _id_key(conn)).limit(_FETCH_CHUNK)
        rows = conn.execute(stmt).all()
        for row in rows:
            report.unsealed += 1
            if row.received_at > latest_plausible:
                report.findings.append(
                    Finding(
                        "inserted",
                        row.envelope_id,
                        f"received_at {_timestamp(row.received_at)} is in the future: a forged "
                        "row, or a writer whose clock runs ahead (it would be sealed as "
                        "genuine once its time came)",
                    )
                )
            _check_consistent(row, report, ledger)
        if len(rows) < _FETCH_CHUNK:
            return
        after = (rows[-1].received_at, rows[-1].envelope_id)


def verify_lines(report: VerifyReport) -> list[str]:
    """One line per finding, then the summary."""
    return [finding.line() for finding in report.findings] + [report.summary()]


def block_description(block: SealBlock) -> Mapping[str, Any]:
    """A block as JSON-friendly values."""
    return {
        name: (_timestamp(value) if isinstance(value, dt.datetime) else value)
        for name, value in _block_row(block).items()
    }
