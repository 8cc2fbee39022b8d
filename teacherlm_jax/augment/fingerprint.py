"""The teacher's identity by content, not by path: a digest of its checkpoint's files, so that a teacher
retrained at the same path is seen as another teacher (the augment job then regenerates every part).

Files are read once, streamed (memory stays flat whatever their size; hashing runs at disk speed, as
loading them does). A Hugging Face hub download is not read at all: the hub cache stores each file as
blobs/<its sha256 or git sha1>, a fingerprint stored with the checkpoint, which is reused. The result
says which method it used.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from teacherlm_jax.init_from import MODEL_CONFIG, is_run_dir
from teacherlm_jax.models.hf import resolve_checkpoint_dir

HUB_BLOB = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def checkpoint_files(checkpoint: Path) -> dict[str, Path]:
    """The files the teacher is loaded from, by name: a training run's latest checkpoint's params and
    architecture, else every file of the (Hugging Face) directory, hidden ones (caches) aside."""
    if is_run_dir(checkpoint):
        steps = [int(p.name) for p in (checkpoint / "checkpoints").iterdir() if p.name.isdigit()]
        if not steps:
            raise FileNotFoundError(f"{checkpoint}/checkpoints: no finished checkpoint to fingerprint")
        params = Path("checkpoints") / str(max(steps)) / "params"
        return {MODEL_CONFIG: checkpoint / MODEL_CONFIG,
                **{str(params / name): path for name, path in _files(checkpoint / params).items()}}
    return _files(checkpoint)


def _files(directory: Path) -> dict[str, Path]:
    paths = (p for p in directory.rglob("*") if p.is_file())
    return {str(p.relative_to(directory)): p for p in sorted(paths)
            if not any(part.startswith(".") for part in p.relative_to(directory).parts)}


def fingerprint(files: dict[str, Path]) -> dict[str, Any]:
    """{"sha256": digest of the files' names and contents, "method": how the contents were identified,
    "files": count, "bytes": total size}."""
    digest, methods, size = hashlib.sha256(), set(), 0
    for name, path in files.items():
        blob = path.resolve()
        if path.is_symlink() and blob.parent.name == "blobs" and HUB_BLOB.fullmatch(blob.name):
            content, method = blob.name, "hub blob names"
        else:
            with open(path, "rb") as f:  # streamed
                content, method = hashlib.file_digest(f, "sha256").hexdigest(), "file bytes (sha256)"
        methods.add(method)
        size += blob.stat().st_size
        digest.update(json.dumps([name, content]).encode() + b"\n")
    return {"sha256": digest.hexdigest(), "method": " + ".join(sorted(methods)), "files": len(files), "bytes": size}


def teacher_fingerprint(checkpoint: str | Path, tokenizer: str | Path | None = None) -> dict[str, Any]:
    """`fingerprint` of the checkpoint's files (a hub id: its cached download), plus the tokenizer's when it
    is a local directory of its own (the prompts' tokens depend on it)."""
    root = resolve_checkpoint_dir(checkpoint)
    files = checkpoint_files(root)
    if tokenizer is not None and Path(tokenizer).is_dir() and Path(tokenizer).resolve() != root.resolve():
        files.update({f"tokenizer/{name}": path for name, path in _files(Path(tokenizer)).items()})
    if not files:
        raise FileNotFoundError(f"{root}: no files to fingerprint the teacher by")
    return fingerprint(files)
