"""The demo job: suite -> tokenizer -> teacher stages 1, 2, 3 -> augmentation -> students -> evaluation -> report.

Every step is one of the project's jobs run as a library call on a job config from configs/demo.py
(the training engine `train`, the augment job, the eval job); this module only writes the suite and
the tokenizer, fills in the paths that connect the steps, and skips what is complete:

    DIR/suite/{teacher_train,student_train,student_test}.jsonl   the synthetic suite (all families)
    DIR/suite/{students,test}.jsonl                              the students' families only
    DIR/tokenizer/                                               trained on the suite
    DIR/teacher/stage1, stage2, stage3_<kind>/                   training runs (hf_final/ when done)
    DIR/augment/<kind>/augmented/students/                       the stage-3 <kind> teacher's texts
    DIR/students/<name>/                                         one training run per student (its decontamination.md:
                                                                 overlap of its training examples with the test set)
    DIR/eval/<name>/eval/metrics.json                            the eval job's output per model
    DIR/timings.json                                             seconds per step, summed over reruns
    DIR/report.md, report.json, *.png                            teacherlm_jax/demo/report.py

A step is complete when its final output exists (`done.json` beside a run, the augment summary, the
eval metrics); a killed run resumes inside the interrupted step (the engine from its checkpoint, the
augment job from its parts) and skips the complete ones.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections

from teacherlm_jax.data.formats import KINDS
from teacherlm_jax.data.synthetic import SPLITS, make_suite
from teacherlm_jax.demo.tokenizer import train_tokenizer

log = logging.getLogger(__name__)

DONE = "done.json"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)  # a file is complete or absent


def student_families(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Whose questions the students learn and are tested on: `config.student_families`, else the
    held-out families, else every family."""
    suite = config.suite
    chosen = tuple(config.student_families) or tuple(suite.heldout_families) or tuple(suite.families)
    unknown = sorted(set(chosen) - set(suite.families))
    if unknown:
        raise ValueError(f"config.student_families: {unknown} are not among config.suite.families {tuple(suite.families)}")
    return chosen


def write_suite(config: ml_collections.ConfigDict, out: Path) -> dict[str, Path]:
    """The suite's splits, plus the students' training and test questions (their families only)."""
    paths = {name: out / f"{name}.jsonl" for name in (*SPLITS, "students", "test")}
    if all(p.is_file() for p in paths.values()):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    s = config.suite
    suite = make_suite(int(s.seed), n_teacher_per_family=int(s.n_teacher_per_family),
                       n_train_per_family=int(s.n_train_per_family), n_test_per_family=int(s.n_test_per_family),
                       families=tuple(s.families), heldout_families=tuple(s.heldout_families))
    families = set(student_families(config))
    for split in SPLITS:
        _write_jsonl(paths[split], suite[split])
    _write_jsonl(paths["students"], [r for r in suite["student_train"] if r["subject"] in families])
    _write_jsonl(paths["test"], [r for r in suite["student_test"] if r["subject"] in families])
    return paths


def suite_texts(paths: dict[str, Path]):
    """Every text a model of the demo reads or writes, for training the tokenizer."""
    from teacherlm_jax.data.examples import STYLES, annotated, build_pairs
    from teacherlm_jax.data.registry import load_records

    for split in SPLITS:
        items = [annotated(r) for r in load_records(str(paths[split]))]
        for style in STYLES:
            for fmt in ("answer", "mixed"):
                for pair in build_pairs(items, fmt, style):
                    yield pair.prompt + pair.target


def tokenizer_dir(config: ml_collections.ConfigDict, work: Path, paths: dict[str, Path]) -> str:
    """`config.tokenizer.init_from`, else a real teacher's (`config.teacher.init_from`), else one trained on
    the suite (once)."""
    given = config.tokenizer.get("init_from") or config.teacher.get("init_from")
    if given:
        return str(given)
    out = work / "tokenizer"
    if not (out / "tokenizer.json").is_file():
        tmp = work / "tokenizer.tmp"
        train_tokenizer(suite_texts(paths), tmp, vocab_size=int(config.tokenizer.vocab_size))
        os.replace(tmp, out)
    return str(out)


def from_checkpoint(model: ml_collections.ConfigDict, init_from: str) -> ml_collections.ConfigDict:
    """A `config.model` section for `init_from`: the architecture is the checkpoint's, so only the keys
    saying how to run it are kept (a fresh model's sizes would not match a real checkpoint's)."""
    from teacherlm_jax.models.param_map import RUN_FIELDS

    keep = {k: model[k] for k in ("family", *RUN_FIELDS) if k in model}
    return ml_collections.ConfigDict({**keep, "init_from": init_from})


def train_stage(stage: ml_collections.ConfigDict, run_dir: Path, *, datasets: tuple[str, ...], tokenizer: str,
                init_from: str | None = None, fmt: str | None = None, decontaminate: tuple[str, ...] = ()) -> Path:
    """Runs (or resumes, or skips when done) one training job; returns its run directory. `decontaminate`:
    evaluation sets whose overlap with the training examples the run reports (decontamination.json/.md)."""
    from teacherlm_jax.train.loop import train

    if (run_dir / DONE).is_file():
        return run_dir
    config = ml_collections.ConfigDict(stage.to_dict())
    config.tokenizer = tokenizer
    config.data.datasets = datasets
    config.data.decontaminate = tuple(decontaminate) or tuple(config.data.get("decontaminate", ()))
    if fmt is not None:
        config.data.format = fmt
    if init_from is not None:
        config.model = from_checkpoint(config.model, init_from)
    started = time.perf_counter()
    if train(config, run_dir) is None:
        raise SystemExit(143)  # preempted: the checkpoint is saved, rerun to resume
    (run_dir / DONE).write_text(json.dumps({"seconds": round(time.perf_counter() - started, 1)}) + "\n")
    return run_dir


