"""The augment job's files on disk: part names, and summary.json + lengths.png built from the parts.

The summary is computed from the parts themselves (not from one run's memory), so it is the same
whether the output came from one run or from several killed and resumed ones, one process or many.
Throughput comes from the runs that finished (runs/*.json): per process, records and tokens over the
seconds spent generating them; processes run in parallel, so their rates add.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
RUNS = "runs"
SUMMARY = "summary.json"
HISTOGRAM = "lengths.png"


def part_path(out_dir: Path, chunk: int, chunks: int) -> Path:
    """Named by chunk, not by process: the files do not depend on how many processes wrote them."""
    return Path(out_dir) / f"part-{chunk:05d}-of-{chunks:05d}.jsonl"


def write_atomic(path: Path, text: str) -> None:
    """`text` at `path`, all or nothing: a temporary file (unique to this process), synced, renamed."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _manifest(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; {out_dir} was not written by the augment job")
    return json.loads(path.read_text())


def missing_parts(out_dir: str | Path) -> list[Path]:
    """The parts of the manifest's chunks that are not written yet."""
    chunks = _manifest(Path(out_dir))["chunks"]
    return [p for p in (part_path(Path(out_dir), c, chunks) for c in range(chunks)) if not p.exists()]


def read_parts(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every output record, in input order; a missing part is an error."""
    out_dir = Path(out_dir)
    missing = missing_parts(out_dir)
    if missing:
        raise FileNotFoundError(f"{out_dir}: {len(missing)} parts not written yet, e.g. {missing[0].name}")
    chunks = _manifest(out_dir)["chunks"]
    return [json.loads(line) for c in range(chunks)
            for line in part_path(out_dir, c, chunks).read_text(encoding="utf-8").splitlines() if line.strip()]


def _samples(value: Any) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def _throughput(out_dir: Path) -> dict[str, Any]:
    runs = sorted((json.loads(p.read_text()) for p in (out_dir / RUNS).glob("*.json")),
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
        "processes": len(per_process),
        "runs": runs,
    }


def _lengths(rows: list[dict[str, Any]], kinds: list[str]) -> dict[str, list[int]]:
    """Generated tokens of every sample, per kind."""
    return {k: [n for row in rows for n in _samples(row["new_tokens"][k])] for k in kinds}


def summarize(out_dir: str | Path, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Counts over every written record (`rows`, default read from the parts): tokens per kind (the
    paper's table of average lengths), truncated and skipped prompts per kind, and throughput."""
    out_dir = Path(out_dir)
    manifest = _manifest(out_dir)
    rows = read_parts(out_dir) if rows is None else rows
    kinds = manifest["kinds"]
    max_new = manifest["sampling"]["max_new_tokens"]
    lengths = _lengths(rows, kinds)
    prompt_tokens = {k: [row["prompt_tokens"][k] for row in rows] for k in kinds}
    mean = lambda xs: round(sum(xs) / len(xs), 2) if xs else None
    return {
        **{k: manifest[k] for k in ("dataset", "source", "split", "available", "max_records") if k in manifest},
        "records": len(rows),
        "kinds": kinds,
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
        "sampling": manifest["sampling"],
        "teacher": manifest["teacher"],
        "chunks": manifest["chunks"],
        "chunk_size": manifest["chunk_size"],
        "throughput": _throughput(out_dir),
    }


def plot_lengths(lengths: dict[str, list[int]], path: Path, title: str) -> None:
    """One histogram of generated tokens per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(lengths), figsize=(3.5 * len(lengths), 3), squeeze=False)
    for ax, (kind, values) in zip(axes[0], lengths.items()):
        ax.hist(values, bins=min(50, max(1, len(set(values)))), color="tab:blue")
        ax.set_title(f"{kind} (mean {sum(values) / max(1, len(values)):.1f})", fontsize=9)
        ax.set_xlabel("generated tokens")
    axes[0][0].set_ylabel("samples")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_summary(out_dir: str | Path) -> dict[str, Any]:
    """summary.json and lengths.png in `out_dir` (every part must be written); returns the summary."""
    out_dir = Path(out_dir)
    rows = read_parts(out_dir)
    summary = summarize(out_dir, rows)
    plot_lengths(_lengths(rows, summary["kinds"]), out_dir / HISTOGRAM, str(summary.get("dataset", out_dir.name)))
    write_atomic(out_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary
