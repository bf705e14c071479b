"""Slack over HTTP: record each signed request before answering it, once per delivery.

Framework-agnostic: given a request's headers and its raw body,
:meth:`HttpRecorder.decide` verifies Slack's signature (slack_sdk's
``SignatureVerifier``), records the request through the buffer's own parser,
limits and redaction, and returns a :class:`Decision`: whether to run the
app's handler, and what to answer. The Bolt middleware
(:mod:`recorder.slack.bolt_http`) is a thin layer over the same decision.

How a request maps to the ``envelopes`` table
---------------------------------------------
A request is stored as the Socket Mode envelope Slack would have sent for
the same delivery, so ``query``, ``stats``, ``report``, retention, holds,
``seal`` and ``verify`` treat both modes alike:

* a JSON ``event_callback`` is ``events_api``, keyed by its ``event_id``
  (so every retry is a duplicate);
* a form with ``command`` is ``slash_commands``, keyed
  ``slash_commands:`` + the SHA-256 of the signed base string
  ``v0:{timestamp}:{body}`` (the same for every copy of one delivery);
* a form with ``payload`` is ``interactive``, keyed ``interactive:`` + the
  same digest.

``payload`` is the body itself for events (its JSON text spliced in as Slack
sent it), the form fields as a JSON object of strings for slash commands
(what Socket Mode delivers), and the JSON text of the ``payload`` form
field for interactions. ``retry_attempt`` and ``retry_reason`` come from
``X-Slack-Retry-Num`` and ``X-Slack-Retry-Reason`` (0 and ``""`` on a first
event delivery, as in Socket Mode); ``http.request_timestamp`` keeps
``X-Slack-Request-Timestamp``. The signature header is never stored. The
envelope text then goes through ``record`` like any other: the default
redaction masks ``payload.token`` and the response URLs, and
``envelope_text`` / ``envelope_sha256`` cover the result.

``url_verification`` and ``ssl_check`` requests are answered, not recorded;
so are other JSON callbacks without an event (``app_rate_limited``).

Over 450 lines: the request-to-envelope mapping for events, commands and
interactions is one decision, documented here beside its code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl

from recorder.adapter import EventBufferAdapter
from recorder.envelope import decode_json_object
from recorder.errors import ConfigurationError, InvalidEnvelope, MissingDependency

try:
    from slack_sdk.signature import SignatureVerifier
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependency("slack_sdk", "http") from exc

from recorder.slack.background import Maintenance
from recorder.slack.metrics import Metrics
from recorder.slack.options import DEFAULT_SPOOL_PATH, OnStorageError, RecorderOptions
from recorder.slack.recording import EnvelopeRecorder, Outcome, RecorderFront

__all__ = [
    "Decision",
    "HttpEnvelope",
    "HttpRecorder",
    "Passthrough",
    "envelope_of",
    "header_map",
]

logger = logging.getLogger("recorder.http")

#: More form fields than this is not a Slack request.
MAX_FORM_FIELDS = 200
#: What a refused request is answered with; Slack need not retry what will fail again.
NO_RETRY: Mapping[str, str] = MappingProxyType({"X-Slack-No-Retry": "1"})

# One encoder, made once: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

Headers = Mapping[str, str] | Mapping[str, Sequence[str]] | Iterable[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class HttpEnvelope:
    """A Slack request as the envelope it is recorded as."""

    envelope_id: str
    envelope_type: str
    text: str
    """The envelope's JSON text, before the buffer's redaction."""
    frame: dict[str, Any]
    """The same envelope, decoded (for dedupe keys and logs)."""


@dataclass(frozen=True, slots=True)
class Passthrough:
    """A request that is not recorded: Slack's handshakes, notices without an event."""

    reason: str
    status: int = 200
    body: str = ""
    content_type: str = "text/plain"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one HTTP request.

    Run the app's handler only when :attr:`dispatch` is true; otherwise
    answer :attr:`status` with :attr:`body` and :attr:`headers` at once.
    After a dispatched handler, call :meth:`HttpRecorder.finish`.
    """

    dispatch: bool
    status: int
    body: str = ""
    content_type: str = "text/plain"
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    envelope_id: str | None = None
    """The recorded envelope's id; None for requests that are not recorded."""
    outcome: Outcome | None = None
    """What the recorder decided; None when nothing was recorded."""
    reason: str = ""
    """Why, in words, for logs and for the answer's body on a refusal."""


