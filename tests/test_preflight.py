"""Every step's own config checks run before the pipeline's first step: each validated key of each step, made
bad, is reported under its full pipeline key, and a run refused by them writes nothing."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the configs package, as `python -m teacherlm_jax.main` sees it

from configs import pipeline as pipeline_configs  # noqa: E402
from teacherlm_jax.errors import ConfigError  # noqa: E402
from teacherlm_jax.pipeline import preflight  # noqa: E402
from teacherlm_jax.pipeline.job import run  # noqa: E402

TRAIN_SECTIONS = ("teacher.stage1", "teacher.stage2", "teacher.stage3", "students.answers_only.train",
                  "students.finetune_cot.train")
TRAIN = {"num_train_steps": -1, "log_every": 0, "checkpoint_every": 0, "keep_checkpoints": 0, "batch_size": 0,
         "grad_accum_steps": 0, "eval_every": -1, "optimizer.learning_rate": -1.0, "optimizer.warmup_steps": -1,
         "optimizer.schedule": "exp", "optimizer.end_lr_fraction": 2.0, "optimizer.b1": 1.0, "optimizer.b2": -0.5,
         "optimizer.eps": 0.0, "optimizer.weight_decay": -1.0, "optimizer.grad_clip_norm": math.nan,
         "data.source": "nope", "data.format": "nope", "data.style": "nope", "data.loss_on": "nope",
         "data.filter": "nope", "data.seq_len": 0}
AUGMENT = {"sampling.max_new_tokens": 0, "sampling.temperature": -1.0, "sampling.top_k": -1,
           "sampling.top_p": 0.0, "sampling.num_samples": 0, "sampling.seed": -1, "batch_size": 0, "chunk_size": 0,
           "max_prompt_tokens": -1, "truncation": "right", "engine": "nope", "max_records": -1}
EVAL = {"score": "nope", "batch_size": 0, "max_examples": -1, "max_length": -1, "max_new_tokens": 0,
        "tasks": ("no_such_task",)}
CASES = ([(section, key, value) for section in TRAIN_SECTIONS for key, value in TRAIN.items()
          if (section, key) != ("teacher.stage3", "data.format")]  # set per kind by the pipeline
         + [("augment", key, value) for key, value in AUGMENT.items()]
         + [("eval", key, value) for key, value in EVAL.items()])


def _set(config, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for part in path:
        config = config[part]
    config[last] = value


@pytest.mark.parametrize("section, key, value", CASES, ids=[f"{s}.{k}" for s, k, _ in CASES])
def test_each_validated_key_of_each_step_is_caught_under_its_pipeline_key(section, key, value):
    config = pipeline_configs.get_config("tiny")
    _set(config, f"{section}.{key}", value)
    problems = [str(p) for p in preflight.validate(config)]
    assert any(f"config.{section}.{key}" in p for p in problems), problems


def test_the_configs_as_shipped_pass():
    assert not preflight.validate(pipeline_configs.get_config("tiny"))
    config = pipeline_configs.get_config("tiny")
    config.students.finetune_cot.train.num_train_steps = 2  # shorter than its warmup: clipped, not refused
    assert not preflight.validate(config)


def test_a_students_eval_mode_is_checked_under_its_key():
    config = pipeline_configs.get_config("tiny")
    config.students.finetune_cot.mode = "generative"
    (problem,) = preflight.validate(config)
    assert str(problem) == "config.students.finetune_cot.mode='generative'; expected one of ('loglik', 'generate')"


def test_unknown_augment_dataset_names_the_key():
    config = pipeline_configs.get_config("tiny")
    config.augment.datasets = ("synthetic:student_train", "no_such_set")
    (problem,) = preflight.validate(config)
    assert str(problem).startswith("config.augment.datasets[1]: unknown dataset 'no_such_set'")


def test_run_reports_every_problem_at_once_and_writes_nothing(tmp_path):
    config = pipeline_configs.get_config("tiny")
    config.compilation_cache = False
    config.students.finetune_cot.train.num_train_steps = -1
    config.augment.sampling.max_new_tokens = 0
    config.eval.max_new_tokens = 0
    work = tmp_path / "work"
    with pytest.raises(ConfigError) as error:
        run(config, str(work))
    message = str(error.value)
    assert message.startswith("the pipeline stopped before running anything")
    for expected in ("step students/finetune_cot, config.students.finetune_cot.train.num_train_steps=-1: expected "
                     "an integer >= 1",
                     "step augment/cot, config.augment.sampling.max_new_tokens=0; expected an integer >= 1",
                     "step eval/finetune_cot, config.eval.max_new_tokens=0: expected an integer >= 1"):
        assert expected in message
    assert not work.exists()
