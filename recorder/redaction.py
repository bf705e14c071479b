"""Redaction: the JSON paths masked or dropped in the stored copy of every envelope.

Pure functions, no I/O. :class:`Redaction` says what is masked (replaced by
``[redacted]``) or dropped, and applies it to a decoded envelope without
modifying it. Which redaction an adapter uses when given none (the
``RECORDER_REDACT`` variable) is decided in :mod:`recorder.settings`; where
the redacted envelope becomes the stored text and digest is
:mod:`recorder.envelope`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recorder.errors import ConfigurationError

__all__ = ["DEFAULT_MASKED_PATHS", "DEFAULT_REDACTION", "REDACTED", "REDACTION_OFF", "Redaction"]

#: What a masked value is replaced with.
REDACTED = "[redacted]"
#: Masked by default: the deprecated verification token, and the response URLs
#: that let anyone holding them post into the conversation for 30 minutes.
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "payload.token",
    "payload.response_url",
    "payload.response_urls.*.response_url",
)
#: ``RECORDER_REDACT`` values that turn redaction off.
REDACTION_OFF = ("off", "none")


@dataclass(frozen=True, slots=True)
class Redaction:
    """JSON paths masked or dropped in the stored copy of every envelope.

    A path is dot-separated keys from the envelope's top level, for example
    ``payload.token``; ``*`` matches every key of an object or every item of
    a list, and a number matches that list index. A path that is absent is
    ignored. Masking replaces the value, whatever its type, with
    ``mask_value``; dropping removes the key (or list item).

    Parameters
    ----------
    mask
        Paths whose values are replaced by ``mask_value``.
    drop
        Paths removed from the stored copy.
    mask_value
        The replacement for masked values.

    Raises
    ------
    ConfigurationError
        A path is empty, has an empty segment, or is ``envelope_id`` (the
        stored copy must keep its id).
    """

    mask: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    mask_value: str = REDACTED

    def __post_init__(self) -> None:
        # Accept lists too, but store tuples: the object is hashable and frozen.
        object.__setattr__(self, "mask", tuple(self.mask))
        object.__setattr__(self, "drop", tuple(self.drop))
        for path in (*self.mask, *self.drop):
            segments = _path_segments(path)
            # The stored copy must keep its id (and "*" at the top would reach it).
            if segments[0] in ("envelope_id", "*"):
                raise ConfigurationError(
                    f"redaction path {path!r}: the first segment must name a key "
                    "other than envelope_id"
                )

    @classmethod
    def default(cls) -> Redaction:
        """Mask :data:`DEFAULT_MASKED_PATHS`; drop nothing."""
        return cls(mask=DEFAULT_MASKED_PATHS)

    @classmethod
    def none(cls) -> Redaction:
        """Store envelopes exactly as received."""
        return cls()

    @classmethod
    def parse(cls, spec: str) -> Redaction:
        """Read a ``RECORDER_REDACT`` value.

        ``off`` or ``none`` turns redaction off; otherwise comma-separated
        items, each ``mask:PATH``, ``drop:PATH`` or ``default`` (the default
        masks). For example ``default,drop:payload.event.text``.

        Raises
        ------
        ConfigurationError
            An item is not one of those forms.
        """
        spec = spec.strip()
        if spec.lower() in REDACTION_OFF:
            return cls.none()
        mask: list[str] = []
        drop: list[str] = []
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            kind, _, path = item.partition(":")
            if item == "default":
                mask.extend(DEFAULT_MASKED_PATHS)
            elif kind == "mask" and path:
                mask.append(path)
            elif kind == "drop" and path:
                drop.append(path)
            else:
                raise ConfigurationError(
                    f"RECORDER_REDACT: {item!r} is not mask:PATH, drop:PATH, default, off"
                )
        try:
            return cls(mask=tuple(dict.fromkeys(mask)), drop=tuple(dict.fromkeys(drop)))
        except ConfigurationError as exc:
            raise ConfigurationError(f"RECORDER_REDACT: {exc}") from None

    @property
    def enabled(self) -> bool:
        return bool(self.mask or self.drop)

    def apply(self, data: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """The redacted copy of ``data`` and whether anything changed.

        ``data`` is never modified; only containers on a changed path are
        copied. A value that already equals ``mask_value`` counts as
        unchanged, so redacting twice is the same as redacting once (an
        export imported again keeps its exact text and digest).
        """
        result: Any = data
        changed = False
        for path in self.drop:
            result, did = _redact(result, _path_segments(path), None)
            changed = changed or did
        for path in self.mask:
            result, did = _redact(result, _path_segments(path), self.mask_value)
            changed = changed or did
        return (result if changed else dict(data)), changed


def _path_segments(path: str) -> tuple[str, ...]:
    segments = tuple(path.split("."))
    if not path or any(not segment for segment in segments):
        raise ConfigurationError(f"redaction path {path!r} has an empty segment")
    return segments


def _redact(value: Any, segments: tuple[str, ...], mask_value: str | None) -> tuple[Any, bool]:
    """Mask (``mask_value``) or drop (None) what ``segments`` reach below ``value``."""
    head, rest = segments[0], segments[1:]
    keys: list[Any]
    if isinstance(value, Mapping):
        keys = list(value) if head == "*" else [head] if head in value else []
    elif isinstance(value, list):
        if head == "*":
            keys = list(range(len(value)))
        else:
            keys = [int(head)] if head.isdigit() and int(head) < len(value) else []
    else:
        return value, False
    copy: Any = None
    # Reverse order keeps earlier list indices valid while items are dropped.
    for key in reversed(keys):
        if rest:
            new, changed = _redact(value[key], rest, mask_value)
            if not changed:
                continue
            copy = _copy(value) if copy is None else copy
            copy[key] = new
        elif mask_value is None:
            copy = _copy(value) if copy is None else copy
            del copy[key]
        elif not (isinstance(value[key], str) and value[key] == mask_value):
            copy = _copy(value) if copy is None else copy
            copy[key] = mask_value
    return (value, False) if copy is None else (copy, True)


def _copy(value: Mapping[str, Any] | list[Any]) -> Any:
    return dict(value) if isinstance(value, Mapping) else list(value)


#: The adapters' default: the default masks, or ``RECORDER_REDACT`` when set.
DEFAULT_REDACTION = Redaction.default()
