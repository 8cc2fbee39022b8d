"""What people look at: summary.json, lengths.png and the Hugging Face dataset (`export`: parquet shards and
the dataset card, rendered from the summary) built from the parts, and the progress bar.

The summary is computed from the parts themselves (not from one run's memory), so it is the same
whether the output came from one run or from several killed and resumed ones, one process or many.
Throughput comes from the runs that finished (runs/*.json): per process, records and tokens over the
seconds spent generating them; processes run in parallel, so their rates add. The engine's figures
(decode steps, slot occupancy, prefill tokens) are those of the runs' slots, which every dataset of a
run shares.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from etils import epath

from teacherlm_jax import report_json
from teacherlm_jax.augment.export import write_dataset
from teacherlm_jax.augment.files import HISTOGRAM, RUNS, SUMMARY, read_manifest, read_parts
from teacherlm_jax.console import terminal_bar
from teacherlm_jax.data import KIND_PROMPTS, REGISTRY
from teacherlm_jax.data.quality import quality_counts, row_quality
from teacherlm_jax.figures import pyplot
from teacherlm_jax.paths import read_text, workdir_path, write_atomic, write_figure

log = logging.getLogger(__name__)
ENGINE_COUNTS = ("decode_steps", "slot_steps", "kept_tokens", "prefill_tokens")

def _samples(value: Any) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def _throughput(out_dir: epath.Path) -> dict[str, Any]:
    runs = sorted((json.loads(read_text(p)) for p in (out_dir / RUNS).glob("*.json")),
                  key=lambda r: (r["started"], r["process_index"]))
    per_process: dict[int, list[float]] = {}
    for r in runs:
        if r["records"]:
            totals = per_process.setdefault(r["process_index"], [0, 0, 0.0])
            totals[0] += r["records"]
            totals[1] += r["tokens"]
            totals[2] += r["seconds"]
    return {
        "records_per_s": round(sum(n / s for n, _, s in per_process.values() if s), 3),
        "tokens_per_s": round(sum(t / s for _, t, s in per_process.values() if s), 1),
        "seconds": round(max((s for _, _, s in per_process.values()), default=0.0), 3),
        "compiled_programs": sum(r["compiled_programs"] for r in runs),
        "program_seconds": _program_seconds(runs),
        "processes": len(per_process),
        "engine": _engine(runs),
        "runs": runs,
    }


def _program_seconds(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds spent obtaining programs (trace, lower, cache read, compile), summed over the runs (runs written
    before this field have none)."""
    total: dict[str, float] = {}
    for r in runs:
        for phase, seconds in r.get("program_seconds", {}).items():
            total[phase] = round(total.get(phase, 0.0) + seconds, 3)
    return total


