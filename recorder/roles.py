"""Least-privilege PostgreSQL roles for the bot, auditors, the pruner and the sealer.

``recorder db grant`` runs :func:`grant_statements`; ``--print-sql`` shows them
instead, for a DBA to review or apply by hand. The roles must exist already
(``CREATE ROLE bot LOGIN PASSWORD ...``): passwords are the DBA's business,
never the recorder's. The statements revoke everything on the recorder's
tables from each role first, so running them again gives the same result.

What each role may do:

writer (the bot)
    ``SELECT`` and ``INSERT`` on ``envelopes``, and ``UPDATE`` of the
    processing-state columns only (``status``, ``completed_at``,
    ``attempts``, ``claimed_at``). It cannot change a stored envelope or its
    reporting columns, cannot delete, and cannot touch retention, prune or
    seal tables. (``SELECT`` is needed by ``seen``, ``pending`` and recovery.)
reader (auditors, reports, ``recorder verify``)
    ``SELECT`` on every recorder table, nothing else.
pruner (``recorder prune``)
    ``EXECUTE`` on the database-side prune functions (``recorder_prune_*``,
    installed by migrations 0007 to 0009, owned by the schema owner, ``SECURITY
    DEFINER``) and ``SELECT`` on policies, holds and the prune log; no
    ``DELETE`` on ``envelopes``, no write on any log (``SELECT`` on
    ``envelopes`` and writes on the archive manifest serve ``prune
    --archive``). The functions apply the retention policies and legal holds
    in the database and log each removal, so a stolen pruner credential can
    remove only what the policies already allow.
sealer (``recorder seal``), optional
    Reads envelopes and the logs a seal covers (prune runs and their rows,
    erasures, the archive manifest), inserts into ``seal_blocks``,
    ``sealed_envelopes`` and ``sealed_log_entries``.
eraser (``recorder erase``)
    No privilege on ``envelopes`` at all: it may only ``EXECUTE`` the erasure
    functions (:data:`ERASER_FUNCTIONS`, ``SECURITY DEFINER``, created by
    migration ``0005``), which find the user's envelopes, skip held ones,
    write tombstones and scrubs and log each change themselves. It reads the
    erasure log and the legal holds (a spool's envelopes are checked against
    them). So it can erase only what an ``erasures`` row it started names,
    always logged, and nothing else; writers, readers and pruners cannot
    call the functions (``EXECUTE`` is revoked from ``PUBLIC``).

A deferred constraint trigger (also from migration 0007, every name
schema-qualified and ``search_path`` pinned) still refuses, at commit, any
deletion by a role other than the owner that has no ``pruned_envelopes`` row:
defence in depth should a DBA ever grant ``DELETE`` by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recorder.engine import is_sqlite, storage_errors
from recorder.errors import ConfigurationError
from recorder.schema import (
    archive_files,
    change_log,
    envelopes,
    erased_envelopes,
    erasures,
    legal_holds,
    prune_runs,
    pruned_envelopes,
    retention_policies,
    seal_blocks,
    sealed_envelopes,
    sealed_log_entries,
)
from recorder.statements import PRUNER_FUNCTIONS

#: The processing-state columns the writer may update; nothing else.
WRITER_UPDATABLE_COLUMNS = ("status", "completed_at", "attempts", "claimed_at")
ALEMBIC_VERSION_TABLE = "alembic_version"
DELETE_GUARD_FUNCTION = "recorder_deletion_is_logged"
DELETE_GUARD_TRIGGER = "envelopes_deletion_is_logged"
#: Functions no role is granted: what the pruner's functions call inside.
INTERNAL_FUNCTIONS = (
    "recorder_prune_check_run(integer, boolean)",
    "recorder_prune_where(integer, text)",
    "recorder_prune_requires_archive(integer, text)",
    "recorder_prune_remove(integer, text, text[])",
)

RECORDER_TABLES = (
    envelopes.name,
    retention_policies.name,
    legal_holds.name,
    prune_runs.name,
    pruned_envelopes.name,
    change_log.name,
    seal_blocks.name,
    sealed_envelopes.name,
    sealed_log_entries.name,
    erasures.name,
    erased_envelopes.name,
    archive_files.name,
)
#: The erasure functions the eraser may call (signatures as PostgreSQL names them).
ERASER_FUNCTIONS = (
    "recorder_erasure_start(text, text, text, text, text, text)",
    "recorder_erasure_plan(text, text, boolean, boolean)",
    "recorder_erasure_step(integer, integer)",
    "recorder_erasure_resume(integer, integer, text)",
    "recorder_erasure_log_spooled(integer, text, timestamptz, text, text, text, jsonb, text, text)",
    "recorder_erasure_log_archived(integer, text, text, bigint, text, jsonb)",
)


@dataclass(frozen=True, slots=True)
class RoleNames:
    """Which existing PostgreSQL role plays which part; None leaves a part unassigned."""

    writer: str | None = None
    reader: str | None = None
    pruner: str | None = None
    sealer: str | None = None
    eraser: str | None = None

    def assigned(self) -> dict[str, str]:
        parts = {
            "writer": self.writer,
            "reader": self.reader,
            "pruner": self.pruner,
            "sealer": self.sealer,
            "eraser": self.eraser,
        }
        return {part: name for part, name in parts.items() if name}


def quote_identifier(name: str) -> str:
    """``name`` as a double-quoted SQL identifier (any role name is safe)."""
    if not name or "\x00" in name:
        raise ConfigurationError(f"not a usable role name: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def grant_statements(roles: RoleNames, *, schema: str = "public") -> list[str]:
    """The SQL ``recorder db grant`` runs, in order, one statement per item.

    Raises
    ------
    ConfigurationError
        No role was given, or a name cannot be a role name.
    """
    assigned = roles.assigned()
    if not assigned:
        raise ConfigurationError(
            "name at least one role: --writer, --reader, --pruner, --sealer, --eraser"
        )
    q = {part: quote_identifier(name) for part, name in assigned.items()}
    sch = quote_identifier(schema)
    every = ", ".join([*RECORDER_TABLES, ALEMBIC_VERSION_TABLE])
    sql: list[str] = []
    prune_functions = ", ".join(f"{sch}.{f}" for f in PRUNER_FUNCTIONS)
    functions = ", ".join(f"{sch}.{f}" for f in (*PRUNER_FUNCTIONS, *ERASER_FUNCTIONS))
    for part, role in q.items():
        sql.append(f"-- {part}: {assigned[part]}")
        sql.append(f"REVOKE ALL ON TABLE {every} FROM {role}")
        sql.append(f"REVOKE ALL ON FUNCTION {functions} FROM {role}")
        sql.append(f"GRANT USAGE ON SCHEMA {sch} TO {role}")
    if "writer" in q:
        w = q["writer"]
        sql += [
            "-- writer: insert envelopes, update processing state only, never delete",
            f"GRANT SELECT, INSERT ON TABLE {envelopes.name} TO {w}",
            f"GRANT UPDATE ({', '.join(WRITER_UPDATABLE_COLUMNS)}) ON TABLE {envelopes.name} TO {w}",
        ]
    if "reader" in q:
        sql += [
            "-- reader: select only",
            f"GRANT SELECT ON TABLE {every} TO {q['reader']}",
        ]
    if "pruner" in q:
        p = q["pruner"]
        sql += [
            "-- pruner: only through the prune functions, which apply policies and holds",
            f"GRANT EXECUTE ON FUNCTION {prune_functions} TO {p}",
            "-- reads the rules and the prune log (never writes them)",
            f"GRANT SELECT ON TABLE {retention_policies.name}, {legal_holds.name}, "
            f"{prune_runs.name}, {pruned_envelopes.name} TO {p}",
            "-- (prune --archive: reads the rows it writes to files, before the functions",
            "-- delete them, and keeps the manifest of those files)",
            f"GRANT SELECT ON TABLE {envelopes.name} TO {p}",
            f"GRANT SELECT, INSERT, UPDATE ON TABLE {archive_files.name} TO {p}",
        ]
    if "sealer" in q:
        s = q["sealer"]
        sql += [
            "-- sealer: read envelopes and the logs it seals, append to the seal chain",
            f"GRANT SELECT ON TABLE {envelopes.name}, {prune_runs.name}, "
            f"{pruned_envelopes.name}, {erasures.name}, {erased_envelopes.name}, "
            f"{archive_files.name} TO {s}",
            f"GRANT SELECT, INSERT ON TABLE {seal_blocks.name}, {sealed_envelopes.name}, "
            f"{sealed_log_entries.name} TO {s}",
        ]
    if "eraser" in q:
        e = q["eraser"]
        sql += [
            "-- eraser: the erasure functions only (they log every change); reads the log",
            *(f"GRANT EXECUTE ON FUNCTION {sch}.{f} TO {e}" for f in ERASER_FUNCTIONS),
            f"GRANT SELECT ON TABLE {erasures.name}, {erased_envelopes.name} TO {e}",
            f"GRANT SELECT ON TABLE {legal_holds.name}, {archive_files.name} TO {e}",
        ]
    return sql


def render_sql(statements: Sequence[str]) -> str:
    """Statements as a script: comments as they are, each statement ended by ``;``."""
    return "\n".join(s if s.startswith("--") else f"{s};" for s in statements) + "\n"


def grant(engine: Engine, roles: RoleNames, *, schema: str = "public") -> list[str]:
    """Apply :func:`grant_statements` in one transaction; return what ran.

    Run it as the owner of the recorder's tables (whoever ran ``recorder db
    upgrade``), after every migration.

    Raises
    ------
    ConfigurationError
        The database is not PostgreSQL, or a named role does not exist.
    StorageUnavailable
        The database refused (for example: not the tables' owner); nothing changed.
    """
    if is_sqlite(engine):
        raise ConfigurationError(
            "roles are a PostgreSQL feature; protect an SQLite database with file permissions"
        )
    statements = grant_statements(roles, schema=schema)
    names = sorted(set(roles.assigned().values()))
    with storage_errors("granting privileges"), engine.begin() as conn:
        found = set(
            conn.execute(
                sa.text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:names)"),
                {"names": names},
            ).scalars()
        )
        missing = [name for name in names if name not in found]
        if missing:
            raise ConfigurationError(
                f"no such role: {', '.join(missing)}; create it first, e.g. "
                f"CREATE ROLE {quote_identifier(missing[0])} LOGIN PASSWORD '...'"
            )
        # The DB-API cursor with no parameters: nothing here is a placeholder.
        cursor = conn.connection.cursor()
        try:
            for statement in statements:
                if not statement.startswith("--"):
                    cursor.execute(statement)
        finally:
            cursor.close()
    return statements
