"""The newest Orbax checkpoint of a folder that can be read. A run keeps several checkpoints so that a damaged
one (a file overwritten or missing, unreadable metadata) is not fatal: resuming a run and initialising from
one (`init_from`) both fall back to the step before it, saying which step was passed over and why.

A full disk, a store that keeps failing and running out of memory are not damage: they stop the restore. A
store's passing error (which Orbax's own reads do not retry) is not damage either: the step's restore is retried
(`paths.retrying`), then a store that keeps failing stops it; the checkpoint is kept.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TypeVar

from teacherlm_jax.errors import CheckpointError, fault_message, one_line
from teacherlm_jax.paths import retrying

log = logging.getLogger(__name__)
T = TypeVar("T")


def _not_damage(error: Exception) -> bool:
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error) or fault_message(error) is not None


def restore_newest_intact(steps: list[int], restore: Callable[[int], T], where: str) -> tuple[int, T] | None:
    """(step, what `restore(step)` returned) for the newest of `steps` that restores, with a warning naming each
    newer one that does not; None when `steps` is empty. Raises CheckpointError naming every step tried (and
    why each failed) when none restores. `where`: the checkpoints folder, for the messages."""
    tried = []
    for step in sorted(steps, reverse=True):
        try:
            return step, retrying(f"{where}/{step}", "restore", functools.partial(restore, step))
        except Exception as e:  # noqa: BLE001 (whatever a damaged file makes Orbax raise)
            if _not_damage(e):
                raise
            log.warning("checkpoint %s/%d cannot be read (%s); trying the one before it", where, step, one_line(e))
            tried.append(f"step {step}: {one_line(e)}")
    if not tried:
        return None
    raise CheckpointError(f"{where}: no checkpoint can be read (tried {'; '.join(tried)}); move the folder away "
                          f"to start afresh")
