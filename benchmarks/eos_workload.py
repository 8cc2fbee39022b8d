"""TeacherLM's generation workload for benchmarks: texts that end at EOS after a long-tailed number of steps.

Random weights never emit EOS. The checkpoints here give EOS a constant logit c (the final layer norm's
channel 0 is fixed to 1 and feeds only EOS's column of an untied head), solved from the model's own
logits so that EOS has probability EOS_PROB per step under temperature 1 and top-k 50: texts then end
after a geometric number of steps (mean ~1 / EOS_PROB), cut at MAX_NEW_TOKENS, as TeacherLM's do.
"""
from __future__ import annotations

import numpy as np

EOS_PROB = 1 / 32  # per step: geometric lengths of mean ~32 tokens
MAX_NEW_TOKENS = 128
TOP_K = 50


def eos_probability(top: np.ndarray, c: float) -> float:
    """EOS's probability under top-k sampling at logit `c`, averaged over positions.

    top: [positions, k] the k largest logits other than EOS at each position, largest first (EOS in the
    top k pushes the k-th out).
    """
    top = np.asarray(top, np.float64)
    rest = np.logaddexp.reduce(top[:, :-1], axis=1)
    return float(np.mean(np.where(c > top[:, -1], 1 / (1 + np.exp(rest - c)), 0.0)))


def solve_eos_logit(top: np.ndarray, target: float = EOS_PROB) -> float:
    """The EOS logit whose `eos_probability` is `target` (bisection)."""
    lo, hi = float(np.min(top)), float(np.max(top)) + 30
    for _ in range(60):
        lo, hi = ((lo + hi) / 2, hi) if eos_probability(top, (lo + hi) / 2) < target else (lo, (lo + hi) / 2)
    return hi
