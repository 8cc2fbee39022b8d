"""Compiled programs, counted from jax's own compile events rather than from trace counters of our own.

jax records `/jax/core/compile/backend_compile_duration` (with the jitted function's name) each time it
compiles a program, or loads one from the persistent compilation cache: what a job pays for a new shape.
A trace that reuses a compiled program is not counted; a program compiled ahead (`.lower().compile()`)
is counted once, where it is compiled.
"""
from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Mapping

import jax

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# What obtaining a program costs, by phase (jax's duration events): tracing to a jaxpr, lowering it to
# StableHLO, reading it from the persistent compilation cache, and compiling (or loading: the cache's
# reads are counted in it too).
PHASES = {"/jax/core/compile/jaxpr_trace_duration": "trace",
          "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
          "/jax/compilation_cache/cache_retrieval_time_sec": "cache_read",
          BACKEND_COMPILE_EVENT: "compile"}

_counts: collections.Counter[str] = collections.Counter()
_seconds: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()  # programs are also compiled by background threads (compile_ahead)


def _listener(event: str, duration: float, **kwargs) -> None:
    if event in PHASES:
        with _lock:
            _seconds[PHASES[event]] += duration
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


def program_seconds() -> dict[str, float]:
    """Seconds this process has spent obtaining programs so far, every jitted function's, by phase (`PHASES`;
    threads' compiles ahead included, so phases can overlap the decode loop). Differences of two readings
    count what happened between them."""
    with _lock:
        return {phase: _seconds[phase] for phase in PHASES.values()}


def program_seconds_since(before: Mapping[str, float]) -> dict[str, float]:
    """`program_seconds()` less an earlier reading `before`, to the millisecond: what the work between the two
    readings paid for programs, by phase."""
    return {phase: round(float(seconds - before[phase]), 3) for phase, seconds in program_seconds().items()}
