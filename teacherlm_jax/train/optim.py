"""AdamW with TeacherLM's schedules, global-norm clipping and a weight-decay mask.

Parameters, gradients and optimizer state stay in the params' dtype (float32 master weights) even
when the model computes in bfloat16: the model casts weights at use.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import optax
from flax import nnx

from teacherlm_jax.errors import ConfigError
from teacherlm_jax.models.layers import LayerNorm

SCHEDULES = ("constant", "linear", "cosine")


def _number(opt: Mapping, key: str, valid: Callable[[float], bool], rule: str) -> float:
    """`opt[key]` as a float, refused unless finite and `valid` (a NaN or negative rate would train to NaN)."""
    value = opt[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not valid(value):
        raise ConfigError(f"config.optimizer.{key}={value!r} must be a finite number {rule}")
    return float(value)


def make_schedule(opt: Mapping, num_train_steps: int) -> optax.Schedule:
    """Linear warmup from 0 over `warmup_steps`, then constant, or linear/cosine decay to
    `end_lr_fraction * learning_rate` at `num_train_steps`."""
    name = opt["schedule"]
    if name not in SCHEDULES:
        raise ConfigError(f"config.optimizer.schedule={name!r}; expected one of {SCHEDULES}")
    lr = _number(opt, "learning_rate", lambda x: x >= 0, ">= 0")
    warmup = int(_number(opt, "warmup_steps", lambda x: 0 <= x <= num_train_steps and x == int(x),
                         f"in [0, num_train_steps={num_train_steps}], whole (the LR peaks after the warmup)"))
    end = lr * _number(opt, "end_lr_fraction", lambda x: 0 <= x <= 1, "in [0, 1]")
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
    schedule = make_schedule(opt, num_train_steps)
    clip = _number(opt, "grad_clip_norm", lambda x: x >= 0, ">= 0 (0 turns clipping off)")
    betas = {k: _number(opt, k, lambda x: 0 <= x < 1, "in [0, 1)") for k in ("b1", "b2")}
    adamw = optax.adamw(schedule, **betas, eps=_number(opt, "eps", lambda x: x > 0, "> 0"),
                        weight_decay=_number(opt, "weight_decay", lambda x: x >= 0, ">= 0"), mask=mask)
    tx = optax.chain(optax.clip_by_global_norm(clip), adamw) if clip else adamw
    return tx, schedule
