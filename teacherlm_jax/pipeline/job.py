"""The pipeline job (`config.job = "pipeline"`, configs/pipeline.py): TeacherLM's whole recipe in one command.

    python -m teacherlm_jax.main --config configs/pipeline.py --workdir DIR [--config.<step>.<key>=value]

The steps (`plan.build_plan`) are the project's own jobs called as library functions on their own configs,
each in WORKDIR/<step>: the training engine for teacher stages and students, the augment job, the eval
job. Before any step runs, every step is checked (`preflight`); then each runs unless its output is
reused (`state`: same fingerprint, done, outputs intact). A rerun of the same command after any stop resumes;
a rerun after an override reruns the steps it changed and the steps after them. WORKDIR/pipeline.json lists the
steps, their fingerprints and dependencies; WORKDIR/timings.json the seconds per step (summed over reruns);
WORKDIR/report.md and report.json (`report`) the results.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
from etils import epath

from teacherlm_jax.console import report_summary
from teacherlm_jax.paths import read_text, workdir_path, write_atomic
from teacherlm_jax.pipeline import state
from teacherlm_jax.pipeline.plan import REFERENCE, Step, build_plan, dependencies, split_reference
from teacherlm_jax.pipeline.preflight import preflight
from teacherlm_jax.run_config import write_config

log = logging.getLogger(__name__)
PLAN = "pipeline.json"
TIMINGS = "timings.json"


def resolve(step: Step, steps: list[Step], work: epath.Path) -> ml_collections.ConfigDict:
    """The step's config with every `@step[/path]` reference replaced by that path in the workdir."""
    names = [s.name for s in steps]

    def sub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return type(value)(sub(v) for v in value)
        if isinstance(value, str) and (m := REFERENCE.match(value)):
            target, rest = split_reference(m.group(1), names)
            return os.fspath(work / target / rest if rest else work / target)
        return value

    return ml_collections.ConfigDict(sub(step.config.to_dict()))


def run_step(step: Step, config: ml_collections.ConfigDict, out: epath.Path) -> None:
    """Runs one step's job in `out` (resuming it where its job can)."""
    if step.job == "suite":
        from teacherlm_jax.demo.suite import write_suite

        write_suite(config, out)
    elif step.job == "tokenizer":
        from teacherlm_jax.demo.suite import write_tokenizer

        write_tokenizer(config, epath.Path(config.suite), out)
    elif step.job == "train":
        from teacherlm_jax.train.loop import train

        if train(config, out) is None:
            raise SystemExit(143)  # preempted: the checkpoint is saved, rerun to resume
    elif step.job == "augment":
        from teacherlm_jax.augment import run as augment

        augment(config, os.fspath(out))
    elif step.job == "eval":
        from teacherlm_jax.eval.job import run as evaluate

        evaluate(config, os.fspath(out))
    else:
        raise ValueError(f"step {step.name}: unknown job {step.job!r}")


def _barrier(name: str) -> None:
    """All processes at this point (a step's folder is ready, or its job finished everywhere)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # no public equivalent

        multihost_utils.sync_global_devices(name)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The steps with their fingerprints, and what a run would do with each: (action, why) with action
    run | reuse | resume | rerun. Made by reading the workdir only."""

    steps: list[Step]
    digests: dict[str, str]
    upstream: dict[str, dict[str, str]]
    files: dict[str, dict[str, list]]
    hashes: state.FileHashes
    actions: dict[str, tuple[str, str]]

    @property
    def to_run(self) -> list[Step]:
        return [s for s in self.steps if self.actions[s.name][0] != "reuse"]

    def describe(self) -> str:
        """One line per step: name, job, action, why."""
        width = max(len(s.name) for s in self.steps)
        return "\n".join(f"{s.name:<{width}}  {s.job:<9} {self.actions[s.name][0]:<6}  {self.actions[s.name][1]}"
                         for s in self.steps)


