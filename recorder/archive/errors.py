"""The archive's error."""

from __future__ import annotations

from recorder.errors import RecorderError


class ArchiveError(RecorderError):
    """The archive directory cannot be used as asked (not an archive, unfinished files, I/O)."""
