"""The pipeline's steps, from its config: which jobs run, on which configs, after which steps.

Steps connect through references: a string value `@<step>` or `@<step>/<path>` anywhere in a step's
config (a model's `init_from`, a dataset, a tokenizer) names that step's output folder WORKDIR/<step>
(a training run's folder, whose `hf_final` export the model resolver picks) or a file in it. A step
depends on the steps it references; the pipeline fills in the references that chain TeacherLM's recipe:

    suite, tokenizer                    (the demo only) the synthetic suite's files; a tokenizer trained on them
    teacher/<stage>                     config.teacher.stages in order, each from the previous one's model
                                        (the first from config.teacher.init_from); stage3 is one run per kind
                                        of config.teacher.kinds, `teacher/stage3_<kind>`, each from the stage
                                        before stage 3
    augment/<kind> | augment/all        config.augment on its datasets, by each stage-3 teacher for its kind,
                                        or (no stage 3) by the last teacher for every kind
    augment/<kind>-<student>            a student with its own `sampling` (overrides of config.augment.sampling,
                                        e.g. Fine-tune-CoT's several samples at temperature > 0): the same
                                        augmentation with those settings, for the kinds that student reads
    students/<name>                     config.students.<name>.train; its datasets default to the augment
                                        output its format needs (answers-only: the augmented questions);
                                        its model to config.student_base. With config.seeds (training seeds),
                                        one run per seed, `students/<name>/seed<k>` (config `seed` = k)
    eval/teacher, eval/<student>        config.eval on config.eval.tasks, for config.teacher.evaluate and
                                        each student run (in its `mode`): `eval/<name>[/seed<k>]`
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import ml_collections

from teacherlm_jax.data.formats import KINDS
from teacherlm_jax.errors import ConfigError

REFERENCE = re.compile(r"^@([A-Za-z0-9_.\-/]+)$")
STAGES = ("stage1", "stage2", "stage3")
JOBS = ("suite", "tokenizer", "train", "augment", "eval")
# Keys that say how a step runs, not what it computes: left out of its fingerprint.
HOW_TO_RUN = ("distributed", "mesh", "mesh_scope", "rules", "process_index", "process_count")
# A fresh model's architecture keys are dropped when the pipeline starts a run from a checkpoint (whose
# architecture and family it is); these say how to run it and are kept.
MODEL_RUN_KEYS = ("dtype", "param_dtype", "scan_layers", "remat_policy")


@dataclasses.dataclass(frozen=True)
class Step:
    """One job run of the pipeline: `job` on `config` (references unresolved) in WORKDIR/`name`.
    `key` is where the config lives in the pipeline config (for error messages and overrides)."""

    name: str
    job: str
    config: ml_collections.ConfigDict
    key: str
    mode: str | None = None  # eval steps: loglik | generate

    def references(self) -> list[str]:
        return sorted({ref for _, value in walk(self.config.to_dict()) for ref in _refs(value)})


def walk(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf value) of a config dict, tuples and lists as leaves."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from walk(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, tree


def _refs(value: Any) -> Iterator[str]:
    for v in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(v, str) and (m := REFERENCE.match(v)):
            yield m.group(1)


def split_reference(ref: str, steps: list[str]) -> tuple[str, str]:
    """(step, path inside its folder) for a reference's body `teacher/stage1/hf_final`: the longest step name
    it starts with."""
    for name in sorted(steps, key=len, reverse=True):
        if ref == name or ref.startswith(name + "/"):
            return name, ref[len(name) + 1:]
    raise KeyError(ref)


def _copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(config.to_dict())


def _from_checkpoint(model: ml_collections.ConfigDict, init_from: str) -> ml_collections.ConfigDict:
    """A `config.model` section starting from `init_from`: the checkpoint's architecture, this section's
    settings for running it."""
    keep = {k: model[k] for k in MODEL_RUN_KEYS if k in model and model[k] is not None}
    return ml_collections.ConfigDict({**keep, "init_from": init_from})


def _train_step(name: str, key: str, train: ml_collections.ConfigDict, *, init_from: str | None,
                tokenizer: str | None, datasets: tuple[str, ...] | None = None,
                fmt: str | None = None) -> Step:
    config = _copy(train)
    config.job = "train"
    if init_from is not None:
        config.model = _from_checkpoint(config.model, init_from)
    if tokenizer is not None:
        config.tokenizer = tokenizer
    if datasets is not None and not tuple(config.data.get("datasets") or ()):
        config.data.datasets = datasets
    if fmt is not None:
        config.data.format = fmt
    config.export_hf = True  # later steps start from, and are evaluated on, the Hugging Face export
    return Step(name, "train", config, key)


def teacher_kinds(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    kinds = tuple(config.teacher.kinds)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        raise ConfigError(f"config.teacher.kinds={kinds}: expected distinct kinds out of {KINDS}")
    return kinds


def build_plan(config: ml_collections.ConfigDict) -> list[Step]:
    """Every step of the pipeline, each after the steps it references."""
    steps: list[Step] = []
    if config.get("suite") is not None:
        steps.append(Step("suite", "suite", _copy(config.suite), "suite"))
    tokenizer = config.tokenizer.get("init_from")
    if not tokenizer and config.tokenizer.get("vocab_size") and not config.teacher.get("init_from"):
        # trained on the suite (a real teacher brings its own)
        if config.get("suite") is None:
            raise ConfigError("config.tokenizer.vocab_size (a tokenizer trained on the suite) needs config.suite")
        trained = _copy(config.tokenizer)
        trained.suite = "@suite"
        steps.append(Step("tokenizer", "tokenizer", trained, "tokenizer"))
        tokenizer = "@tokenizer"

    teacher = config.teacher
    stages = tuple(teacher.stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown or list(stages) != sorted(stages) or len(set(stages)) != len(stages):
        raise ConfigError(f"config.teacher.stages={stages}: expected stages out of {STAGES}, in order, once each")
    kinds = teacher_kinds(config)
    previous = teacher.get("init_from")
    for stage in stages:
        if stage == "stage3":
            stage3 = {kind: _train_step(f"teacher/stage3_{kind}", "teacher.stage3", teacher.stage3,
                                        init_from=previous, tokenizer=tokenizer, fmt=kind) for kind in kinds}
            steps.extend(stage3.values())
        else:
            step = _train_step(f"teacher/{stage}", f"teacher.{stage}", teacher[stage], init_from=previous,
                               tokenizer=tokenizer)
            if step.config.data.get("format") == "mixed" and not dict(step.config.data.get("kind_ratios") or {}):
                step.config.data.kind_ratios = {kind: 1.0 for kind in kinds}  # personalization: every kind taught
            steps.append(step)
            previous = f"@teacher/{stage}"

    # Augmentation: each stage-3 teacher writes its kind; without stage 3, the last teacher writes every kind.
    writers = ({kind: f"@teacher/stage3_{kind}" for kind in kinds} if "stage3" in stages
               else {"all": previous} if previous else {})
    augmented: dict[str, str] = {}  # kind -> augment step ("all": every kind)
    if config.get("augment") is not None and tuple(config.augment.datasets) and writers:
        for part, writer in writers.items():
            job = _copy(config.augment)
            job.teacher.init_from = writer
            job.kinds = kinds if part == "all" else (part,)
            if tokenizer is not None and not job.get("tokenizer"):
                job.tokenizer = tokenizer
            steps.append(Step(f"augment/{part}", "augment", job, "augment"))
            augmented.update({k: f"augment/{part}" for k in job.kinds})

    students = config.get("students") or {}
    base = config.get("student_base")
    seeds = _seeds(config)
    runs: dict[str, tuple[str, str]] = {}  # student run (its name in eval/, reports) -> (student, eval mode)
    for name, student in students.items():
        fmt = student.train.data.format
        needed = kinds if fmt == "mixed" else (fmt,) if fmt in KINDS else ()
        missing = sorted(set(needed) - set(augmented))
        if missing:
            raise ConfigError(f"config.students.{name}.train.data.format={fmt!r} needs the teacher's {missing} "
                              f"texts, which no augment step writes (config.teacher.kinds={kinds}, "
                              f"config.teacher.stages={stages}, config.augment.datasets)")
        reads = augmented
        if student.get("sampling"):
            if not needed:
                raise ConfigError(f"config.students.{name}.sampling: its data.format={fmt!r} reads no teacher "
                                  f"texts to sample; remove it")
            reads = _sampled_augments(config, name, needed, augmented, steps)
        datasets = _student_datasets(config, needed, reads)
        own_init = student.train.model.get("init_from")
        for run in [name] if seeds is None else [f"{name}/seed{seed}" for seed in seeds]:
            step = _train_step(f"students/{run}", f"students.{name}.train", student.train,
                               init_from=None if own_init else base, tokenizer=tokenizer, datasets=datasets)
            if seeds is not None:
                step.config.seed = int(run.rsplit("seed", 1)[1])
            steps.append(step)
            runs[run] = (name, student.mode)

    if config.get("eval") is not None and tuple(config.eval.tasks):
        evaluated = {}
        chosen = teacher.get("evaluate")
        if chosen in STAGES:
            if chosen not in stages or chosen == "stage3":
                raise ConfigError(f"config.teacher.evaluate={chosen!r}: expected stage1 or stage2 out of "
                                  f"config.teacher.stages={stages}, a model, or '' for none")
            chosen = f"@teacher/{chosen}"
        if chosen:
            evaluated["teacher"] = (chosen, "loglik")
        from teacherlm_jax.eval.job import MODES

        for run, (name, mode) in runs.items():
            if mode not in MODES:
                raise ConfigError(f"config.students.{name}.mode={mode!r}; expected one of {MODES}")
            evaluated[run] = (f"@students/{run}", mode)
        for name, (model, mode) in evaluated.items():
            job = _copy(config.eval)
            job.model.init_from = model
            job.mode = mode
            if tokenizer is not None and not job.get("tokenizer"):
                job.tokenizer = tokenizer
            steps.append(Step(f"eval/{name}", "eval", job, "eval", mode=mode))
    check_references(steps)
    return steps


def _seeds(config: ml_collections.ConfigDict) -> tuple[int, ...] | None:
    """config.seeds: the students' training seeds (one run each), or None (one run, its own config.seed)."""
    seeds = config.get("seeds")
    if seeds is None:
        return None
    seeds = tuple(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"config.seeds={seeds}: expected distinct integers >= 0 (or None: one run per student)")
    return seeds