def header_map(headers: Headers) -> dict[str, str]:
    """Lower-cased header names, each with its first value.

    Takes what the frameworks give: Bolt's ``dict[str, list[str]]``, a plain
    ``dict[str, str]``, Flask's or Starlette's header objects.
    """
    # Werkzeug's header objects are not Mappings, but they, Starlette's and
    # plain dicts all have items(); an iterable of pairs is taken as is.
    items: Iterable[tuple[str, Any]] = headers.items() if hasattr(headers, "items") else headers
    result: dict[str, str] = {}
    for name, value in items:
        key = str(name).lower()
        if key in result:
            continue
        if isinstance(value, str):
            result[key] = value
        elif isinstance(value, bytes):
            result[key] = value.decode("latin-1")
        elif isinstance(value, Sequence) and value:
            result[key] = str(value[0])
    return result


def body_text(body: str | bytes) -> str:
    """The body as text; Slack sends UTF-8."""
    if isinstance(body, str):
        return body
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEnvelope(
            f"request body is not UTF-8: {exc.reason} at byte {exc.start}"
        ) from exc


def envelope_of(headers: Mapping[str, str], body: str) -> HttpEnvelope | Passthrough:
    """Map a (verified) request to the envelope it is recorded as. Pure.

    ``headers`` as :func:`header_map` returns them.

    Raises
    ------
    InvalidEnvelope
        The body is not a Slack Events API, slash command or interaction
        request (or an event callback has no ``event_id``).
    """
    if body.lstrip().startswith("{"):
        return _json_request(headers, body)
    fields = _form_fields(body)
    if "ssl_check" in fields:
        return Passthrough("ssl_check")
    if "payload" in fields:
        payload_text = fields["payload"]
        payload = decode_json_object(payload_text)
        key = "interactive:" + _delivery_digest(headers, body)
        return _envelope(headers, key, "interactive", payload_text, payload, retry_defaults=False)
    if "command" in fields:
        key = "slash_commands:" + _delivery_digest(headers, body)
        payload_text = _ENCODER.encode(fields)
        return _envelope(
            headers, key, "slash_commands", payload_text, dict(fields), retry_defaults=False
        )
    raise InvalidEnvelope("request is not a Slack event, slash command or interaction")


def _json_request(headers: Mapping[str, str], body: str) -> HttpEnvelope | Passthrough:
    data = decode_json_object(body)
    kind = data.get("type")
    if kind == "url_verification":
        challenge = data.get("challenge")
        return Passthrough("url_verification", body=challenge if isinstance(challenge, str) else "")
    if kind != "event_callback":
        return Passthrough(f"{kind} callback" if isinstance(kind, str) else "JSON callback")
    event_id = data.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise InvalidEnvelope("event callback has no event_id")
    return _envelope(headers, event_id, "events_api", body, data, retry_defaults=True)


def _form_fields(body: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            body, keep_blank_values=True, strict_parsing=True, max_num_fields=MAX_FORM_FIELDS
        )
    except ValueError as exc:
        raise InvalidEnvelope(f"request body is not JSON or a form: {exc}") from exc
    fields: dict[str, str] = {}
    for name, value in pairs:
        # A repeated field is as ambiguous as a repeated JSON key: refused the same way.
        if name in fields:
            raise InvalidEnvelope(f"request has a duplicate form field: {name!r} appears twice")
        fields[name] = value
    return fields


def _delivery_digest(headers: Mapping[str, str], body: str) -> str:
    # The signed base string: the same for every copy of one delivery (a
    # replay included), different for every other request.
    timestamp = headers.get("x-slack-request-timestamp", "")
    return hashlib.sha256(f"v0:{timestamp}:{body}".encode()).hexdigest()


def _retry(headers: Mapping[str, str], defaults: bool) -> tuple[int | None, str | None]:
    raw_num = headers.get("x-slack-retry-num")
    attempt = int(raw_num) if raw_num is not None and raw_num.strip().isdigit() else None
    reason = headers.get("x-slack-retry-reason")
    if defaults:
        return (attempt if attempt is not None else 0), (reason if reason is not None else "")
    return attempt, reason


