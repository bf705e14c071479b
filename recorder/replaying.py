"""Replay: run a handler again over recorded envelopes, safely.

``recorder replay --handler module:function`` (and :func:`replay`, for tests)
calls the handler once per matching recorded envelope, oldest first, with the
envelope as stored (decoded from ``envelope_text``). Replay only reads the
``envelopes`` table: the stored text, its digest, its processing state and
live dedupe are never touched.

Every run is logged in ``replay_runs`` (who, when, the handler, the filters,
counts, failures) and each envelope it replayed in ``replayed_envelopes``.
A run that did not finish (interrupted, killed) is resumed by the next replay
with the same handler and filters: what that run already replayed, failures
included, is skipped.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import socket
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from recorder import statements
from recorder.audit import AuditRow, QuerySpec, query_envelopes
from recorder.engine import read_only, storage_errors
from recorder.envelope import decode_stored
from recorder.errors import ConfigurationError
from recorder.policies import default_actor
from recorder.wording import counted

UTC = dt.timezone.utc
MAX_ERROR_LENGTH = 2000

Handler = Callable[[dict[str, Any]], object]
"""Called with one stored envelope (a fresh dict each time); a raise is a failure."""


@dataclass(slots=True)
class ReplayReport:
    """What a replay run did (or, for a dry run, would do)."""

    run_id: int | None
    """The ``replay_runs`` row; for a dry run, the unfinished run it would resume, if any."""
    resumed: bool = False
    """This run continued an earlier one that had not finished."""
    skipped: int = 0
    """Envelopes the resumed run had already replayed."""
    replayed: int = 0
    """Envelopes handed to the handler by this invocation."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """``(envelope_id, error)`` of the envelopes whose handler raised."""
    would_replay: list[AuditRow] = field(default_factory=list)
    """A dry run: the envelopes that would be replayed, oldest first."""
    dry_run: bool = False

    def summary(self) -> str:
        if self.dry_run:
            return f"dry run: would replay {counted(len(self.would_replay), 'envelope')}"
        head = f"replay run #{self.run_id}"
        if self.resumed:
            head += f" (resumed; {counted(self.skipped, 'envelope')} already replayed)"
        failures = f", {counted(len(self.failed), 'failure')}" if self.failed else ""
        return f"{head}: replayed {counted(self.replayed, 'envelope')}{failures}"


def load_handler(spec: str) -> Handler:
    """``module:function`` (``package.module:object.method`` too) as a callable.

    Raises
    ------
    ConfigurationError
        The text is not ``module:function``, the module cannot be imported, or
        the name is not a callable in it.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"handler {spec!r} is not module:function")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure is the handler's, not ours
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no {attribute!r}") from None
    if not callable(target):
        raise ConfigurationError(f"handler {spec!r} is not callable")
    handler: Handler = target
    return handler


def replay(
    engine: Engine,
    handler: Handler,
    spec: QuerySpec | None = None,
    *,
    handler_name: str | None = None,
    dry_run: bool = False,
    actor: str | None = None,
    on_envelope: Callable[[AuditRow, str | None], None] | None = None,
) -> ReplayReport:
    """Call ``handler`` once per envelope ``spec`` selects, oldest first, logging the run.

    Parameters
    ----------
    engine
        The recorder's database (migrated: the replay log is part of the schema).
    handler
        Called with each stored envelope, decoded. An exception is recorded
        as that envelope's failure and the replay goes on.
    spec
        Which envelopes, as ``recorder query`` selects them (default: all; ``limit``
        included, counted over the whole run when it is resumed).
    handler_name
        How the handler is named in the log (default: its module and name);
        with the filters, it identifies the run a later replay resumes.
    dry_run
        List the envelopes that would be replayed; call nothing, log nothing.
    actor
        Who replays, for the log (default: the OS user).
    on_envelope
        Called after each envelope with the row and its error (None if it
        succeeded), for progress output.

    Raises
    ------
    StorageUnavailable
        The database failed; the run stays unfinished and the next replay
        with the same handler and filters resumes it.
    """
    spec = spec or QuerySpec()
    name = handler_name or _handler_name(handler)
    filters = _filters(spec)
    run_id = _unfinished_run(engine, name, filters)
    done = _replayed_ids(engine, run_id) if run_id is not None else set()
    if dry_run:
        report = ReplayReport(run_id=run_id, resumed=run_id is not None, dry_run=True)
        report.skipped = len(done)
        report.would_replay = list(_pending(engine, spec, done))
        return report
    report = ReplayReport(run_id=run_id, resumed=run_id is not None)
    if run_id is None:
        report.run_id = run_id = _start_run(engine, name, filters, actor)
    report.skipped = len(done)
    finished = False
    try:
        for row in _pending(engine, spec, done):
            error = _call(handler, row)
            _log_envelope(engine, run_id, row.envelope_id, error)
            report.replayed += 1
            if error is not None:
                report.failed.append((row.envelope_id, error))
            if on_envelope is not None:
                on_envelope(row, error)
        finished = True
    finally:
        _finish_run(engine, run_id, "completed" if finished else "interrupted")
    return report


