"""What evaluating paid for its programs: a piece of work's seconds, the programs it obtained (compiled, or read
from the persistent compilation cache) and their seconds by phase, from readings of jax's compile events before
and after it (`generation.compiles`). metrics.json's `throughput` and the lm-eval backend's `get_model_info()`
carry them, as summary.json's throughput does for the augment job.

Programs are every jitted function's, like their seconds: in loglik mode the scoring programs, in generate mode
generation's. A program already compiled in this process costs nothing, so a second run in one process pays none.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from teacherlm_jax.generation.compiles import PHASES, compiled_programs, program_seconds, program_seconds_since


def _no_seconds() -> dict[str, float]:
    return dict.fromkeys(PHASES.values(), 0.0)


@dataclasses.dataclass(frozen=True)
class WorkCost:
    """`seconds` of work, in which `compiled_programs` programs were obtained in `program_seconds` (by phase)."""

    seconds: float = 0.0
    compiled_programs: int = 0
    program_seconds: Mapping[str, float] = dataclasses.field(default_factory=_no_seconds)

    def __add__(self, other: WorkCost) -> WorkCost:
        return WorkCost(round(self.seconds + other.seconds, 3), self.compiled_programs + other.compiled_programs,
                        {phase: round(self.program_seconds[phase] + other.program_seconds[phase], 3)
                         for phase in self.program_seconds})

    @property
    def paid_seconds(self) -> float:
        """The seconds the phases took: trace + lower + compile (jax reads the persistent cache inside its
        compile phase, so `cache_read` is already in `compile`)."""
        return round(sum(t for phase, t in self.program_seconds.items() if phase != "cache_read"), 3)

    def to_json(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "compiled_programs": self.compiled_programs,
                "program_seconds": dict(self.program_seconds)}

    def __str__(self) -> str:
        phases = ", ".join(f"{phase.replace('_', ' ')} {t:.2f}" for phase, t in self.program_seconds.items())
        share = f"{100 * self.paid_seconds / self.seconds:.0f}%" if self.seconds else "n/a"
        return (f"{self.compiled_programs} programs obtained in {self.paid_seconds:.2f} s ({phases}): {share} of "
                f"{self.seconds:.2f} s")


class CostMeter:
    """Reads the clock and the process's program counters when made; `cost()` is what the work since then paid."""

    def __init__(self) -> None:
        self._start, self._programs, self._seconds = time.perf_counter(), compiled_programs(), program_seconds()

    def cost(self) -> WorkCost:
        return WorkCost(round(time.perf_counter() - self._start, 3), compiled_programs() - self._programs,
                        program_seconds_since(self._seconds))