def _engine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Decode steps, slot occupancy (kept tokens per slot-step) and prefill tokens (padding included)."""
    engines = [r["engine"] for r in runs if r.get("engine")]
    counts = {k: sum(e[k] for e in engines) for k in ENGINE_COUNTS}
    return {"engines": sorted({e["engine"] for e in engines}), **counts,
            "slot_occupancy": round(counts["kept_tokens"] / counts["slot_steps"], 4) if counts["slot_steps"] else None}


def _lengths(rows: list[dict[str, Any]], kinds: list[str]) -> dict[str, list[int]]:
    """Generated tokens of every sample, per kind."""
    return {k: [n for row in rows for n in _samples(row["new_tokens"][k])] for k in kinds}


def summarize(out_dir: str | os.PathLike, rows: list[dict[str, Any]] | None = None,
              qualities: list[dict[str, list]] | None = None) -> dict[str, Any]:
    """Counts over every written record (`rows`, default read from the parts): tokens per kind (the
    paper's table of average lengths), truncated and skipped prompts per kind, the texts' quality flags
    (`qualities`: `data.quality.row_quality` per row, default computed) and what each filter keeps, the
    source's license, the prompts, and throughput."""
    out_dir = workdir_path(out_dir)
    manifest = read_manifest(out_dir)
    rows = read_parts(out_dir) if rows is None else rows
    qualities = [row_quality(row) for row in rows] if qualities is None else qualities
    kinds = manifest["kinds"]
    max_new = manifest["sampling"]["max_new_tokens"]
    lengths = _lengths(rows, kinds)
    prompt_tokens = {k: [row["prompt_tokens"][k] for row in rows] for k in kinds}
    mean = lambda xs: round(sum(xs) / len(xs), 2) if xs else None
    return {
        **{k: manifest[k] for k in ("dataset", "source", "split", "available", "max_records") if k in manifest},
        "license": REGISTRY[manifest["source"]].license if manifest.get("source") in REGISTRY else "unknown",
        "records": len(rows),
        "kinds": kinds,
        "prompts": {k: KIND_PROMPTS[k] for k in kinds},
        "samples": {k: len(v) for k, v in lengths.items()},
        "tokens": sum(sum(v) for v in lengths.values()),
        "avg_tokens": {k: mean(v) for k, v in lengths.items()},
        "max_tokens": {k: max(v, default=None) for k, v in lengths.items()},
        "reached_max_new_tokens": {k: sum(n >= max_new for n in v) for k, v in lengths.items()},
        "avg_prompt_tokens": {k: mean(v) for k, v in prompt_tokens.items()},
        "truncation": manifest["truncation"],
        "max_prompt_tokens": manifest["max_prompt_tokens"],
        "truncated": {k: sum(k in row["truncated"] for row in rows) for k in kinds},
        "skipped": {k: sum(k in row["skipped"] for row in rows) for k in kinds},
        "quality": quality_counts(qualities, kinds),
        "sampling": manifest["sampling"],
        "teacher": manifest["teacher"],
        "chunks": manifest["chunks"],
        "chunk_size": manifest["chunk_size"],
        "throughput": _throughput(out_dir),
    }


def plot_lengths(lengths: dict[str, list[int]], path: epath.Path, title: str) -> None:
    """One histogram of generated tokens per kind."""
    plt = pyplot()

    fig, axes = plt.subplots(1, len(lengths), figsize=(3.5 * len(lengths), 3), squeeze=False)
    for ax, (kind, values) in zip(axes[0], lengths.items()):
        ax.hist(values, bins=min(50, max(1, len(set(values)))), color="tab:blue")
        ax.set_title(f"{kind} (mean {sum(values) / max(1, len(values)):.1f})", fontsize=9)
        ax.set_xlabel("generated tokens")
    axes[0][0].set_ylabel("samples")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    write_figure(fig, path, dpi=100)
    plt.close(fig)


def write_summary(out_dir: str | os.PathLike) -> dict[str, Any]:
    """lengths.png, the parquet shards and dataset card (`export`), then summary.json (its presence says the
    output is complete) in `out_dir` (every part must be written); returns the summary."""
    out_dir = workdir_path(out_dir)
    rows = read_parts(out_dir)
    qualities = [row_quality(row) for row in rows]  # computed once: the summary counts them, the shards carry them
    summary = summarize(out_dir, rows, qualities)
    plot_lengths(_lengths(rows, summary["kinds"]), out_dir / HISTOGRAM, str(summary.get("dataset", out_dir.name)))
    write_dataset(out_dir, rows, qualities, summary)
    write_atomic(out_dir / SUMMARY, report_json.dumps(summary, indent=2) + "\n")
    return summary


@contextlib.contextmanager
def progress(total: int, done: int, desc: str) -> Iterator[Callable[[int, int, str], None]]:
    """update(records, tokens, engine): a tqdm bar with records/s, tokens/s and the engine's figures
    (`engine`, e.g. decode steps and slot occupancy) on a terminal, else a log line per call."""
    start, counts = time.perf_counter(), [0, 0]

    def status(records: int, tokens: int, engine: str) -> str:
        counts[0] += records
        counts[1] += tokens
        elapsed = max(time.perf_counter() - start, 1e-9)
        return f"{counts[0] / elapsed:.2f} records/s, {counts[1] / elapsed:.0f} tokens/s, {engine}"

    bar = terminal_bar(total, initial=done, desc=desc, unit="record")
    if bar is not None:
        with bar:
            def update(records: int, tokens: int, engine: str) -> None:
                bar.set_postfix_str(status(records, tokens, engine), refresh=False)
                bar.update(records)

            yield update
        return

    def log_update(records: int, tokens: int, engine: str) -> None:
        log.info("%s: %d/%d records, %s", desc, done + counts[0], total, status(records, tokens, engine))

    yield log_update
