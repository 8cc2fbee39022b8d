"""The training job's config rules, in one function that its start and the pipeline's preflight both run:
a run refused here has written nothing, and a pipeline finds a student's bad number before the teacher trains.

Only what the config alone decides is checked here (numbers, choices, section shapes); whether datasets
read and a model resolves is checked by the job when it loads them (and by the pipeline's preflight).
"""
from __future__ import annotations

import ml_collections

from teacherlm_jax.config_checks import Problems
from teacherlm_jax.data.examples import FORMATS, STYLES
from teacherlm_jax.data.quality import FILTERS
from teacherlm_jax.errors import ConfigError
from teacherlm_jax.train import optim

SOURCES = ("synthetic_lm", "records")
LOSS_ON = ("all", "target")
# Keys counted in steps or examples, each at least 1.
POSITIVE = ("num_train_steps", "log_every", "checkpoint_every", "keep_checkpoints", "grad_accum_steps", "batch_size")


def validate(config: ml_collections.ConfigDict, *, dp_size: int = 1, process_count: int = 1) -> list[ConfigError]:
    """Every problem of a training config, each naming its key. `dp_size` (the mesh's data-parallel size) and
    `process_count` must divide the batch (1: not checked, before the mesh exists)."""
    problems = Problems(config)
    positive = {key: problems.integer(key, 1) for key in POSITIVE}
    if problems.integer("eval_every", 0) and config.eval_every:
        problems.integer("eval_steps", 1)
    if "loss_chunk" in config:  # positions of the loss's head at once; 0: all (configs before it: the default)
        problems.integer("loss_chunk", 0)
    problems.errors += optim.validate(config.optimizer)
    if positive["batch_size"] and positive["grad_accum_steps"]:
        rows = dp_size * config.grad_accum_steps
        if config.batch_size % rows:
            problems.add("batch_size", f"not divisible by the data-parallel size {dp_size} (mesh axes the batch is "
                                       f"split over) x grad_accum_steps={config.grad_accum_steps}")
        if config.batch_size % process_count:
            problems.add("batch_size", f"not divisible by the {process_count} processes")
    _data(problems, config.data, config.eval_every if isinstance(config.eval_every, int) else 0)
    return problems.errors


def _data(problems: Problems, data: ml_collections.ConfigDict, eval_every: int) -> None:
    if not problems.choice("data.source", SOURCES):
        return
    problems.choice("data.loss_on", LOSS_ON)
    if data.get("seq_len") is not None:
        problems.integer("data.seq_len", 4 if data.source == "synthetic_lm" else 1)
    if data.source == "synthetic_lm":
        if data.get("seq_len") is None:
            problems.add("data.seq_len", "synthetic_lm needs a length (only the records source derives it)")
        if data.get("vocab") is not None:  # unset: refused when batches are made (the compile job makes none)
            problems.integer("data.vocab", 1)
        return
    problems.choice("data.format", (*FORMATS, "instruction"))
    for key, options in (("style", STYLES), ("filter", FILTERS)):  # optional: defaults teacherlm, none
        if key in data:
            problems.choice(f"data.{key}", options)
    datasets = data.get("datasets")
    if isinstance(datasets, str) or not datasets:
        problems.add("data.datasets", "expected a non-empty tuple of dataset names or paths")
    fraction = data.get("eval_fraction") or 0.0
    if fraction:
        problems.number("data.eval_fraction", lambda x: 0 <= x < 1, "in [0, 1)")
    elif eval_every:
        problems.add("data.eval_fraction", "config.eval_every > 0 needs held-out examples (eval_fraction > 0)")