def make_plan(config: ml_collections.ConfigDict, work: epath.Path) -> Plan:
    """The pipeline's steps and what to do with each, from `config` and what `work` holds (nothing written)."""
    steps = build_plan(config)
    digests: dict[str, str] = {}
    upstream: dict[str, dict[str, str]] = {}
    files: dict[str, dict[str, list]] = {}
    actions: dict[str, tuple[str, str]] = {}
    hashes = state.FileHashes(work)
    for step in steps:
        upstream[step.name] = {d: digests[d] for d in dependencies(step, steps)}
        files[step.name] = state.external_files(step, hashes)
        digests[step.name] = state.fingerprint(step, upstream[step.name], files[step.name])
        record = state.read_record(work / step.name)
        if record is None:
            actions[step.name] = ("run", "not run yet")
        elif record["state"] == state.DAMAGED:
            actions[step.name] = ("rerun", record["why"])
        elif record["fingerprint"] != digests[step.name]:
            actions[step.name] = ("rerun", state.why_changed(record, step, upstream[step.name], files[step.name]))
        elif record["state"] == "done":
            damaged = state.damaged_outputs(work / step.name, record)
            actions[step.name] = ("rerun", damaged) if damaged else ("reuse", "done, unchanged")
        else:
            actions[step.name] = ("resume", f"stopped while {record['state']}, unchanged")
    return Plan(steps, digests, upstream, files, hashes, actions)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Job entry: checks every step, runs those whose output is missing or stale, writes the report. A run
    refused by the checks has written nothing."""
    from teacherlm_jax.pipeline.report import write_report

    work = workdir_path(workdir)
    if config.get("topology"):
        log.warning("config.topology=%r plans with --dry_run only; this run ignores it", config.topology)
    plan = make_plan(config, work)
    steps, digests, upstream, files = plan.steps, plan.digests, plan.upstream, plan.files
    to_run = plan.to_run
    preflight(steps, {s.name for s in to_run})
    if jax.process_index() == 0:
        work.mkdir(parents=True, exist_ok=True)
        plan.hashes.save()
        write_config(config, work)
        write_atomic(work / PLAN, json.dumps({"steps": [
            {"step": s.name, "job": s.job, "fingerprint": digests[s.name], "after": dependencies(s, steps),
             "reused": s not in to_run} for s in steps]}, indent=2) + "\n")
    if config.get("compilation_cache"):
        # Steps of equal shapes (the students) compile the same programs: reuse them across steps and reruns.
        jax.config.update("jax_compilation_cache_dir", os.fspath(work / "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    timings_path = work / TIMINGS
    timings: dict[str, float] = json.loads(read_text(timings_path)) if timings_path.exists() else {}
    log.info("pipeline: %d steps; reused (done, unchanged): %s; to run: %s", len(steps),
             ", ".join(s.name for s in steps if s not in to_run) or "none", ", ".join(s.name for s in to_run) or "none")
    primary = jax.process_index() == 0  # one process keeps the records; every process runs every step's job
    for i, step in enumerate(to_run, 1):
        out, digest = work / step.name, digests[step.name]
        if primary:
            state.prepare(step, out, digest, upstream[step.name], files[step.name])
            state.write_record(out, step, digest, upstream[step.name], files[step.name], "running")
        _barrier(f"pipeline {step.name}")
        log.info("step %d/%d %s (%s job) in %s", i, len(to_run), step.name, step.job, out)
        started = time.perf_counter()
        resolved = resolve(step, steps, work)
        write_config(resolved, out)  # the step's config as its job ran it, beside its outputs
        run_step(step, resolved, out)
        seconds = time.perf_counter() - started
        _barrier(f"pipeline {step.name} done")
        if primary:
            state.write_record(out, step, digest, upstream[step.name], files[step.name], "done",
                               seconds=round(seconds, 1), outputs=state.output_sizes(out))
            timings[step.name] = round(timings.get(step.name, 0.0) + seconds, 1)
            write_atomic(timings_path, json.dumps(timings, indent=2) + "\n")
        log.info("step %s done in %.1fs", step.name, seconds)
    if not primary:
        return {}
    report = write_report(config, steps, work, timings={s.name: timings.get(s.name, 0.0) for s in steps})
    numbers = {"steps": f"{len(steps)} ({len(to_run)} run, {len(steps) - len(to_run)} reused)"}
    if "ablation" in report:  # one line per student, over its seeds
        numbers.update({name: f"{100 * s['accuracy_mean']:.1f}% ± {100 * s['accuracy_std']:.1f} over "
                              f"{len(s['seeds'])} seeds" for name, s in report["ablation"].items()})
    else:
        numbers.update({name: f"{100 * accuracy:.1f}%" for name, accuracy in report["students"].items()})
    if report["gain"] is not None:
        numbers["gain"] = f"{report['best_augmented']} {100 * report['gain']:+.1f} points over answers_only"
    report_summary("pipeline", numbers, {"report": work / "report.md", "steps": work / PLAN})
    return report
