"""Verification: recompute the seal chain and check every envelope against it.

:func:`verify` names each envelope that was

* **modified**: its text no longer has its sealed digest, its received_at
  moved, or (sealed or not) its stored digest, reporting columns or queryable
  ``envelope`` copy no longer match its text;
* **erased** is not a finding: an envelope whose text an erasure replaced is
  accepted exactly when the erasure log leads from its sealed digest to its
  current one (:mod:`recorder.erasure_check`), and a log entry the envelopes
  do not bear out is an ``erasure`` finding;
* **deleted**: sealed, gone, and not in the prune log (``pruned_envelopes``
  with the sealed digest) -- so pruning keeps verification passing;
* **inserted**: dated at or before the point the range blocks have sealed
  everything up to, but not sealed -- a forged row, or a genuine one written
  by a clock that ran more than the margin behind (``seal(adopt_late=[...])``
  seals those after review); or dated in the future.

Verification reads one snapshot (REPEATABLE READ on PostgreSQL, one read
transaction on SQLite, or several begun at the same commit), so prunes and
writes running meanwhile never show up as half-done.

Over 450 lines: the findings model and the row-by-row reference walk that
the engine fast paths (:mod:`recorder.verify_postgresql`,
:mod:`recorder.verify_sqlite`) fall back to and are tested against.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from recorder import sealed_logs, statements
from recorder.engine import READ_ONLY, is_sqlite, storage_errors
from recorder.envelope import stored_columns
from recorder.erasure_check import ErasureLedger
from recorder.errors import InvalidEnvelope
from recorder.prune_checks import check_deletion_log
from recorder.schema import REPORTING_COLUMNS, envelopes
from recorder.seal import (
    DEFAULT_MARGIN,
    GENESIS_DIGEST,
    Member,
    SealBlock,
    SealedThrough,
    block_digest,
    sealed_through,
    text_sha256,
    utc_now,
)
from recorder.sealed_logs import LogEntry
from recorder.timespec import timestamp_text
from recorder.wording import counted

_FETCH_CHUNK = 1_000


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem :func:`verify` found."""

    kind: str
    """``modified``, ``deleted``, ``inserted``, ``chain``, ``anchor``, ``erasure``,
    ``prune_log`` (a logged deletion its run does not account for) or
    ``sealed_log`` (a sealed log entry that changed)."""
    envelope_id: str | None
    detail: str
    block_no: int | None = None

    def line(self) -> str:
        if self.envelope_id is None and self.block_no is None:
            return f"{self.kind.upper()}: {self.detail}"
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
    """Envelopes the erasure log names as changed (in the database, or in a spool to drain)."""
    latest_digest: str | None = None

    @property
    def ok(self) -> bool:
        return not self.findings

    def of_kind(self, kind: str) -> set[str]:
        """Envelope ids named by findings of ``kind``."""
        return {f.envelope_id for f in self.findings if f.kind == kind and f.envelope_id}

    def summary(self) -> str:
        verdict = "OK" if self.ok else f"FAILED: {counted(len(self.findings), 'problem')}"
        return (
            f"{verdict}; {counted(self.blocks, 'block')}, "
            f"{counted(self.sealed, 'sealed envelope')} "
            f"({self.pruned} since pruned by logged prunes), {self.unsealed} not yet sealed, "
            f"{self.erased} erased by logged erasures; "
            f"latest digest {self.latest_digest or 'none'}"
        )