def _envelope(
    headers: Mapping[str, str],
    envelope_id: str,
    envelope_type: str,
    payload_text: str,
    payload: dict[str, Any],
    *,
    retry_defaults: bool,
) -> HttpEnvelope:
    frame: dict[str, Any] = {"envelope_id": envelope_id, "type": envelope_type, "payload": payload}
    tail: dict[str, Any] = {}
    attempt, reason = _retry(headers, retry_defaults)
    if attempt is not None:
        tail["retry_attempt"] = attempt
    if reason is not None:
        tail["retry_reason"] = reason
    timestamp = headers.get("x-slack-request-timestamp")
    if timestamp is not None:
        tail["http"] = {"request_timestamp": timestamp}
    frame.update(tail)
    # The payload's text is spliced in as received (it was decoded strictly
    # above, so it is one JSON value), not re-serialised: with redaction off,
    # envelope_text holds Slack's bytes exactly.
    parts = [
        '{"envelope_id":',
        _ENCODER.encode(envelope_id),
        ',"type":',
        _ENCODER.encode(envelope_type),
        ',"payload":',
        payload_text,
    ]
    if tail:
        parts += [",", _ENCODER.encode(tail)[1:]]
    else:
        parts.append("}")
    return HttpEnvelope(envelope_id, envelope_type, "".join(parts), frame)


def resolve_buffer(buffer: EventBufferAdapter | str | None) -> EventBufferAdapter:
    """``buffer`` itself; a URL or ``None`` (the configured database): see
    :func:`recorder.adapters.open_buffer`."""
    if buffer is not None and not isinstance(buffer, str):
        return buffer
    from recorder.adapters import open_buffer

    return open_buffer(buffer)


