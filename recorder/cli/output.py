"""Tables for people: a header and aligned columns (``--format json`` is for programs)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def table_lines(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """``headers`` and ``rows`` as lines of columns padded to their widest cell."""
    body = [list(row) for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in body)]) for i, h in enumerate(headers)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [list(headers), *body]
    ]