def verify(
    engine: Engine,
    *,
    anchors: Iterable[str] = (),
    future_tolerance: dt.timedelta = DEFAULT_MARGIN,
    now: dt.datetime | None = None,
    server_side: bool = True,
    workers: int | None = None,
) -> VerifyReport:
    """Recompute the seal chain and check every envelope against it.

    On PostgreSQL the per-row work (each text's SHA-256, the comparisons of
    its digest column, reporting columns and queryable copy with the text,
    the join with the sealed digests, the block digests) runs in the server
    in one pass, and only what it cannot certify comes back to be checked
    here (:mod:`recorder.verify_postgresql`); the findings are the same.

    Parameters
    ----------
    anchors
        Digests published elsewhere earlier (``recorder verify --latest``):
        each must still be the digest of a block, which catches a chain
        rewritten from some block onwards by someone able to write the seal
        tables.
    future_tolerance
        An unsealed row received more than this after ``now`` is reported as
        inserted: once its time came, :func:`recorder.seal.seal` would seal it
        like any other.
    now
        The current time (default: the clock).
    server_side
        False walks every row with the per-row checks alone (slower; the
        plain reference the fast walks are tested against). On SQLite the
        fast walk streams each table once and rechecks only what a quick
        test cannot pass (:mod:`recorder.verify_sqlite`), and digests the
        chain from the members' stored times. On PostgreSQL the server also
        certifies the logged deletions that plainly pass
        (:func:`recorder.prune_checks.check_deletion_log`).
    workers
        PostgreSQL: how many connections share the work, each importing the
        verifier's snapshot (default: the server's
        ``max_parallel_workers_per_gather`` plus one, once the archive holds
        100,000 sealed envelopes; one below that). SQLite: how many
        processes share the fast walk, this one and ``workers - 1`` worker
        interpreters started for it, each reading the same snapshot
        (:class:`recorder.verify_sqlite.Helpers`; default: the available
        cores, at most four, once the table holds 50,000 envelopes; one
        below that). A database that is no WAL file is read by one process.

    Returns
    -------
    VerifyReport
        ``ok`` when nothing was found; otherwise one :class:`Finding` per
        problem, naming the envelope.
    """
    report = VerifyReport()
    latest_plausible = (now or utc_now()) + future_tolerance
    # Imported here: the fast walks use this module's per-row checks.
    from recorder import verify_sqlite

    sqlite_fast = server_side and is_sqlite(engine)
    with (
        storage_errors("verifying the seal chain"),
        verify_sqlite.helpers(engine, workers) if sqlite_fast else nullcontext() as helpers,
        _snapshot(engine) as conn,
    ):
        if helpers is not None:
            helpers.share_snapshot(conn, engine)
        blocks = [SealBlock(**row._mapping) for row in conn.execute(statements.select_blocks())]
        report.blocks = len(blocks)
        report.latest_digest = blocks[-1].digest if blocks else None
        ledger = ErasureLedger.load(conn)
        sealed = sealed_logs.entries_by_block(conn)
        through = sealed_through(conn)
        if server_side and not is_sqlite(conn):
            from recorder import verify_postgresql

            verify_postgresql.check(
                conn, blocks, through, report, ledger, latest_plausible, workers
            )
        elif server_side:
            verify_sqlite.check(
                conn, blocks, sealed, through, report, ledger, latest_plausible, helpers
            )
        else:
            _check_chain(conn, blocks, report, ledger, sealed)
            if through.started:
                _check_unsealed_behind(conn, through, report, ledger)
            _check_beyond(conn, through, report, latest_plausible, ledger)
        _check_stray_members(conn, blocks, report)
        _check_anchors(blocks, anchors, report)
        check_erasure_log(conn, ledger, report)
        check_covered_logs(conn, report, sealed, server_side=server_side)
    return report


def check_erasure_log(conn: Connection, ledger: ErasureLedger, report: VerifyReport) -> None:
    """Every finished erasure log entry must be borne out by its envelope (or a logged prune)."""
    report.erased = len(ledger)
    report.findings.extend(
        Finding("erasure", envelope_id, problem) for envelope_id, problem in ledger.findings(conn)
    )


def check_covered_logs(
    conn: Connection,
    report: VerifyReport,
    sealed: dict[int, list[LogEntry]],
    *,
    server_side: bool = True,
) -> None:
    """Every logged deletion against its run; every sealed log entry against its log."""
    report.findings.extend(
        Finding("prune_log", problem.envelope_id, problem.detail)
        for problem in check_deletion_log(conn, server_side=server_side)
    )
    report.findings.extend(
        Finding("sealed_log", None, problem.detail, problem.block_no or None)
        for problem in sealed_logs.check_sealed(conn, sealed)
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


def _check_stray_members(conn: Connection, blocks: list[SealBlock], report: VerifyReport) -> None:
    """Members listed under a block the chain does not hold (they would pass as sealed)."""
    stmt = statements.select_stray_members([b.block_no for b in blocks])
    report.findings.extend(
        Finding(
            "chain",
            None,
            f"{counted(row.n, 'sealed envelope')} listed under block {row.block_no}, "
            "which the chain does not hold: the seal tables were edited",
            row.block_no,
        )
        for row in conn.execute(stmt)
    )


def _check_anchors(blocks: list[SealBlock], anchors: Iterable[str], report: VerifyReport) -> None:
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


# -- the chain


def _check_chain(
    conn: Connection,
    blocks: list[SealBlock],
    report: VerifyReport,
    ledger: ErasureLedger,
    sealed: dict[int, list[LogEntry]],
) -> None:
    prev = GENESIS_DIGEST
    for expected_no, block in enumerate(blocks, start=1):
        members = [
            Member(r.envelope_id, r.received_at, r.envelope_sha256)
            for r in conn.execute(statements.select_block_members(block.block_no))
        ]
        logs = sealed.get(block.block_no, [])
        problems = block_problems(block, expected_no, prev, members, logs)
        report.findings.extend(
            Finding("chain", None, problem, block.block_no) for problem in problems
        )
        prev = block.digest
        report.sealed += len(members)
        _check_members(conn, block, members, report, ledger)


def block_problems(
    block: SealBlock,
    expected_no: int,
    prev: str,
    members: Sequence[Member],
    logs: Sequence[LogEntry] = (),
) -> list[str]:
    """What is wrong with one block, given the digest of the block before it."""
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
        logs=logs,
    )
    if digest != block.digest:
        problems.append(
            "its digest does not match its contents: the seal tables were edited "
            f"(recomputed {digest}, stored {block.digest})"
        )
    return problems