class HttpRecorder(RecorderFront):
    """Verify, record, then answer: Slack's HTTP requests handled once per delivery.

    Parameters
    ----------
    buffer
        Where requests are recorded: an adapter, a database URL, or ``None``
        for ``RECORDER_DATABASE_URL`` (default ``sqlite:///recorder.db``).
    signing_secret
        The app's signing secret. :meth:`decide` refuses (401) a request
        whose signature or timestamp does not verify, and stores nothing.
    on_storage_error
        When the database does not answer: ``"spool"`` (default) records the
        request in a local SQLite file, answers 200 and dispatches;
        ``"nack"`` answers 503 and dispatches nothing, so Slack retries an
        event (a slash command or interaction shows the user an error);
        ``"raise"`` lets :class:`~recorder.errors.StorageUnavailable` out.
        An unrecorded request is never dispatched.
    spool_path, metrics
        As for :class:`~recorder.slack.RecordingListener`.

    A background thread drains the spool and writes completions; it starts
    with the first request and stops at :meth:`close`. HTTP mode re-runs
    nothing: Slack already has its answer (see docs/http.md).
    """

    def __init__(
        self,
        buffer: EventBufferAdapter | str | None = None,
        *,
        signing_secret: str | None = None,
        on_storage_error: OnStorageError = "spool",
        spool_path: str | Path = DEFAULT_SPOOL_PATH,
        metrics: Metrics | bool | None = None,
    ) -> None:
        self._verifier: SignatureVerifier | None = None
        if signing_secret is not None:
            try:
                self._verifier = SignatureVerifier(signing_secret)
            except ValueError as exc:
                raise ConfigurationError(f"signing_secret: {exc}") from None
        # Recovery re-dispatches Socket Mode requests; over HTTP there is no
        # one to answer, so pending envelopes are not claimed from here.
        self.recorder = EnvelopeRecorder(
            resolve_buffer(buffer),
            RecorderOptions(
                on_storage_error=on_storage_error,
                spool_path=spool_path,
                metrics=metrics,
                recover=False,
            ),
        )
        self._maintenance = Maintenance(self.recorder, _no_claims)

    # -- the request path

    def decide(self, headers: Headers, body: str | bytes) -> Decision:
        """Verify the signature, then record: what to do with this request.

        Raises
        ------
        ConfigurationError
            The recorder has no ``signing_secret``.
        StorageUnavailable
            Only under the ``"raise"`` policy.
        """
        if self._verifier is None:
            raise ConfigurationError("HttpRecorder needs signing_secret= to verify requests")
        names = header_map(headers)
        try:
            text = body_text(body)
        except InvalidEnvelope:
            return _refused(401, "invalid request")
        if not self._valid(names, text):
            logger.info("refused a request with an invalid signature or a stale timestamp")
            return _refused(401, "invalid request")
        return self._record(names, text)

    def decide_verified(self, headers: Headers, body: str | bytes) -> Decision:
        """:meth:`decide` for a request already verified (by Bolt's RequestVerification)."""
        names = header_map(headers)
        try:
            text = body_text(body)
        except InvalidEnvelope as exc:
            return _rejected(str(exc))
        return self._record(names, text)

    def _valid(self, headers: Mapping[str, str], body: str) -> bool:
        assert self._verifier is not None
        timestamp = headers.get("x-slack-request-timestamp")
        signature = headers.get("x-slack-signature")
        if timestamp is None or signature is None or not timestamp.strip().isdigit():
            return False
        return self._verifier.is_valid(body, timestamp, signature)

    def _record(self, headers: Mapping[str, str], body: str) -> Decision:
        self._ensure_started()
        received = time.perf_counter()
        try:
            envelope = envelope_of(headers, body)
        except InvalidEnvelope as exc:
            return _rejected(str(exc))
        if isinstance(envelope, Passthrough):
            return Decision(
                dispatch=False,
                status=envelope.status,
                body=envelope.body,
                content_type=envelope.content_type,
                reason=envelope.reason,
            )
        outcome = self.recorder.record(envelope.envelope_id, envelope.text, envelope.frame)
        decision = _decision(envelope.envelope_id, outcome)
        if outcome is Outcome.DUPLICATE:
            self.recorder.acked(time.perf_counter() - received)
        return decision

    def finish(self, decision: Decision, ok: bool = True) -> None:
        """The handler of a dispatched request ended; mark its envelope complete on success."""
        if decision.dispatch and decision.envelope_id is not None:
            self.recorder.finish(decision.envelope_id, ok)

    def answered(self, seconds: float) -> None:
        """Report how long the answer took (the ack-latency metric)."""
        self.recorder.acked(seconds)

    # -- background work

    def _ensure_started(self) -> None:
        if not self._maintenance.started:
            self._maintenance.start()

    def close(self) -> None:
        """Stop the background work, write queued completions, drain the spool once more.

        The buffer stays open: it is the caller's.
        """
        self._maintenance.stop()
        self.recorder.close()

    def __enter__(self) -> HttpRecorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _no_claims(claims: list[Any]) -> None:
    """Recovery is off in HTTP mode: the background work never claims anything."""


def _decision(envelope_id: str, outcome: Outcome) -> Decision:
    if outcome.dispatch:
        return Decision(dispatch=True, status=200, envelope_id=envelope_id, outcome=outcome)
    if outcome is Outcome.DUPLICATE:
        return Decision(
            dispatch=False,
            status=200,
            envelope_id=envelope_id,
            outcome=outcome,
            reason="duplicate delivery",
        )
    if outcome is Outcome.NACKED:
        # No X-Slack-No-Retry: Slack's retry is what records the event later.
        return Decision(
            dispatch=False,
            status=503,
            body="storage unavailable",
            envelope_id=envelope_id,
            outcome=outcome,
            reason="storage unavailable",
        )
    return Decision(
        dispatch=False,
        status=400,
        body="request cannot be recorded",
        headers=NO_RETRY,
        envelope_id=envelope_id,
        outcome=outcome,
        reason="request cannot be recorded",
    )


def _refused(status: int, reason: str) -> Decision:
    return Decision(dispatch=False, status=status, body=reason, reason=reason)


def _rejected(reason: str) -> Decision:
    logger.error("request rejected, not recorded: %s", reason)
    return Decision(
        dispatch=False,
        status=400,
        body="request cannot be recorded",
        headers=NO_RETRY,
        reason=reason,
    )
