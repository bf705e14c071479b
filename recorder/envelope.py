"""Envelope parsing and column extraction: pure functions, no I/O.

An envelope is stored twice over: ``envelope_text`` keeps the exact JSON text
(the bytes ``envelope_sha256`` covers, what ``recorder query --format jsonl``
prints), and ``envelope`` keeps a queryable JSON copy (``jsonb`` on
PostgreSQL). jsonb cannot hold ``\\u0000`` or lone UTF-16 surrogates, so for
those rare envelopes the queryable copy has U+FFFD in their place while the
exact text is kept untouched.

Limits (both part of the documented interface):

* ``envelope_id``: a non-empty string of at most :data:`MAX_ENVELOPE_ID_LENGTH`
  characters, with no NUL and no lone surrogate.
* the stored JSON text: at most ``max_bytes`` UTF-8 bytes,
  :data:`DEFAULT_MAX_ENVELOPE_BYTES` unless configured
  (``RECORDER_MAX_ENVELOPE_BYTES``).

Redaction (:class:`~recorder.redaction.Redaction`) masks or drops configured
JSON paths before the text and its digest are computed, so secrets never
reach storage. The caller's envelope is never mutated: changed containers are
copied.

Every envelope is decoded strictly (:func:`loads_strict`): a repeated key or
a mapping key that is not a string is refused, on every path that stores one.

Over 450 lines: strict decoding, the id and size limits and the column
extraction for every envelope type are the one parser every entry path
shares; redaction lives in :mod:`recorder.redaction`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from recorder.errors import InvalidEnvelope
from recorder.redaction import (  # re-exported: the names callers used before the split
    DEFAULT_MASKED_PATHS,
    DEFAULT_REDACTION,
    REDACTED,
    REDACTION_OFF,
    Redaction,
)
from recorder.tombstone import TOMBSTONE_KEY, tombstone_columns, tombstone_of

MAX_ENVELOPE_ID_LENGTH = 255
DEFAULT_MAX_ENVELOPE_BYTES = 1024 * 1024
#: Extracted reporting columns longer than this are left empty: they would be
#: hostile or malformed, and a btree index entry has a size limit.
MAX_COLUMN_LENGTH = 255

# JSON escapes that PostgreSQL's jsonb rejects: NUL, and any surrogate escape
# (paired ones are accepted, but telling them apart needs a parse anyway).
_JSONB_UNSAFE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
# Every escape in JSON text, left to right, so that an escaped backslash is
# consumed whole and "\\u0000" (a backslash, then "u0000") is not taken for NUL.
# ``pair``: a surrogate pair (jsonb accepts it); ``other``: any other escape
# jsonb accepts; what is left (NUL, a lone surrogate) needs replacing.
_JSON_ESCAPE = re.compile(
    r"\\(?:(?P<pair>u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})"
    r"|(?P<other>u[0-9a-fA-F]{4}|.))",
    re.DOTALL,
)
_INT32_MAX = 2**31 - 1

__all__ = [
    "DEFAULT_MASKED_PATHS",
    "DEFAULT_MAX_ENVELOPE_BYTES",
    "DEFAULT_REDACTION",
    "MAX_COLUMN_LENGTH",
    "MAX_ENVELOPE_ID_LENGTH",
    "REDACTED",
    "REDACTION_OFF",
    "ParsedEnvelope",
    "Redaction",
    "check_string_keys",
    "decode_json_object",
    "decode_stored",
    "extract_columns",
    "loads_strict",
    "parse_envelope",
    "parse_envelope_text",
    "validate_envelope_id",
]


@dataclass(frozen=True, slots=True)
class ParsedEnvelope:
    """One envelope, ready to store."""

    envelope_id: str
    text: str
    """The exact JSON text stored in ``envelope_text``."""
    data: dict[str, Any]
    """The decoded envelope."""
    sha256: str
    """Hex digest of ``text`` encoded as UTF-8."""
    queryable_text: str
    """JSON text for the queryable ``envelope`` column (jsonb-safe)."""
    columns: dict[str, Any]
    """Reporting columns (see :func:`extract_columns`)."""

    def row(self) -> dict[str, Any]:
        """The values of one ``envelopes`` row, except times and processing state."""
        return {
            "envelope_id": self.envelope_id,
            **self.columns,
            "envelope_json": self.queryable_text,
            "envelope_text": self.text,
            "envelope_sha256": self.sha256,
        }


def validate_envelope_id(envelope_id: object) -> str:
    """Return ``envelope_id`` unchanged if it can be stored, else raise InvalidEnvelope."""
    if not isinstance(envelope_id, str):
        raise InvalidEnvelope(f"envelope_id must be a string, not {type(envelope_id).__name__}")
    if not envelope_id:
        raise InvalidEnvelope("envelope_id is empty")
    if len(envelope_id) > MAX_ENVELOPE_ID_LENGTH:
        raise InvalidEnvelope(
            f"envelope_id is {len(envelope_id)} characters long; "
            f"the limit is {MAX_ENVELOPE_ID_LENGTH}"
        )
    if not _storable_text(envelope_id):
        raise InvalidEnvelope("envelope_id contains NUL or a lone surrogate")
    return envelope_id


def parse_envelope(
    envelope_id: object,
    envelope: object,
    *,
    max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
    redaction: Redaction | None = None,
) -> ParsedEnvelope:
    """Validate one envelope and compute everything stored with it.

    ``envelope`` is a mapping, or JSON text as str or bytes (kept byte for
    byte unless ``redaction`` changes something, in which case the redacted
    envelope is serialised compactly). If the envelope carries an
    ``envelope_id`` field it must equal ``envelope_id``. ``envelope`` itself
    is never modified.

    Raises
    ------
    InvalidEnvelope
        With a message that says what is wrong (and sizes, for the size limit).
    """
    envelope_id = validate_envelope_id(envelope_id)
    if isinstance(envelope, bytes | bytearray | memoryview):
        text = _utf8_text(bytes(envelope), max_bytes)
        data = _decode(text)
    elif isinstance(envelope, str):
        _check_size(len(_utf8_bytes(envelope)), max_bytes)
        text = envelope
        data = _decode(text)
    elif isinstance(envelope, Mapping):
        check_string_keys(envelope)
        data = dict(envelope)
        if redaction is not None and redaction.enabled:
            data = redaction.apply(data)[0]
        text = _encode(data)
        _check_size(len(text.encode("utf-8")), max_bytes)
        return _build(envelope_id, text, data)
    else:
        raise InvalidEnvelope(
            f"envelope must be a mapping, str or bytes, not {type(envelope).__name__}"
        )
    text, data = _redacted(text, data, redaction, max_bytes)
    return _build(envelope_id, text, data)


def parse_envelope_text(
    text: str | bytes,
    *,
    max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
    redaction: Redaction | None = None,
) -> ParsedEnvelope:
    """Parse one envelope whose id is its own ``envelope_id`` field (a JSON Lines record)."""
    if isinstance(text, bytes):
        text = _utf8_text(text, max_bytes)
    else:
        _check_size(len(_utf8_bytes(text)), max_bytes)
    data = _decode(text)
    if "envelope_id" not in data:
        raise InvalidEnvelope("envelope has no envelope_id field")
    envelope_id = validate_envelope_id(data["envelope_id"])
    text, data = _redacted(text, data, redaction, max_bytes)
    return _build(envelope_id, text, data)


def _redacted(
    text: str, data: dict[str, Any], redaction: Redaction | None, max_bytes: int
) -> tuple[str, dict[str, Any]]:
    if redaction is None or not redaction.enabled:
        return text, data
    redacted, changed = redaction.apply(data)
    if not changed:
        return text, data
    text = _encode(redacted)
    # A short secret masked by a longer placeholder can grow the text.
    _check_size(len(text.encode("utf-8")), max_bytes)
    return text, redacted


def _build(envelope_id: str, text: str, data: dict[str, Any]) -> ParsedEnvelope:
    body_id = data.get("envelope_id", envelope_id)
    if body_id != envelope_id:
        raise InvalidEnvelope(
            f"envelope_id {envelope_id!r} does not match the envelope's own {body_id!r}"
        )
    return ParsedEnvelope(
        envelope_id=envelope_id,
        text=text,
        data=data,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        queryable_text=_queryable(text),
        columns=extract_columns(data),
    )


def decode_json_object(text: str) -> dict[str, Any]:
    """Decode JSON text that must be an object, as strictly as ``record`` does.

    For callers that must look inside a body before recording it (HTTP mode
    reads the event id to build the envelope id), so that they accept and
    refuse exactly what the adapters do.

    Raises
    ------
    InvalidEnvelope
        The text is not a JSON object, or not JSON at all.
    """
    return _decode(text)


def decode_stored(text: str) -> dict[str, Any]:
    """Decode an ``envelope_text`` value read back from storage."""
    value: dict[str, Any] = json.loads(text)
    return value


#: The reporting columns :func:`extract_columns` gives, in the envelopes
#: table's order. Defined here, where no SQLAlchemy is imported, so that the
#: schema, the import's COPY rows and verify's worker processes all name the
#: same tuple.
REPORTING_COLUMNS: tuple[str, ...] = (
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


def extract_columns(data: Mapping[str, Any]) -> dict[str, Any]:
    """The reporting columns of an envelope; absent or unusable values are None.

    Understands ``events_api``, ``slash_commands`` and ``interactive``
    envelopes; any other type still yields what the common fields give. An
    erased envelope's tombstone (:mod:`recorder.tombstone`) gives the columns
    it kept.
    """
    # Most envelopes are no tombstone: the key's absence settles it cheaply.
    if TOMBSTONE_KEY in data and tombstone_of(data) is not None:
        # The same limits as extracted values: a tombstone is stored text too.
        return {
            name: _int32(value) if name == "retry_attempt" else _text(value)
            for name, value in tombstone_columns(data).items()
        }
    envelope_type = _text(data.get("type"))
    payload = data.get("payload")
    if not _is_mapping(payload):
        payload = {}
    columns: dict[str, Any] = {
        "envelope_type": envelope_type,
        "team_id": None,
        "enterprise_id": None,
        "api_app_id": _text(payload.get("api_app_id")),
        "event_id": None,
        "event_type": None,
        "channel_id": None,
        "user_id": None,
        "retry_attempt": _int32(data.get("retry_attempt")),
        "retry_reason": _text(data.get("retry_reason")),
    }
    if envelope_type == "events_api":
        _events_api(payload, columns)
    elif envelope_type == "slash_commands":
        columns["team_id"] = _text(payload.get("team_id"))
        columns["enterprise_id"] = _text(payload.get("enterprise_id"))
        columns["channel_id"] = _text(payload.get("channel_id"))
        columns["user_id"] = _text(payload.get("user_id"))
        columns["event_type"] = _text(payload.get("command"))
    else:
        # interactive payloads, and the best guess for types Slack adds later
        _interactive(payload, columns)
    return columns


def _events_api(payload: Mapping[str, Any], columns: dict[str, Any]) -> None:
    event = payload.get("event")
    if not _is_mapping(event):
        event = {}
    authorizations = payload.get("authorizations")
    first_auth = (
        authorizations[0]
        if isinstance(authorizations, list) and authorizations and _is_mapping(authorizations[0])
        else {}
    )
    columns["team_id"] = _text(payload.get("team_id")) or _text(first_auth.get("team_id"))
    columns["enterprise_id"] = _text(payload.get("enterprise_id")) or _text(
        first_auth.get("enterprise_id")
    )
    columns["event_id"] = _text(payload.get("event_id"))
    columns["event_type"] = _text(event.get("type"))
    item = event.get("item")
    columns["channel_id"] = (
        _id_of(event.get("channel"))
        or (_text(item.get("channel")) if _is_mapping(item) else None)
        or _text(event.get("channel_id"))
    )
    # message_changed / message_deleted carry the author inside the message.
    edited = event.get("message") or event.get("previous_message")
    columns["user_id"] = (
        _id_of(event.get("user"))
        or _text(event.get("user_id"))
        or (_id_of(edited.get("user")) if _is_mapping(edited) else None)
    )


def _interactive(payload: Mapping[str, Any], columns: dict[str, Any]) -> None:
    team = payload.get("team")
    enterprise = payload.get("enterprise")
    columns["team_id"] = _id_of(team) or _text(payload.get("team_id"))
    columns["enterprise_id"] = (
        _id_of(enterprise)
        or (_text(team.get("enterprise_id")) if _is_mapping(team) else None)
        or _text(payload.get("enterprise_id"))
    )
    columns["channel_id"] = _id_of(payload.get("channel")) or _text(payload.get("channel_id"))
    columns["user_id"] = _id_of(payload.get("user")) or _text(payload.get("user_id"))
    columns["event_type"] = _text(payload.get("type"))


def _id_of(value: object) -> str | None:
    """A Slack reference is either an id string or an object with an ``id``."""
    if _is_mapping(value):
        return _text(value.get("id"))
    return _text(value)


def _is_mapping(value: object) -> TypeGuard[Mapping[str, Any]]:
    # A decoded envelope holds dicts, strings and None: settle those before the
    # Mapping ABC's isinstance, which costs several times more (verify runs
    # extract_columns on every stored row).
    if isinstance(value, dict):
        return True
    if value is None or isinstance(value, str):
        return False
    return isinstance(value, Mapping)


def _text(value: object) -> str | None:
    if (
        isinstance(value, str)
        and 0 < len(value) <= MAX_COLUMN_LENGTH
        # _storable_text, its ASCII case inline (the common one, once per column)
        and ("\x00" not in value if value.isascii() else _storable_text(value))
    ):
        return value
    return None


def _int32(value: object) -> int | None:
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and -_INT32_MAX <= value <= _INT32_MAX
    ):
        return value
    return None


def _storable_text(value: str) -> bool:
    """True when ``value`` can be a database text value: UTF-8 encodable, no NUL."""
    if value.isascii():
        return "\x00" not in value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def _utf8_bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEnvelope(
            f"envelope text has a lone surrogate at character {exc.start}, outside a JSON escape"
        ) from exc


def _utf8_text(raw: bytes, max_bytes: int) -> str:
    _check_size(len(raw), max_bytes)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEnvelope(
            f"envelope bytes are not UTF-8: {exc.reason} at byte {exc.start}"
        ) from exc


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise InvalidEnvelope(
            f"envelope is {size:,} bytes; the limit is {max_bytes:,} bytes "
            "(RECORDER_MAX_ENVELOPE_BYTES)"
        )


def _reject_constant(name: str) -> Any:
    raise InvalidEnvelope(f"envelope contains {name}, which is not JSON")


class _DuplicateKey(Exception):
    """Raised inside the decoder; :func:`_decode` finds the key's path and reports it."""


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # The standard decoder keeps the last of repeated keys, so
    # {"token": "SECRET", "token": "[redacted]"} would look redacted while the
    # stored text kept the secret. A count is enough here; the slow search
    # for the key's path runs only on the (rare) refusal.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey
    return obj


_STRICT_DECODER = json.JSONDecoder(
    object_pairs_hook=_strict_object, parse_constant=_reject_constant
)


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its key-value pairs in order, repeats kept (for the path search)."""


def _duplicate_key_path(text: str) -> str:
    """The path (``payload.token``) of the first repeated key in ``text``."""
    root = json.loads(text, object_pairs_hook=_Pairs)
    stack: list[tuple[Any, str]] = [(root, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, _Pairs):
            seen: set[str] = set()
            for key, _ in value:
                if key in seen:
                    return _join(path, key)
                seen.add(key)
            items: list[tuple[str, Any]] = list(value)
        elif isinstance(value, list):
            items = [(str(index), item) for index, item in enumerate(value)]
        else:
            continue
        # Reversed onto the stack: children are searched in document order.
        stack.extend((item, _join(path, key)) for key, item in reversed(items))
    return "?"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _shown_path(path: str) -> str:
    # A key is attacker-chosen text: bounded, and shown as a literal.
    return repr(path if len(path) <= 200 else path[:200] + "...")


def check_string_keys(data: Mapping[str, Any]) -> None:
    """Raise InvalidEnvelope if any object in ``data`` has a key that is not a string.

    ``json.dumps`` would turn ``1``, ``True`` and ``None`` into the keys
    ``"1"``, ``"true"`` and ``"null"`` (and ``{1: ..., "1": ...}`` into a
    duplicate key), so the stored text would not be the object given.
    """
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    where = f"in {_shown_path(path)}" if path else "at the top level"
                    raise InvalidEnvelope(
                        f"envelope has a key that is not a string {where}: {key!r} "
                        f"({type(key).__name__}); JSON object keys are strings"
                    )
                if isinstance(item, Mapping | list | tuple):
                    stack.append((item, _join(path, key)))
        else:
            for index, item in enumerate(value):
                if isinstance(item, Mapping | list | tuple):
                    stack.append((item, _join(path, str(index))))


def loads_strict(text: str) -> Any:
    """Decode JSON text strictly: no repeated key in any object, no NaN or Infinity.

    The one decoder every path that takes an envelope in uses (the adapters,
    import, the Slack listeners, the spool).

    Raises
    ------
    InvalidEnvelope
        The text is not JSON, repeats a key (the message names its path,
        for example ``payload.token``), or is nested too deeply.
    """
    try:
        return _STRICT_DECODER.decode(text)
    except _DuplicateKey:
        try:
            path = _duplicate_key_path(text)
        except RecursionError as exc:
            raise InvalidEnvelope("envelope is nested too deeply to decode") from exc
        except ValueError as exc:
            # Repeated key first, malformed text after it: report the malformation.
            raise InvalidEnvelope(f"envelope is not valid JSON: {exc}") from exc
        raise InvalidEnvelope(
            f"envelope has a duplicate key: {_shown_path(path)} appears twice in one "
            "object; strict JSON allows each key once"
        ) from None
    except InvalidEnvelope:
        raise
    except RecursionError as exc:
        raise InvalidEnvelope("envelope is nested too deeply to decode") from exc
    except ValueError as exc:
        raise InvalidEnvelope(f"envelope is not valid JSON: {exc}") from exc


def _decode(text: str) -> dict[str, Any]:
    data = loads_strict(text)
    if not isinstance(data, dict):
        raise InvalidEnvelope(f"envelope must be a JSON object, not {type(data).__name__}")
    return data


def _encode(data: Mapping[str, Any]) -> str:
    try:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except RecursionError as exc:
        raise InvalidEnvelope("envelope is nested too deeply to encode") from exc
    except (TypeError, ValueError) as exc:
        raise InvalidEnvelope(f"envelope cannot be encoded as JSON: {exc}") from exc
    if _storable_text(text):
        return text
    # Lone surrogates cannot be UTF-8; \u escapes keep them exactly.
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def _queryable(text: str) -> str:
    if _JSONB_UNSAFE_ESCAPE.search(text) is None:
        return text
    # Rewritten in the text rather than re-encoded from the decoded value, so
    # everything else (numbers such as 1e400 that a float cannot hold, key
    # order) stays as received. Stored text never holds a raw NUL or lone
    # surrogate (those are not valid JSON or UTF-8), only these escapes.
    return _JSON_ESCAPE.sub(_jsonb_safe_escape, text)


def _jsonb_safe_escape(match: re.Match[str]) -> str:
    if match.group("pair") is not None or match.group("other") is not None:
        return match.group(0)
    return "\\ufffd"


def stored_columns(envelope_id: str, text: str) -> tuple[dict[str, Any], str]:
    """The reporting columns and the queryable copy a stored row's text gives.

    For checking stored rows (:mod:`recorder.verify`): the text is decoded
    the way PostgreSQL's jsonb reads it, so a repeated key keeps its last
    value. Refusing repeated keys is the entry paths' job
    (:func:`parse_envelope`); a stored text with one still has to match its
    columns and copy.

    Raises
    ------
    InvalidEnvelope
        The id cannot be stored, or the text is not a JSON object carrying
        that id (if any).
    """
    validate_envelope_id(envelope_id)
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except InvalidEnvelope:
        raise
    except RecursionError as exc:
        raise InvalidEnvelope("envelope is nested too deeply to decode") from exc
    except ValueError as exc:
        raise InvalidEnvelope(f"envelope is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidEnvelope(f"envelope must be a JSON object, not {type(data).__name__}")
    body_id = data.get("envelope_id", envelope_id)
    if body_id != envelope_id:
        raise InvalidEnvelope(
            f"envelope_id {envelope_id!r} does not match the envelope's own {body_id!r}"
        )
    return extract_columns(data), _queryable(text)