def _sampled_augments(config: ml_collections.ConfigDict, name: str, needed: tuple[str, ...],
                      augmented: dict[str, str], steps: list[Step]) -> dict[str, str]:
    """Adds the augment steps of a student with its own `sampling`: for each augment step writing a kind it
    reads, the same job with config.augment.sampling overridden; returns {kind: step} for that student."""
    sampling = config.students[name].sampling.to_dict()
    unknown = sorted(set(sampling) - set(config.augment.sampling))
    if unknown:
        raise ConfigError(f"config.students.{name}.sampling: unknown keys {unknown}; "
                          f"expected keys of config.augment.sampling {sorted(config.augment.sampling)}")
    by_step = {s.name: s for s in steps}
    reads: dict[str, str] = {}
    for source in dict.fromkeys(augmented[k] for k in needed):
        job = _copy(by_step[source].config)
        job.sampling.update(sampling)
        job.kinds = tuple(k for k in job.kinds if k in needed)
        step = Step(f"{source}-{name}", "augment", job, "augment")  # checks name the key of augment it failed
        steps.append(step)
        reads.update({k: step.name for k in job.kinds if k in needed})
    return reads


def students_own_augment(step: Step) -> bool:
    """Whether `step` is a student's own augment step (`augment/<kind>-<student>`, its `sampling`)."""
    return step.job == "augment" and "-" in step.name


