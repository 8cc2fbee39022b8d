"""Compiled programs, counted from jax's own compile events rather than from trace counters of our own.

jax records `/jax/core/compile/backend_compile_duration` (with the jitted function's name) each time it
compiles a program, or loads one from the persistent compilation cache: what a job pays for a new shape.
A trace that reuses a compiled program is not counted; a program compiled ahead (`.lower().compile()`)
is counted once, where it is compiled.
"""
from __future__ import annotations

import collections
import threading
from collections.abc import Iterable

import jax

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

_counts: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()  # programs are also compiled by background threads (compile_ahead)


def _listener(event: str, duration: float, **kwargs) -> None:
    del duration
    if event == BACKEND_COMPILE_EVENT:
        with _lock:
            name = str(kwargs.get("fun_name", ""))  # "jit(_run)": the jitted function's own name inside
            _counts[name[4:-1] if name.startswith("jit(") and name.endswith(")") else name] += 1


jax.monitoring.register_event_duration_secs_listener(_listener)


def compiled_programs(names: Iterable[str] | None = None) -> int:
    """Programs compiled (or loaded from the compilation cache) in this process so far, of the jitted
    functions `names` (all when None). Differences of two readings count what happened between them."""
    with _lock:
        if names is None:
            return sum(_counts.values())
        return sum(_counts[name] for name in names)
