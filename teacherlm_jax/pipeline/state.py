"""Which steps are done, and whether a done step's output still answers its config.

A step's fingerprint is a hash of its config (references as written, `plan.HOW_TO_RUN` keys left out),
the fingerprints of the steps it references, and the files outside the workdir its config names (each
file's name, size and modification time: a dataset edited or a checkpoint replaced at the same path is
another input; contents are not read, so a 14 GB checkpoint costs nothing to fingerprint). A step records
its fingerprint in WORKDIR/<step>/pipeline_step.json when it starts (`running`) and when it ends
(`done`): a done step with the same fingerprint is reused; a step whose fingerprint changed is deleted and
rerun, and since the steps after it reference it, their fingerprints change too. A `running` step with
the same fingerprint resumes inside its job (training from its checkpoint, augmentation from its parts).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from etils import epath

from teacherlm_jax.paths import is_url, write_atomic
from teacherlm_jax.pipeline.plan import HOW_TO_RUN, Step, walk

log = logging.getLogger(__name__)
RECORD = "pipeline_step.json"


def fingerprint_config(step: Step) -> dict[str, Any]:
    """The step's config as it counts for its fingerprint, as JSON reads it back (tuples as lists)."""
    config = {k: v for k, v in sorted(step.config.to_dict().items()) if k not in HOW_TO_RUN}
    return json.loads(json.dumps(config, default=str))


def external_files(step: Step) -> dict[str, list]:
    """{path: [[relative file, size, mtime_ns], ...]} for every local file or folder the config names."""
    found: dict[str, list] = {}
    for _, value in walk(step.config.to_dict()):
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if not isinstance(v, str) or v.startswith("@") or is_url(v) or not v or "\n" in v:
                continue
            path = Path(os.path.expanduser(v))
            if path.is_file():
                found[v] = [[path.name, path.stat().st_size, path.stat().st_mtime_ns]]
            elif path.is_dir():
                found[v] = [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns]
                            for p in sorted(path.rglob("*")) if p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    return found


def fingerprint(step: Step, upstream: dict[str, str]) -> str:
    payload = {"job": step.job, "mode": step.mode, "config": fingerprint_config(step), "upstream": upstream,
               "files": external_files(step)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def read_record(step_dir: epath.Path) -> dict[str, Any] | None:
    path = step_dir / RECORD
    return json.loads(path.read_text()) if path.exists() else None


def write_record(step_dir: epath.Path, step: Step, digest: str, upstream: dict[str, str], state: str,
                 **extra: Any) -> None:
    step_dir.mkdir(parents=True, exist_ok=True)
    record = {"step": step.name, "job": step.job, "state": state, "fingerprint": digest,
              "config": fingerprint_config(step), "upstream": upstream, "files": external_files(step), **extra}
    write_atomic(step_dir / RECORD, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for each config key that differs (what a person needs to see why a step reruns)."""
    before, after = dict(walk(old)), dict(walk(new))
    return [f"{k}: {before.get(k, '(unset)')!r} -> {after.get(k, '(unset)')!r}"
            for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]


def is_done(step_dir: epath.Path, digest: str) -> bool:
    """Whether the step's output in `step_dir` is complete and made from the same fingerprint."""
    record = read_record(step_dir)
    return record is not None and record["fingerprint"] == digest and record["state"] == "done"


def why_changed(record: dict[str, Any], step: Step, upstream: dict[str, str]) -> str:
    """What differs from the run that made the folder: config keys, earlier steps, files read."""
    reasons = changes(record["config"], fingerprint_config(step))
    before = record.get("upstream", {})
    reasons += [f"step {name} changed" for name in sorted(set(before) | set(upstream))
                if before.get(name) != upstream.get(name)]
    files = external_files(step)
    reasons += [f"{path} changed" for path in sorted(set(record.get("files", {})) | set(files))
                if json.loads(json.dumps(record.get("files", {}).get(path))) != json.loads(json.dumps(files.get(path)))]
    return "; ".join(reasons) or "its fingerprint changed"


def prepare(step: Step, step_dir: epath.Path, digest: str, upstream: dict[str, str]) -> None:
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
    log.info("step %s: %s; deleting %s and rerunning it", step.name, why_changed(record, step, upstream), step_dir)
    step_dir.rmtree()
