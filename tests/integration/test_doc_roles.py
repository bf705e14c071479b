"""The PostgreSQL role blocks of README.md and docs/security.md, run exactly as written.

They grant to the role names the pages use (``recorder_bot`` ...), on the
test server. Roles belong to the whole server, not to one database, so these
tests take turns across processes and leave none of those roles behind.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.integration.doc_snippets import block, sh
from tests.integration.test_doc_walkthroughs import message, record_at

README_ROLES = "recorder db grant --writer recorder_bot --reader recorder_au"
SECURITY_ROLES = "psql -c \"CREATE ROLE recorder_bot LOGIN PASSWORD '...'\""
SECURITY_AUDITOR = "CREATE ROLE recorder_auditor NOLOGIN;"

#: The blocks this module runs: (page, first line).
RUNS = [
    ("README.md", README_ROLES),
    ("docs/security.md", SECURITY_ROLES),
    ("docs/security.md", SECURITY_AUDITOR),
]


ROLE_NAMES = (
    "recorder_bot",
    "recorder_audit",
    "recorder_prune",
    "recorder_seal",
    "recorder_erase",
    "recorder_auditor",
)


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def doc_roles(pg_server_url: str, pg_url: str) -> Iterator[None]:
    """The role names the pages use, on the test server, for one test at a time.

    Roles belong to the whole server, not to the test's database, so tests in
    parallel processes take turns (an advisory lock in the server's database)
    and every test starts and ends with none of these roles.
    """
    with psycopg.connect(_libpq(pg_server_url), autocommit=True) as lock:
        lock.execute("SELECT pg_advisory_lock(hashtext('recorder doc roles'))")
        _drop_roles(pg_url)
        try:
            yield
        finally:
            _drop_roles(pg_url)
            lock.execute("SELECT pg_advisory_unlock(hashtext('recorder doc roles'))")


def _drop_roles(pg_url: str) -> None:
    with psycopg.connect(_libpq(pg_url), autocommit=True) as conn:
        for name in ROLE_NAMES:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            if exists:
                conn.execute(f'DROP OWNED BY "{name}"')
                conn.execute(f'DROP ROLE "{name}"')


def create_roles(pg_url: str, *names: str) -> None:
    with psycopg.connect(_libpq(pg_url), autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE ROLE "{name}" LOGIN')


def privileges(pg_url: str, role: str) -> set[str]:
    with psycopg.connect(_libpq(pg_url)) as conn:
        rows = conn.execute(
            "SELECT privilege_type FROM information_schema.role_table_grants"
            " WHERE grantee = %s AND table_name = 'envelopes'",
            (role,),
        ).fetchall()
    return {row[0] for row in rows}


def psql_env(pg_url: str) -> dict[str, str]:
    """libpq's variables for ``psql`` in a block: the test's database."""
    parts = make_url(pg_url)
    return {
        "PGHOST": parts.host or "127.0.0.1",
        "PGPORT": str(parts.port or 5432),
        "PGUSER": parts.username or "postgres",
        "PGDATABASE": parts.database or "postgres",
        **({"PGPASSWORD": parts.password} if parts.password else {}),
    }


def test_readme_roles_seal_and_verify_run_as_written(
    pg_url: str, doc_roles: None, tmp_path: Path
) -> None:
    create_roles(pg_url, "recorder_bot", "recorder_audit", "recorder_prune")
    record_at(
        pg_url,
        dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1),
        [message(n) for n in range(5)],
    )
    result = sh(block("README.md", "sh", README_ROLES), tmp_path, pg_url)
    assert result.returncode == 0, result.stderr
    assert "sealed 5 envelopes" in result.stdout
    (anchor,) = (tmp_path / "anchor").read_text().split()
    assert re.fullmatch(r"[0-9a-f]{64}", anchor)
    assert privileges(pg_url, "recorder_audit") == {"SELECT"}
    assert "INSERT" in privileges(pg_url, "recorder_bot")


def test_security_roles_blocks_run_as_written(pg_url: str, doc_roles: None, tmp_path: Path) -> None:
    # "# and the others": the page leaves creating the other four roles to the reader.
    create_roles(pg_url, "recorder_audit", "recorder_prune", "recorder_seal", "recorder_erase")
    text = block("docs/security.md", "sh", SECURITY_ROLES)
    result = sh(text, tmp_path, pg_url, **psql_env(pg_url))
    assert result.returncode == 0, result.stderr
    assert (
        "GRANT UPDATE (status, completed_at, attempts, claimed_at)" in result.stdout
    )  # --print-sql
    assert "INSERT" in privileges(pg_url, "recorder_bot")
    assert privileges(pg_url, "recorder_audit") == {"SELECT"}

    sql = block("docs/security.md", "sql", SECURITY_AUDITOR)
    audited = subprocess.run(
        ["psql", "-v", "ON_ERROR_STOP=1", "-c", sql],
        env={**os.environ, **psql_env(pg_url)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert audited.returncode == 0, audited.stderr
    assert privileges(pg_url, "recorder_auditor") == {"SELECT"}
