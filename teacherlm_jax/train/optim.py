"""AdamW with TeacherLM's schedules, global-norm clipping and a weight-decay mask.

Parameters, gradients and optimizer state stay in the params' dtype (float32 master weights) even
when the model computes in bfloat16: the model casts weights at use.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import optax
from flax import nnx

from teacherlm_jax.config_checks import Problems, raise_all
from teacherlm_jax.errors import ConfigError
from teacherlm_jax.models.layers import LayerNorm

log = logging.getLogger(__name__)
SCHEDULES = ("constant", "linear", "cosine")


# key -> (valid, rule): the optimizer's numbers (a NaN or negative rate would train to NaN).
NUMBERS: dict[str, tuple[Callable[[float], bool], str]] = {
    "learning_rate": (lambda x: x >= 0, ">= 0"),
    "warmup_steps": (lambda x: x >= 0 and x == int(x), ">= 0, whole (clipped to num_train_steps)"),
    "end_lr_fraction": (lambda x: 0 <= x <= 1, "in [0, 1]"),
    "grad_clip_norm": (lambda x: x >= 0, ">= 0 (0 turns clipping off)"),
    "b1": (lambda x: 0 <= x < 1, "in [0, 1)"),
    "b2": (lambda x: 0 <= x < 1, "in [0, 1)"),
    "eps": (lambda x: x > 0, "> 0"),
    "weight_decay": (lambda x: x >= 0, ">= 0"),
}


def validate(opt: Mapping) -> list[ConfigError]:
    """Every problem of the `config.optimizer` section, each naming its key."""
    problems = Problems(opt, "optimizer.")
    problems.choice("schedule", SCHEDULES)
    for key, (valid, rule) in NUMBERS.items():
        problems.number(key, valid, rule)
    return problems.errors


def make_schedule(opt: Mapping, num_train_steps: int) -> optax.Schedule:
    """Linear warmup from 0 over `warmup_steps` (at most the run's length: a short run of a long config still
    reaches its learning rate, logged), then constant, or linear/cosine decay to
    `end_lr_fraction * learning_rate` at `num_train_steps`."""
    raise_all(validate(opt))
    name, lr = opt["schedule"], float(opt["learning_rate"])
    warmup = int(opt["warmup_steps"])
    if warmup > num_train_steps:
        log.info("config.optimizer.warmup_steps=%d is longer than the run (num_train_steps=%d): warmup clipped "
                 "to %d steps", warmup, num_train_steps, num_train_steps)
        warmup = num_train_steps
    end = lr * float(opt["end_lr_fraction"])
    decay_steps = max(num_train_steps - warmup, 1)
    if name == "constant":
        after = optax.constant_schedule(lr)
    elif name == "linear":
        after = optax.linear_schedule(lr, end, decay_steps)
    else:
        after = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def decay_mask(model: nnx.Module) -> dict:
    """True for parameters that get weight decay: all but biases and layer norms (as HF Trainer does).

    Nested like `nnx.to_pure_dict(nnx.state(model, nnx.Param))`.
    """
    norms = [path for path, node in nnx.iter_graph(model) if isinstance(node, LayerNorm)]
    mask: dict = {}
    for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        decayed = path[-1] != "bias" and not any(path[:len(p)] == p for p in norms)
        node = mask
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = decayed
    return mask


def make_optimizer(opt: Mapping, num_train_steps: int, mask: dict) -> tuple[optax.GradientTransformation,
                                                                             optax.Schedule]:
    """(AdamW with clipping, its learning-rate schedule)."""
    schedule = make_schedule(opt, num_train_steps)  # checks every number first
    clip = float(opt["grad_clip_norm"])
    adamw = optax.adamw(schedule, b1=float(opt["b1"]), b2=float(opt["b2"]), eps=float(opt["eps"]),
                        weight_decay=float(opt["weight_decay"]), mask=mask)
    tx = optax.chain(optax.clip_by_global_norm(clip), adamw) if clip else adamw
    return tx, schedule
