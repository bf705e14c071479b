"""Retention, as one import: policies, legal holds, the change log and pruning.

The code lives in :mod:`recorder.policies`, :mod:`recorder.holds`,
:mod:`recorder.changelog` and :mod:`recorder.prune`; this module re-exports
their public names so ``from recorder import retention`` keeps working.
"""

from __future__ import annotations

from recorder.changelog import ChangeLogEntry, read_change_log
from recorder.holds import HOLD, LegalHold, add_hold, list_holds, release_hold
from recorder.policies import (
    MAX_NAME_LENGTH,
    POLICY,
    RetentionError,
    RetentionPolicy,
    deciding_policy,
    default_actor,
    list_policies,
    parse_keep,
    remove_policy,
    set_policy,
)
from recorder.prune import (
    DEFAULT_BATCH_SIZE,
    MAX_BATCH_SIZE,
    PRUNE_LOCK_KEY,
    PruneProgress,
    PruneReport,
    PruneRun,
    prune,
    read_prune_log,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "HOLD",
    "MAX_BATCH_SIZE",
    "MAX_NAME_LENGTH",
    "POLICY",
    "PRUNE_LOCK_KEY",
    "ChangeLogEntry",
    "LegalHold",
    "PruneProgress",
    "PruneReport",
    "PruneRun",
    "RetentionError",
    "RetentionPolicy",
    "add_hold",
    "deciding_policy",
    "default_actor",
    "list_holds",
    "list_policies",
    "parse_keep",
    "prune",
    "read_change_log",
    "read_prune_log",
    "release_hold",
    "remove_policy",
    "set_policy",
]
