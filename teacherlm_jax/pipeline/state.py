"""Which steps are done, and whether a done step's output still answers its config.

A step's fingerprint is a hash of its config (references as written, `plan.HOW_TO_RUN` keys left out),
the fingerprints of the steps it references, and the contents of the files outside the workdir its config
names (datasets, checkpoints: a dataset edited or a checkpoint replaced at the same path is another input,
while the same files copied to another machine are not). File digests are kept in
WORKDIR/pipeline_file_hashes.json by path, size and modification time, so a rerun reads only files that
changed (a 14 GB checkpoint is hashed once, at disk speed). A step records
its fingerprint in WORKDIR/<step>/pipeline_step.json when it starts (`running`) and when it ends
(`done`): a done step with the same fingerprint is reused; a step whose fingerprint changed is deleted and
rerun, and since the steps after it reference it, their fingerprints change too. A `running` step with
the same fingerprint resumes inside its job (training from its checkpoint, augmentation from its parts).
A done step's record also lists its files and their sizes (`outputs`): a file since gone or resized (a damaged
output) makes the step run again, resuming inside its job, which redoes what is damaged.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from etils import epath

from teacherlm_jax.paths import file_sizes, is_url, read_text, write_atomic
from teacherlm_jax.pipeline.plan import HOW_TO_RUN, Step, walk

log = logging.getLogger(__name__)
RECORD = "pipeline_step.json"
DAMAGED = "damaged"  # a record's state when the record itself does not read
HASHES = "pipeline_file_hashes.json"


def fingerprint_config(step: Step) -> dict[str, Any]:
    """The step's config as it counts for its fingerprint, as JSON reads it back (tuples as lists)."""
    config = {k: v for k, v in sorted(step.config.to_dict().items()) if k not in HOW_TO_RUN}
    return json.loads(json.dumps(config, default=str))


class FileHashes:
    """sha256 of local files, remembered by (size, mtime) in WORKDIR/pipeline_file_hashes.json."""

    def __init__(self, work: epath.Path):
        self.path = work / HASHES
        self.known: dict[str, list] = json.loads(read_text(self.path)) if self.path.exists() else {}

    def digest(self, path: Path) -> str:
        stat = path.stat()
        key = os.path.abspath(path)
        size_mtime = [stat.st_size, stat.st_mtime_ns]
        if self.known.get(key, [None, None, None])[:2] != size_mtime:
            with open(path, "rb") as f:  # streamed
                self.known[key] = [*size_mtime, hashlib.file_digest(f, "sha256").hexdigest()]
        return self.known[key][2]

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.known, indent=1, sort_keys=True) + "\n")


def external_files(step: Step, hashes: FileHashes) -> dict[str, list]:
    """{path: [[relative file, sha256], ...]} for every local file or folder the config names."""
    found: dict[str, list] = {}
    for _, value in walk(step.config.to_dict()):
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if not isinstance(v, str) or v.startswith("@") or is_url(v) or not v or "\n" in v:
                continue
            path = Path(os.path.expanduser(v))
            if path.is_file():
                found[v] = [[path.name, hashes.digest(path)]]
            elif path.is_dir():
                found[v] = [[str(p.relative_to(path)), hashes.digest(p)]
                            for p in sorted(path.rglob("*")) if p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    return found


def fingerprint(step: Step, upstream: dict[str, str], files: dict[str, list]) -> str:
    """The step's fingerprint from its config, its upstream steps' fingerprints and `external_files`."""
    payload = {"job": step.job, "mode": step.mode, "config": fingerprint_config(step), "upstream": upstream,
               "files": files}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def read_record(step_dir: epath.Path) -> dict[str, Any] | None:
    """The step's record; None when there is none. One that does not read (damaged) is a record of a step that
    must run again from scratch: {"state": "damaged", "why": ...} with no fingerprint."""
    path = step_dir / RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(read_text(path))
        if isinstance(record, dict) and {"fingerprint", "state", "config"} <= record.keys():
            return record
        reason = "not a step record"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        reason = f"{type(e).__name__}: {e}"
    return {"state": DAMAGED, "fingerprint": None, "why": f"its {path} cannot be read ({reason})"}


def write_record(step_dir: epath.Path, step: Step, digest: str, upstream: dict[str, str], files: dict[str, list],
                 state: str, **extra: Any) -> None:
    step_dir.mkdir(parents=True, exist_ok=True)
    record = {"step": step.name, "job": step.job, "state": state, "fingerprint": digest,
              "config": fingerprint_config(step), "upstream": upstream, "files": files, **extra}
    write_atomic(step_dir / RECORD, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def output_sizes(step_dir: epath.Path) -> dict[str, int]:
    """The step's files and their sizes, less its record: what a done step leaves for the steps after it."""
    return {name: size for name, size in file_sizes(step_dir).items() if name != RECORD}


def damaged_outputs(step_dir: epath.Path, record: dict[str, Any]) -> str | None:
    """Why a done step's outputs cannot be reused (files its record lists that are gone or changed size), else
    None. A record without `outputs` (written before they were listed) is taken as it is."""
    if "outputs" not in record:
        return None
    now = output_sizes(step_dir) if step_dir.exists() else {}
    gone = [name for name in record["outputs"] if name not in now]
    resized = [f"{name} ({size} -> {now[name]} bytes)" for name, size in record["outputs"].items()
               if name in now and now[name] != size]
    found = [f"{what}: {', '.join(sorted(names)[:3])}{', ...' if len(names) > 3 else ''}"
             for what, names in (("gone", gone), ("changed size", resized)) if names]
    return f"done, but its outputs are damaged: {'; '.join(found)}" if found else None


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for each config key that differs (what a person needs to see why a step reruns)."""
    before, after = dict(walk(old)), dict(walk(new))
    return [f"{k}: {before.get(k, '(unset)')!r} -> {after.get(k, '(unset)')!r}"
            for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]


def why_changed(record: dict[str, Any], step: Step, upstream: dict[str, str], files: dict[str, list]) -> str:
    """What differs from the run that made the folder: config keys, earlier steps, files read."""
    reasons = changes(record["config"], fingerprint_config(step))
    before = record.get("upstream", {})
    reasons += [f"step {name} changed" for name in sorted(set(before) | set(upstream))
                if before.get(name) != upstream.get(name)]
    read = record.get("files", {})
    reasons += [f"{path} changed" for path in sorted(set(read) | set(files)) if read.get(path) != files.get(path)]
    return "; ".join(reasons) or "its fingerprint changed"


def prepare(step: Step, step_dir: epath.Path, digest: str, upstream: dict[str, str], files: dict[str, list]) -> None:
    """Makes the folder ready to run the step: kept to resume when the same step was stopped, emptied when
    it held another (the log says what changed)."""
    record = read_record(step_dir)
    if record is not None and record["fingerprint"] == digest:
        log.info("step %s: resuming in %s", step.name, step_dir)
        return
    if record is None:
        if step_dir.exists() and any(step_dir.iterdir()):
            raise FileExistsError(f"{step_dir} holds files but no {RECORD}: it was not written by this pipeline's "
                                  f"step {step.name}; move it away (nothing is deleted that the pipeline did not make)")
        return
    why = record["why"] if record["state"] == DAMAGED else why_changed(record, step, upstream, files)
    log.info("step %s: %s; deleting %s and rerunning it", step.name, why, step_dir)
    step_dir.rmtree()
