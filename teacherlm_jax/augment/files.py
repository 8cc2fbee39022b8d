"""The augment job's files: part names, the manifest a rerun must match, reading parts. The output folder
may be a cloud URL (`teacherlm_jax.paths`).

A part holds one chunk of records, named by chunk (not by process), written whole (`paths.write_atomic`:
a temporary file renamed into place, or one object upload): it is complete or absent, whatever killed the run.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from etils import epath

from teacherlm_jax.data.records import json_object, numbered_lines
from teacherlm_jax.errors import DataError
from teacherlm_jax.paths import read_text, workdir_path, write_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RUNS = "runs"
SUMMARY = "summary.json"
HISTOGRAM = "lengths.png"
DAMAGED = "damaged"  # stale_reason's word for a part that does not read back


def part_path(out_dir: epath.Path, chunk: int, chunks: int) -> epath.Path:
    """Named by chunk, not by process: the files do not depend on how many processes wrote them."""
    return out_dir / f"part-{chunk:05d}-of-{chunks:05d}.jsonl"


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    path = workdir_path(out_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; {out_dir} was not written by the augment job")
    return json.loads(read_text(path))


def missing_parts(out_dir: str | os.PathLike) -> list[epath.Path]:
    """The parts of the manifest's chunks that are not written yet."""
    out_dir = workdir_path(out_dir)
    chunks = read_manifest(out_dir)["chunks"]
    return [p for p in (part_path(out_dir, c, chunks) for c in range(chunks)) if not p.exists()]


def read_parts(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every output record, in input order; a missing part is an error."""
    out_dir = workdir_path(out_dir)
    missing = missing_parts(out_dir)
    if missing:
        raise FileNotFoundError(f"{out_dir}: {len(missing)} parts not written yet, e.g. {missing[0].name}")
    chunks = read_manifest(out_dir)["chunks"]
    return [_json_row(where, line) for c in range(chunks)
            for where, line in numbered_lines(part_path(out_dir, c, chunks)) if line.strip()]


DAMAGED_PART = "parts are written whole, so this one was damaged or edited: rerunning the job regenerates it"


def _json_row(where: str, line: str) -> dict[str, Any]:
    try:
        return json_object(line)
    except ValueError as e:
        raise DataError(where, f"{e}; {DAMAGED_PART}") from None


def check_manifest(out_dir: epath.Path, manifest: dict[str, Any], inputs: Sequence[str]) -> list[str]:
    """Writes the manifest; returns the `inputs` keys (content the parts are generated from) whose value
    changed since it was last written, each "key: old -> new". Any other key that changed is refused: the
    parts already there were cut with other settings."""
    manifest = json.loads(json.dumps(manifest))  # tuples -> lists, as read back
    path = out_dir / MANIFEST
    old = _migrated(path, json.loads(read_text(path))) if path.exists() else manifest
    changed = [k for k in sorted(old.keys() | manifest.keys()) if old.get(k) != manifest.get(k)]
    refused = [f"{k}: {old.get(k)!r} -> {manifest.get(k)!r}" for k in changed if k not in inputs]
    if refused:
        raise ValueError(f"{path}: {out_dir} holds output written with other settings ({'; '.join(refused)}); "
                         f"rerun with the same settings to resume, or use another workdir")
    if changed or not path.exists():
        write_atomic(path, json.dumps(manifest, indent=2) + "\n")
    return [f"{k}: {_short(old.get(k))} -> {_short(manifest.get(k))}" for k in changed]


def _migrated(path: epath.Path, old: dict[str, Any]) -> dict[str, Any]:
    """A manifest written before parts carried their inputs holds `ids_sha256` (a hash of the record ids
    only) where `records_sha256` (of the records' content) now is. The retired key is dropped rather than
    compared: `records_sha256` then counts as a changed input, and every part is checked against the
    current records row by row (`stale_reason`), which keeps the parts that hold them and regenerates the
    others with the reason logged."""
    if "ids_sha256" not in old:
        return old
    log.info("%s: written by an older version (ids_sha256, a hash of record ids only); migrating it to "
             "records_sha256: each part is checked against its records row by row", path)
    return {k: v for k, v in old.items() if k != "ids_sha256"}


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 200 else text[:200] + "..."


def stale_reason(path: epath.Path, inputs: Sequence[dict[str, Any]]) -> str | None:
    """None when `path` holds the outputs of exactly these inputs (`chunks.record_inputs`, one per record);
    else why the part must be (re)generated: "missing", "damaged: <file:line>: <why>" (a part that does not
    read back), or which of its inputs changed."""
    if not path.exists():
        return "missing"
    try:
        rows = [_json_row(where, line) for where, line in numbered_lines(path) if line.strip()]
    except DataError as e:
        return f"{DAMAGED}: {e.where}: {e.reason.removesuffix('; ' + DAMAGED_PART)}"
    ids = [row.get("id") for row in rows]
    if ids != [i["id"] for i in inputs]:
        return f"its records were {ids[:3]}..., they are now {[i['id'] for i in inputs][:3]}..."
    changed = {row["id"]: [k for k in i if row.get(k) != i[k]] for row, i in zip(rows, inputs)}
    changed = {record: keys for record, keys in changed.items() if keys}
    if not changed:
        return None
    shared = set.intersection(*map(set, changed.values()))
    if len(changed) == len(rows) and shared & {"teacher", "sampling"}:
        return f"{' and '.join(sorted(shared & {'teacher', 'sampling'}))} changed"
    return "; ".join(f"record {record!r}: {', '.join(keys)} changed" for record, keys in list(changed.items())[:5]) \
        + ("; ..." if len(changed) > 5 else "")


def remove_temporary(out_dir: epath.Path, chunks: Sequence[int], total: int) -> None:
    """A killed run's temporary files of `chunks` (this process's: other processes' are theirs, and the
    workdir lock keeps a second run of this process index out)."""
    for c in chunks:
        for stale in out_dir.glob(part_path(out_dir, c, total).name + ".tmp*"):
            stale.unlink()