def _pending(engine: Engine, spec: QuerySpec, done: set[str]) -> Iterator[AuditRow]:
    """The envelopes still to replay: ``spec``'s, minus those done, within its limit."""
    remaining = None if spec.limit is None else max(spec.limit - len(done), 0)
    unlimited = QuerySpec(**{**_spec_fields(spec), "limit": None})
    for row in query_envelopes(engine, unlimited):
        if remaining is not None and remaining <= 0:
            return
        if row.envelope_id in done:
            continue
        if remaining is not None:
            remaining -= 1
        yield row


def _call(handler: Handler, row: AuditRow) -> str | None:
    try:
        handler(decode_stored(row.envelope_text))
    except Exception as exc:  # the handler's failure, recorded; the replay goes on
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return text[:MAX_ERROR_LENGTH]
    return None


def _handler_name(handler: Handler) -> str:
    module = getattr(handler, "__module__", None) or "?"
    name = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    return f"{module}:{name}"


def _spec_fields(spec: QuerySpec) -> dict[str, Any]:
    return {
        "team_id": spec.team_id,
        "channel_id": spec.channel_id,
        "user_id": spec.user_id,
        "envelope_type": spec.envelope_type,
        "event_type": spec.event_type,
        "since": spec.since,
        "until": spec.until,
        "limit": spec.limit,
    }


def _filters(spec: QuerySpec) -> str:
    """The filters as canonical JSON: how a rerun finds the run it resumes."""
    fields = {
        k: (v.isoformat() if isinstance(v, dt.datetime) else v)
        for k, v in _spec_fields(spec).items()
        if v is not None
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def _unfinished_run(engine: Engine, handler: str, filters: str) -> int | None:
    with storage_errors("reading the replay log"), read_only(engine) as conn:
        found = conn.execute(statements.select_unfinished_replay(handler, filters)).scalar()
    return None if found is None else int(found)


def _replayed_ids(engine: Engine, run_id: int) -> set[str]:
    with storage_errors("reading the replay log"), read_only(engine) as conn:
        return set(conn.execute(statements.select_replayed_ids(run_id)).scalars())


def _start_run(engine: Engine, handler: str, filters: str, actor: str | None) -> int:
    values = {
        "started_at": dt.datetime.now(UTC),
        "status": "running",
        "actor": actor or default_actor(),
        "host": socket.gethostname(),
        "handler": handler,
        "filters": filters,
    }
    with storage_errors("starting a replay run"), engine.begin() as conn:
        return int(conn.execute(statements.insert_replay_run(values)).scalar_one())


def _log_envelope(engine: Engine, run_id: int, envelope_id: str, error: str | None) -> None:
    with storage_errors(f"logging the replay of {envelope_id}"), engine.begin() as conn:
        conn.execute(
            statements.insert_replayed_envelope(
                run_id=run_id,
                envelope_id=envelope_id,
                replayed_at=dt.datetime.now(UTC),
                error=error,
            )
        )


def _finish_run(engine: Engine, run_id: int, status: str) -> None:
    with storage_errors("finishing the replay run"), engine.begin() as conn:
        conn.execute(statements.finish_replay_run(run_id, status, dt.datetime.now(UTC)))
