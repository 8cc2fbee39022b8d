"""Entry point for every job: `python -m teacherlm_jax.main --config configs/X.py[:variant] --workdir DIR`.

Overrides: `--config.num_train_steps=100 --config.mesh.fsdp=4`. The job is `config.job`, looked up in
JOBS and imported only when chosen; each job is `run(config: ml_collections.ConfigDict, workdir: str)`.
The full config goes to WORKDIR/config.json (`teacherlm_jax.run_config`), not to the console.
"""
from __future__ import annotations

import importlib
import logging

from absl import app, flags
from ml_collections import config_flags

JOBS = {
    "train": "teacherlm_jax.train.loop:run",
    "eval": "teacherlm_jax.eval.job:run",
    "augment": "teacherlm_jax.augment.job:run",
    "pipeline": "teacherlm_jax.pipeline.job:run",
    "compile": "teacherlm_jax.compile.job:run",
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/train.py:tiny.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory or gs:// URL for checkpoints, metrics and outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def resolve_job(name: str):
    """The `run` function registered for job `name`."""
    if name not in JOBS:
        raise app.UsageError(f"config.job={name!r}; known jobs: {sorted(JOBS)}")
    module, _, function = JOBS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it writes at INFO
    config = _CONFIG.value
    job = resolve_job(config.job)
    from teacherlm_jax.run_config import write_config
    from teacherlm_jax.sharding import initialize_distributed

    initialize_distributed(config.get("distributed"))  # before any jax computation, for every job
    logging.info("job %s, workdir %s; its full config: %s", config.job, _WORKDIR.value,
                 write_config(config, _WORKDIR.value))
    job(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