def _student_datasets(config: ml_collections.ConfigDict, needed: tuple[str, ...],
                      augmented: dict[str, str]) -> tuple[str, ...]:
    """The augment outputs a student of these kinds reads; the augmented datasets themselves when it
    needs no teacher text (answers only)."""
    from teacherlm_jax.augment import resolve_dataset

    questions = tuple(config.augment.datasets) if config.get("augment") is not None else ()
    if not needed:
        return questions
    names = []
    for i, dataset in enumerate(questions):
        try:
            names.append(output_name(dataset, resolve_dataset))
        except ValueError as e:
            raise ConfigError(f"config.augment.datasets[{i}]: {e}") from None
    return tuple(f"@{step}/augmented/{name}"
                 for step in dict.fromkeys(augmented[k] for k in needed)  # one step may write several kinds
                 for name in names)


def output_name(dataset: str, resolve) -> str:
    """The augment job's output folder name for `dataset` (a reference resolves to its file's stem)."""
    if dataset.startswith("@"):
        return dataset.rsplit("/", 1)[-1].removesuffix(".jsonl")
    return resolve(dataset).name


def check_references(steps: list[Step]) -> None:
    """Every reference names an earlier step (so the plan runs in order)."""
    seen: list[str] = []
    names = [s.name for s in steps]
    for step in steps:
        for ref in step.references():
            try:
                target, _ = split_reference(ref, names)
            except KeyError:
                raise ConfigError(f"config.{step.key}: @{ref} names no step of this pipeline; steps: {names}") from None
            if target not in seen:
                raise ConfigError(f"config.{step.key}: @{ref} is a step that runs after {step.name}")
        seen.append(step.name)


def dependencies(step: Step, steps: list[Step]) -> list[str]:
    names = [s.name for s in steps]
    return sorted({split_reference(ref, names)[0] for ref in step.references()})