def augment(config: ml_collections.ConfigDict, out: Path, teacher: Path, kind: str,
            datasets: tuple[str, ...]) -> tuple[Path, ...]:
    """The augment job with the stage-3 `kind` teacher on `datasets`; returns its output directories."""
    from teacherlm_jax.augment import resolve_dataset
    from teacherlm_jax.augment import run as augment_run

    results = tuple(out / "augmented" / resolve_dataset(d).name for d in datasets)
    if all((r / "summary.json").is_file() for r in results):
        return results
    job = ml_collections.ConfigDict(config.augment.to_dict())
    job.teacher.init_from = str(teacher)
    job.datasets = datasets
    job.kinds = (kind,)
    augment_run(job, str(out))
    return results


def evaluate(config: ml_collections.ConfigDict, out: Path, model_dir: Path, tests: tuple[str, ...],
             mode: str) -> dict[str, Any]:
    """The eval job on the test questions; returns its metrics for the (one) test task."""
    from teacherlm_jax.eval.job import run as eval_run

    metrics_path = out / "eval" / "metrics.json"
    if not metrics_path.is_file():
        job = ml_collections.ConfigDict(config.eval.to_dict())
        job.model.init_from = str(model_dir)
        job.tasks = tests
        job.mode = mode
        eval_run(job, str(out))
    tasks = json.loads(metrics_path.read_text())["tasks"]
    if len(tasks) != 1:
        raise ValueError(f"{metrics_path}: expected one task, found {sorted(tasks)}")
    return next(iter(tasks.values()))


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Job entry (`config.job = "demo"`)."""
    from teacherlm_jax.demo.report import write_report

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    if config.compilation_cache:
        # Stages with the same shapes and settings (the students) compile the same programs: reuse them.
        jax.config.update("jax_compilation_cache_dir", str(work / "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    # Seconds per step, summed over runs: a resumed step adds its remainder, a skipped one about 0.
    timings_path = work / "timings.json"
    timings: dict[str, float] = json.loads(timings_path.read_text()) if timings_path.is_file() else {}

    def timed(name: str, fn, *args, **kwargs):
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        elapsed = time.perf_counter() - started
        timings[name] = round(timings.get(name, 0.0) + elapsed, 1)
        timings_path.write_text(json.dumps(timings, indent=2) + "\n")
        log.info("demo: %s finished in %.1fs", name, elapsed)
        return result

    paths = timed("suite", write_suite, config, work / "suite")
    tokenizer = timed("tokenizer", tokenizer_dir, config, work, paths)
    data = {name: (tuple(config.datasets[name]) if config.datasets.get(name) else (str(paths[name]),))
            for name in ("teacher_train", "students", "test")}
    teacher_data = data["teacher_train"]
    t = config.teacher
    stage1 = timed("teacher/stage1", train_stage, t.stage1, work / "teacher" / "stage1", datasets=teacher_data,
                   tokenizer=tokenizer, init_from=t.get("init_from"))
    stage2 = timed("teacher/stage2", train_stage, t.stage2, work / "teacher" / "stage2", datasets=teacher_data,
                   tokenizer=tokenizer, init_from=str(stage1))
    kinds = tuple(t.kinds)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"config.teacher.kinds={kinds}: expected a non-empty tuple out of {KINDS}")
    stage3 = {k: timed(f"teacher/stage3_{k}", train_stage, t.stage3, work / "teacher" / f"stage3_{k}",
                       datasets=teacher_data, tokenizer=tokenizer, init_from=str(stage2), fmt=k) for k in kinds}
    augmented = {k: timed(f"augment/{k}", augment, config, work / "augment" / k, stage3[k], k, data["students"])
                 for k in kinds}

    base = {"none": None, "stage1": str(stage1)}.get(config.student_base, config.student_base)
    students: dict[str, Path] = {}
    for name, student in config.students.items():
        fmt = student.train.data.format
        needed = kinds if fmt == "mixed" else (fmt,) if fmt in KINDS else ()
        missing = sorted(set(needed) - set(kinds))
        if missing:
            raise ValueError(f"config.students.{name}: format {fmt!r} needs teacher kinds {missing}, "
                             f"which config.teacher.kinds={kinds} does not train")
        # Answers-only students read the questions; the others the teacher's texts (never the gold ones).
        datasets = tuple(str(d) for k in needed for d in augmented[k]) or data["students"]
        students[name] = timed(f"students/{name}", train_stage, student.train, work / "students" / name,
                               datasets=datasets, tokenizer=tokenizer, init_from=base, decontaminate=data["test"])

    results = {"teacher": timed("eval/teacher", evaluate, config, work / "eval" / "teacher", stage1, data["test"],
                                "loglik")}
    for name, run_dir in students.items():
        results[name] = timed(f"eval/{name}", evaluate, config, work / "eval" / name, run_dir, data["test"],
                              config.students[name].mode)
    write_report(config, work, results=results, augmented=augmented, timings=timings)