# -- sealed envelopes


def _chunks(items: Sequence[Any], size: int = _FETCH_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def row_columns(conn: Connection) -> list[sa.ColumnElement[Any]]:
    """What the per-row checks read of an envelope."""
    # The copy as text, compared with the text's decoding in Python: a cast of
    # the text in the server would fail on a text that is not JSON at all.
    queryable_ok: sa.ColumnElement[Any] = sa.null()
    queryable: sa.ColumnElement[Any] = sa.cast(envelopes.c.envelope, sa.Text)
    return [
        envelopes.c.envelope_id,
        envelopes.c.received_at,
        envelopes.c.envelope_text,
        envelopes.c.envelope_sha256,
        queryable_ok.label("queryable_ok"),
        queryable.label("queryable"),
        *(envelopes.c[name] for name in REPORTING_COLUMNS),
    ]


def _current_rows(conn: Connection, ids: Sequence[str]) -> dict[str, Any]:
    stmt = sa.select(*row_columns(conn)).where(envelopes.c.envelope_id.in_(list(ids)))
    return {row.envelope_id: row for row in conn.execute(stmt)}


def _pruned(conn: Connection, ids: Sequence[str]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for row in conn.execute(statements.select_pruned_log(list(ids))):
        found.setdefault(row.envelope_id, []).append(row)
    return found


def _check_members(
    conn: Connection,
    block: SealBlock,
    members: Sequence[Member],
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
            check_member(block.block_no, m, current.get(m.envelope_id), pruned, report, ledger)


_JUDGE_CHUNK = 1_000


def judge_unsealed(
    conn: Connection,
    kinds: dict[str, str],
    through: SealedThrough,
    report: VerifyReport,
    ledger: ErasureLedger,
) -> None:
    """Judge the unsealed rows a fast path flagged (``inserted``, ``future`` or ``check``), in
    ``(received_at, envelope_id)`` order."""
    ids = sorted(kinds)
    rows: list[Any] = []
    for start in range(0, len(ids), _JUDGE_CHUNK):
        rows.extend(
            conn.execute(
                sa.select(*row_columns(conn)).where(
                    envelopes.c.envelope_id.in_(ids[start : start + _JUDGE_CHUNK])
                )
            )
        )
    rows.sort(key=lambda r: (r.received_at, r.envelope_id.encode("utf-8", "surrogatepass")))
    for row in rows:
        kind = kinds[row.envelope_id]
        report.unsealed += 1
        if kind == "inserted":
            report.findings.append(inserted_behind(row, through))
        elif kind == "future":
            report.findings.append(inserted_in_future(row))
        check_consistent(row, report, ledger)


def judge_members(
    conn: Connection, members: Sequence[Any], report: VerifyReport, ledger: ErasureLedger
) -> None:
    """Judge sealed members the fast paths could not settle in the database, in seal order."""
    ids = sorted({m.envelope_id for m in members})
    current = {
        r.envelope_id: r
        for r in conn.execute(sa.select(*row_columns(conn)).where(envelopes.c.envelope_id.in_(ids)))
    }
    pruned: dict[str, list[Any]] = {}
    for p in conn.execute(statements.select_pruned_log(ids)):
        pruned.setdefault(p.envelope_id, []).append(p)
    for m in sorted(members, key=lambda m: (m.block_no, m.position)):
        member = Member(m.envelope_id, m.received_at, m.envelope_sha256)
        check_member(m.block_no, member, current.get(m.envelope_id), pruned, report, ledger)


def check_member(
    block_no: int,
    m: Member,
    row: Any,
    pruned: dict[str, list[Any]],
    report: VerifyReport,
    ledger: ErasureLedger,
) -> None:
    """One sealed envelope against its stored row (or None) and the prune log."""
    if row is not None and row.received_at == m.received_at:
        actual = text_sha256(row.envelope_text)
        if actual != m.sha256 and not ledger.accounts_for(m.envelope_id, m.sha256, actual):
            report.findings.append(
                Finding(
                    "modified",
                    m.envelope_id,
                    f"envelope_text digest {actual} is not the {m.sha256} sealed in block "
                    f"{block_no}",
                    block_no,
                )
            )
        else:
            check_consistent(row, report, ledger, block_no)
        return
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
                block_no,
            )
        )
    elif row is not None:
        report.findings.append(
            Finding(
                "modified",
                m.envelope_id,
                f"received_at changed from {timestamp_text(m.received_at)} (sealed in block "
                f"{block_no}) to {timestamp_text(row.received_at)}",
                block_no,
            )
        )
    else:
        report.findings.append(
            Finding(
                "deleted",
                m.envelope_id,
                f"sealed in block {block_no} (received_at "
                f"{timestamp_text(m.received_at)}), gone, and no logged prune removed it",
                block_no,
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


def check_consistent(
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
        columns, queryable_text = stored_columns(row.envelope_id, row.envelope_text)
    except InvalidEnvelope as exc:
        problems.append(f"envelope_text is no longer a valid envelope ({exc})")
    else:
        for name in REPORTING_COLUMNS:
            if getattr(row, name) != columns[name]:
                problems.append(
                    f"column {name} is {getattr(row, name)!r}; the envelope text gives "
                    f"{columns[name]!r}"
                )
        same = row.queryable_ok
        if same is None:
            same = _same_json(row.queryable, queryable_text)
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


# -- unsealed envelopes


def inserted_behind(row: Any, through: SealedThrough) -> Finding:
    """The finding for an unsealed row the sealed range has already passed."""
    return Finding(
        "inserted",
        row.envelope_id,
        f"received_at {timestamp_text(row.received_at)} is inside the sealed range "
        f"({through.describe()}) but it was never sealed: a forged row, or a late write "
        "from a clock behind by more than the seal margin (if genuine, "
        f"`recorder seal --adopt-late {row.envelope_id}` seals it)",
    )


def inserted_in_future(row: Any) -> Finding:
    return Finding(
        "inserted",
        row.envelope_id,
        f"received_at {timestamp_text(row.received_at)} is in the future: a forged "
        "row, or a writer whose clock runs ahead (it would be sealed as "
        "genuine once its time came)",
    )


def _check_unsealed_behind(
    conn: Connection, through: SealedThrough, report: VerifyReport, ledger: ErasureLedger
) -> None:
    condition = statements.sealed_through(conn.dialect, through.cutoff, through.last)
    stmt = statements.select_unsealed_behind(conn.dialect, condition, row_columns(conn))
    for row in conn.execute(stmt):
        report.unsealed += 1
        report.findings.append(inserted_behind(row, through))
        check_consistent(row, report, ledger)


def _check_beyond(
    conn: Connection,
    through: SealedThrough,
    report: VerifyReport,
    latest_plausible: dt.datetime,
    ledger: ErasureLedger,
) -> None:
    beyond = (
        ~statements.sealed_through(conn.dialect, through.cutoff, through.last)
        if through.started
        else None
    )
    after: tuple[dt.datetime, str] | None = None
    while True:
        stmt = sa.select(*row_columns(conn))
        if beyond is not None:
            stmt = stmt.where(beyond)
        if after is not None:
            stmt = stmt.where(statements.key_after(conn.dialect, *after))
        stmt = stmt.order_by(envelopes.c.received_at, statements.seal_id_key(conn.dialect)).limit(
            _FETCH_CHUNK
        )
        rows = conn.execute(stmt).all()
        for row in rows:
            report.unsealed += 1
            if row.received_at > latest_plausible:
                report.findings.append(inserted_in_future(row))
            check_consistent(row, report, ledger)
        if len(rows) < _FETCH_CHUNK:
            return
        after = (rows[-1].received_at, rows[-1].envelope_id)


def verify_lines(report: VerifyReport) -> list[str]:
    """One line per finding, then the summary."""
    return [finding.line() for finding in report.findings] + [report.summary()]
