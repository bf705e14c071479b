"""Counted nouns in messages: ``1 problem``, ``2 problems``."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun``, the noun in the plural unless the count is exactly one."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"
