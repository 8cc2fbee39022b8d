"""What a person watching a job reads: progress bars on a terminal, plain figures in log lines, and the one
summary line every job ends with (where its outputs are and its headline numbers).

Bars go to stderr only when it is a terminal and only on process 0; elsewhere (a log file, a pod's output,
another process) jobs log plain lines instead, which `tqdm`'s carriage returns would garble.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

import jax

log = logging.getLogger(__name__)


def terminal_bar(total: int, *, initial: int = 0, desc: str | None = None, unit: str = "it"):
    """A tqdm bar on a terminal (process 0), else None: then the caller logs plain lines."""
    if jax.process_index() != 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)


def duration(seconds: float) -> str:
    """`4m43s`, `2h05m`, `12s`: short enough for a progress line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def count(n: float) -> str:
    """`950`, `12.4k`, `3.1M`: rates and token counts at a glance."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            return f"{n / limit:.1f}{suffix}"
    return f"{n:.0f}" if abs(n) >= 10 or n == int(n) else f"{n:.2g}"


def summary_line(job: str, numbers: Mapping[str, object], outputs: Mapping[str, str | os.PathLike]) -> str:
    """`train done: 1000 steps, 5m12s, loss 2.314 | hf_final /w/hf_final, loss curve /w/loss_curve.png`: the
    job's headline numbers (name value, in order), then where its outputs are. One line, so it can be grepped."""
    figures = ", ".join(f"{name} {value}".strip() for name, value in numbers.items())
    places = ", ".join(f"{name} {os.fspath(path)}" for name, path in outputs.items())
    return f"{job} done: {figures}" + (f" | {places}" if places else "")


def report_summary(job: str, numbers: Mapping[str, object], outputs: Mapping[str, str | os.PathLike]) -> str:
    """Process 0 logs `summary_line` at INFO and prints it, so it is the last thing a person sees; other
    processes stay quiet, as they do for progress."""
    line = summary_line(job, numbers, outputs)
    if jax.process_index() == 0:
        log.info("%s", line)
        print(line, flush=True)
    return line
