"""What ``recorder verify`` accepts of an erasure, and how it catches a forged one.

An erased or scrubbed envelope no longer has the text its sealed digest (and
its own ``envelope_sha256``, which keeps the original's) was computed from.
:class:`ErasureLedger` holds the erasure log's finished entries, per
envelope, oldest first; a change from digest *A* to digest *B* is accepted
exactly when those entries lead from *A* to *B* (each entry's original is the
previous one's replacement). Anything else stays a ``modified`` finding.

:meth:`ErasureLedger.findings` then checks the log itself against the
envelopes (independently of how verify walked them), and reports as
``erasure`` findings:

* an entry whose envelope's text is not the entry's replacement (the
  erasure never touched it, or the replacement was forged);
* entries of one envelope that do not chain;
* an erased envelope whose text is not a tombstone of that very entry, or a
  scrubbed one that still mentions the user;
* an entry naming an envelope that is neither there nor removed by a logged
  prune.

Entries written by someone able to write both the envelopes and the log
(the table owner) can still explain away a change: on PostgreSQL only the
erasure functions write the log, and once sealed the log is covered by the
chain like the envelopes.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recorder.schema import envelopes, erased_envelopes, erasures, pruned_envelopes
from recorder.tombstone import mentions, text_sha256, tombstone_of

_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One finished ``erased_envelopes`` row."""

    erasure_id: int
    envelope_id: str
    action: str
    original_sha256: str
    replacement_sha256: str
    spooled: bool = False
    """Erased in a spool file: absent from the database until the spool drains."""


@dataclass(slots=True)
class ErasureLedger:
    """The erasure log as verify needs it: finished entries per envelope, oldest first."""

    entries: dict[str, list[LedgerEntry]] = field(default_factory=dict)
    users: dict[int, str] = field(default_factory=dict)
    """Erasure id -> the user it erased."""

    @classmethod
    def load(cls, conn: Connection, states: Sequence[str] = ("done", "spooled")) -> ErasureLedger:
        """The entries in ``states`` (``archived`` too for the cold archive's own check)."""
        ledger = cls()
        q = erased_envelopes.c
        stmt = (
            sa.select(
                q.erasure_id,
                q.envelope_id,
                q.action,
                q.original_sha256,
                q.replacement_sha256,
                q.state,
            )
            .where(q.state.in_(tuple(states)))
            .order_by(q.envelope_id, q.erasure_id)
        )
        for row in conn.execute(stmt):
            ledger.entries.setdefault(row.envelope_id, []).append(
                LedgerEntry(
                    row.erasure_id,
                    row.envelope_id,
                    row.action,
                    row.original_sha256,
                    row.replacement_sha256 or "",
                    row.state == "spooled",
                )
            )
        ledger.users = {
            r.id: r.user_id for r in conn.execute(sa.select(erasures.c.id, erasures.c.user_id))
        }
        return ledger

    def __len__(self) -> int:
        return len(self.entries)

    def accounts_for(self, envelope_id: str, before: str, after: str) -> bool:
        """Whether logged erasures turned the text with digest ``before`` into ``after``."""
        chain = self.entries.get(envelope_id)
        if not chain:
            return False
        for start, entry in enumerate(chain):
            if entry.original_sha256 != before:
                continue
            current = entry.replacement_sha256
            for following in chain[start + 1 :]:
                if current == after or following.original_sha256 != current:
                    break
                current = following.replacement_sha256
            if current == after:
                return True
        return False

    def findings(self, conn: Connection) -> Iterator[tuple[str, str]]:
        """``(envelope_id, problem)`` for every entry the envelopes do not bear out."""
        ids = sorted(self.entries)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            rows = {
                r.envelope_id: r
                for r in conn.execute(
                    sa.select(
                        envelopes.c.envelope_id, envelopes.c.envelope_text, envelopes.c.user_id
                    ).where(envelopes.c.envelope_id.in_(chunk))
                )
            }
            missing = [i for i in chunk if i not in rows]
            pruned = _pruned_ids(conn, missing) if missing else set()
            for envelope_id in chunk:
                row = rows.get(envelope_id)
                if row is None:
                    if envelope_id not in pruned and not self.entries[envelope_id][-1].spooled:
                        yield (
                            envelope_id,
                            (
                                "the erasure log names it, but it is not in the database and no "
                                "logged prune removed it"
                            ),
                        )
                    continue
                yield from ((envelope_id, p) for p in self._row_problems(row))

    def _row_problems(self, row: Any) -> list[str]:
        chain = self.entries[row.envelope_id]
        problems = []
        for before, after in itertools.pairwise(chain):
            if after.original_sha256 != before.replacement_sha256:
                problems.append(
                    f"erasure {after.erasure_id} says it replaced digest {after.original_sha256}, "
                    f"but erasure {before.erasure_id} left {before.replacement_sha256}"
                )
        last = chain[-1]
        actual = text_sha256(row.envelope_text)
        if actual != last.replacement_sha256:
            return [
                *problems,
                f"erasure {last.erasure_id} logged replacement digest {last.replacement_sha256}, "
                f"but the text's digest is {actual}: a forged erasure log entry, or the text "
                "changed after the erasure",
            ]
        problems += self._content_problems(row, chain)
        return problems

    def _content_problems(self, row: Any, chain: Sequence[LedgerEntry]) -> list[str]:
        try:
            data = json.loads(row.envelope_text)
        except ValueError:
            return ["its text after erasure is not JSON"]
        erased = [e for e in chain if e.action == "erase"]
        problems = []
        if erased:
            marker = tombstone_of(data) if isinstance(data, dict) else None
            entry = erased[-1]
            if marker is None:
                problems.append(
                    f"erasure {entry.erasure_id} erased it, but its text is no tombstone"
                )
            elif (
                marker.get("erasure_id") != entry.erasure_id
                or marker.get("original_sha256") != entry.original_sha256
            ):
                problems.append(
                    f"its tombstone names erasure {marker.get('erasure_id')} and digest "
                    f"{marker.get('original_sha256')}, not the logged erasure {entry.erasure_id} "
                    f"of {entry.original_sha256}"
                )
            if row.user_id is not None:
                problems.append("erased, but its user_id column is set")
        for entry in chain:
            user = self.users.get(entry.erasure_id)
            if user is None:
                problems.append(
                    f"erasure {entry.erasure_id} is logged for it but has no erasures row"
                )
            elif entry.action == "scrub" and not erased and mentions(row.envelope_text, user):
                problems.append(
                    f"erasure {entry.erasure_id} scrubbed it, but it still mentions {user}"
                )
        return problems


def _pruned_ids(conn: Connection, ids: Sequence[str]) -> set[str]:
    stmt = sa.select(pruned_envelopes.c.envelope_id).where(
        pruned_envelopes.c.envelope_id.in_(list(ids))
    )
    return set(conn.execute(stmt).scalars())
