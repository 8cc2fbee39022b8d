"""The augment job's files on disk: part names, atomic writes, the manifest a rerun must match, reading parts.

A part holds one chunk of records, named by chunk (not by process), written whole to a temporary file
and renamed into place: it is complete or absent, whatever killed the run.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from teacherlm_jax.data import Record

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


def read_manifest(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; {out_dir} was not written by the augment job")
    return json.loads(path.read_text())


def missing_parts(out_dir: str | Path) -> list[Path]:
    """The parts of the manifest's chunks that are not written yet."""
    chunks = read_manifest(Path(out_dir))["chunks"]
    return [p for p in (part_path(Path(out_dir), c, chunks) for c in range(chunks)) if not p.exists()]


def read_parts(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every output record, in input order; a missing part is an error."""
    out_dir = Path(out_dir)
    missing = missing_parts(out_dir)
    if missing:
        raise FileNotFoundError(f"{out_dir}: {len(missing)} parts not written yet, e.g. {missing[0].name}")
    chunks = read_manifest(out_dir)["chunks"]
    return [json.loads(line) for c in range(chunks)
            for line in part_path(out_dir, c, chunks).read_text(encoding="utf-8").splitlines() if line.strip()]


def check_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest, or check that the parts already there were written with these settings."""
    manifest = json.loads(json.dumps(manifest))  # tuples -> lists, as read back
    path = out_dir / MANIFEST
    if not path.exists():
        write_atomic(path, json.dumps(manifest, indent=2) + "\n")
        return
    old = json.loads(path.read_text())
    changed = [f"{k}: {old.get(k)!r} -> {manifest.get(k)!r}" for k in sorted(old.keys() | manifest.keys())
               if old.get(k) != manifest.get(k)]
    if changed:
        raise ValueError(f"{path}: {out_dir} holds output written with other settings ({'; '.join(changed)}); "
                         f"rerun with the same settings to resume, or use another workdir")


def part_done(path: Path, chunk: Sequence[Record]) -> bool:
    """Whether `path` exists; it must then hold exactly the chunk's records (it was renamed into place whole)."""
    if not path.exists():
        return False
    ids = [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if ids != [r.id for r in chunk]:
        raise ValueError(f"{path}: holds records {ids[:3]}... but this chunk is {[r.id for r in chunk][:3]}...; "
                         f"it was written from other input. Delete it, or use another workdir")
    return True


def remove_temporary(out_dir: Path, chunks: Sequence[int], total: int) -> None:
    """A killed run's temporary files of `chunks` (this process's: other processes' are theirs)."""
    for c in chunks:
        for stale in out_dir.glob(part_path(out_dir, c, total).name + ".tmp*"):
            stale.unlink()
