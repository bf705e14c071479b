"""What erasure writes in place of an envelope: the tombstone, and the mention scrub.

Pure functions, no I/O. The PostgreSQL functions that erase on the database
side (migration ``0005``) build exactly the same text, character for
character; a test holds the two to that.

**The tombstone** replaces the text of an envelope whose subject was erased.
It is a JSON object, compact, in this key order::

    {"envelope_id":"E1","type":"events_api",
     "recorder_erasure":{"erasure_id":7,"original_sha256":"<hex>"},
     "columns":{"team_id":"T1","enterprise_id":null,"api_app_id":"A1",
                "event_id":"Ev1","event_type":"message","channel_id":"C1",
                "retry_attempt":0,"retry_reason":null}}

``original_sha256`` is the digest of the text it replaced, ``erasure_id`` the
``erasures`` row that did it, and ``columns`` the non-personal reporting
columns the row keeps (``user_id`` is the personal one, and is cleared).
:func:`recorder.envelope.extract_columns` reads a tombstone's columns back,
so a tombstone stays a valid envelope for every path that parses stored text
(verify, the spool's drain, export and re-import).

**The scrub** replaces one user's mentions in an envelope that only mentions
them: ``<@U123>`` and ``<@U123|label>`` become ``<@[erased]>``, and every JSON
string that is exactly the id (``"user_id":"U123"`` in a rich-text block, a
reaction's ``users``) becomes ``"[erased]"``. Everything else is kept.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

#: The top-level key that marks a tombstone.
TOMBSTONE_KEY = "recorder_erasure"
#: What a scrubbed mention or id becomes.
ERASED = "[erased]"
#: The reporting columns a tombstone keeps, in its key order. ``user_id`` is not one.
KEPT_COLUMNS: tuple[str, ...] = (
    "team_id",
    "enterprise_id",
    "api_app_id",
    "event_id",
    "event_type",
    "channel_id",
    "retry_attempt",
    "retry_reason",
)
#: The reporting columns erasure clears.
PERSONAL_COLUMNS: tuple[str, ...] = ("user_id",)
#: A Slack user id: U or W, then upper-case letters and digits. Nothing else
#: can be erased, so an id is always safe inside a regular expression or LIKE.
USER_ID_PATTERN = re.compile(r"[UW][A-Z0-9]{2,31}")


def text_sha256(text: str) -> str:
    """SHA-256 of ``text`` as UTF-8, hex: what ``envelope_sha256`` and the erasure log hold."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def is_user_id(value: object) -> bool:
    return isinstance(value, str) and USER_ID_PATTERN.fullmatch(value) is not None


def tombstone_text(
    *,
    envelope_id: str,
    envelope_type: str | None,
    columns: Mapping[str, Any],
    erasure_id: int,
    original_sha256: str,
) -> str:
    """The tombstone of one envelope (see the module doc for the format)."""
    document = {
        "envelope_id": envelope_id,
        "type": envelope_type,
        TOMBSTONE_KEY: {"erasure_id": erasure_id, "original_sha256": original_sha256},
        "columns": {name: columns.get(name) for name in KEPT_COLUMNS},
    }
    # ensure_ascii=False escapes exactly what PostgreSQL's to_json does
    # (quote, backslash, control characters), so both build the same text.
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def tombstone_of(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``recorder_erasure`` part of a decoded envelope, or None if it is no tombstone."""
    marker = data.get(TOMBSTONE_KEY)
    if not isinstance(marker, Mapping) or not isinstance(data.get("columns"), Mapping):
        return None
    return dict(marker)


def is_tombstone(text: str) -> bool:
    """Whether stored text is a tombstone (cheap: parses only texts that could be one)."""
    if f'"{TOMBSTONE_KEY}":' not in text:
        return False
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, Mapping) and tombstone_of(data) is not None


def tombstone_columns(data: Mapping[str, Any]) -> dict[str, Any]:
    """The reporting columns a tombstone keeps, and None for the personal ones."""
    kept = data.get("columns")
    kept = kept if isinstance(kept, Mapping) else {}
    columns: dict[str, Any] = {name: kept.get(name) for name in KEPT_COLUMNS}
    columns["envelope_type"] = data.get("type")
    for name in PERSONAL_COLUMNS:
        columns[name] = None
    return columns


def _mention(user_id: str) -> re.Pattern[str]:
    return re.compile("<@" + user_id + r"(?:\|[^>]*)?>")


def mentions(text: str, user_id: str) -> bool:
    """Whether ``text`` mentions ``user_id`` the way :func:`scrub` would replace."""
    return _mention(user_id).search(text) is not None or f'"{user_id}"' in text


def scrub(text: str, user_id: str) -> str:
    """``text`` with every mention of ``user_id`` replaced (see the module doc)."""
    if not is_user_id(user_id):
        raise ValueError(f"not a Slack user id: {user_id!r}")
    text = _mention(user_id).sub(f"<@{ERASED}>", text)
    return text.replace(f'"{user_id}"', f'"{ERASED}"')
