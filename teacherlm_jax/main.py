"""Entry point for every job: `python -m teacherlm_jax.main --config configs/X.py[:variant] --workdir DIR`.

Overrides: `--config.num_train_steps=100 --config.mesh.fsdp=4`. The job is `config.job`, looked up in
JOBS and imported only when chosen; each job is `run(config: ml_collections.ConfigDict, workdir: str)` with a
`validate(config) -> list[ConfigError]` run first, so a refused config stops before the workdir is touched.
Each job writes its full config to WORKDIR/config.json once it starts (`teacherlm_jax.run_config`).
`--help` lists jobs and configs, `--dry_run` shows the resolved config and plan (`teacherlm_jax.cli`).
"""
from __future__ import annotations

import dataclasses
import gc
import importlib
import logging
from typing import Callable

from absl import app, flags
from ml_collections import config_flags

from teacherlm_jax import cli


@dataclasses.dataclass(frozen=True)
class Job:
    run: str  # "module:function", run(config, workdir)
    validate: str  # "module:function", validate(config) -> list[ConfigError]
    about: str  # one line for --help


JOBS = {
    "train": Job("teacherlm_jax.train.loop:run", "teacherlm_jax.train.checks:validate",
                 "train or fine-tune a causal LM (teacher stages, students)"),
    "eval": Job("teacherlm_jax.eval.job:run", "teacherlm_jax.eval.job:validate",
                "zero-shot multiple-choice evaluation (log-likelihood or generation)"),
    "augment": Job("teacherlm_jax.augment.job:run", "teacherlm_jax.augment.job:validate",
                   "a teacher writes cot / fundamentals / mistakes for datasets"),
    "pipeline": Job("teacherlm_jax.pipeline.job:run", "teacherlm_jax.pipeline.preflight:validate",
                    "TeacherLM's recipe: teacher stages, augmentation, students, evaluation, report"),
    "compile": Job("teacherlm_jax.compile.job:run", "teacherlm_jax.train.checks:validate",
                   "ahead-of-time compile of a training step and generation for a mesh or a TPU slice"),
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/train.py:tiny.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory or gs:// URL for checkpoints, metrics and outputs.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the resolved config (and a pipeline's plan); run nothing.")
flags.DEFINE_bool("verbose", False, "Tracebacks for configuration, data and checkpoint errors too.")
flags.mark_flags_as_required(["config", "workdir"])


def _function(path: str) -> Callable:
    module, _, function = path.partition(":")
    return getattr(importlib.import_module(module), function)


def resolve_job(name: str) -> Callable:
    """The `run` function registered for job `name`."""
    if name not in JOBS:
        raise app.UsageError(f"config.job={name!r}; known jobs: {sorted(JOBS)}")
    return _function(JOBS[name].run)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it writes at INFO
    config, workdir = _CONFIG.value, _WORKDIR.value
    from teacherlm_jax.paths import check_workdir

    check_workdir(workdir)  # a file, or a store that does not answer: refused in seconds
    job = resolve_job(config.job)
    from teacherlm_jax.config_checks import raise_all
    from teacherlm_jax.platforms import cpu_only_without_tpu
    from teacherlm_jax.sharding import initialize_distributed

    cpu_only_without_tpu()  # before jax picks a backend

    initialize_distributed(config.get("distributed"))  # before any jax computation, for every job
    raise_all(_function(JOBS[config.job].validate)(config))
    if _DRY_RUN.value:
        print(cli.dry_run(config, workdir))
        return
    logging.info("job %s, workdir %s", config.job, workdir)
    job(config, workdir)
    # The process exits next. Frozen objects are left out of the interpreter's last full collection, which
    # otherwise walks everything the imports made (jax, flax, transformers, torch), a visible share of a short
    # job's exit (benchmarks/eval.py times whole processes). Reference counting still frees the rest and
    # atexit handlers still run.
    gc.freeze()


if __name__ == "__main__":
    cli.run(main, {name: job.about for name, job in JOBS.items()})
