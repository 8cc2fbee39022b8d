"""The jitted train and eval steps: masked next-token loss, gradient accumulation, sharded state.

Loss convention (shared with `teacherlm_jax.data.tokenize`): `loss_mask[:, t] = 1` when predicting
token t from the tokens before it is trained, so logits[:, :-1] are scored against input_ids[:, 1:]
weighted by loss_mask[:, 1:]. All-ones masks give whole-sequence loss (TeacherLM); masks on the
completion only give Fine-tune-CoT's loss. The loss is the mean over all weighted tokens of the
global batch, whatever the number of microbatches.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding

from teacherlm_jax.sharding import LogicalRules, activation_sharding, batch_sharding, logical_to_spec, replicated

Batch = dict[str, jax.Array]
BATCH_KEYS = ("input_ids", "attention_mask", "loss_mask")
# Train-step metric: 1.0 when the step's loss and the state it produced (params, optimizer) are all finite.
# The host reads it with the other metrics (no extra sync) before logging, saving or exporting anything.
FINITE = "finite"


@struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    opt_state: optax.OptState


def token_sums(logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Sums over weighted target tokens: cross-entropy `loss_sum`, `correct` argmax hits, `tokens`."""
    targets = batch["input_ids"][:, 1:]
    weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
    logits = logits[:, :-1].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    hit = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {"loss_sum": jnp.sum(ce * weights), "correct": jnp.sum(hit * weights), "tokens": jnp.sum(weights)}


def _forward_sums(graphdef: nnx.GraphDef, params: dict, batch: Batch) -> dict[str, jax.Array]:
    model = nnx.merge(graphdef, params)
    return token_sums(model(batch["input_ids"], batch["attention_mask"]), batch)


def _all_finite(tree) -> jax.Array:
    """1.0 when every value in `tree` is finite, else 0.0 (a float, like the other metrics)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)])).astype(jnp.float32)


def state_shardings(params_shardings: dict, abstract_opt_state, mesh: Mesh) -> TrainState:
    """Optimizer moments (subtrees shaped like the params) follow the params; the rest is replicated."""
    params_def = jax.tree.structure(params_shardings)

    def like_params(x) -> bool:
        return jax.tree.structure(x) == params_def

    opt = jax.tree.map(lambda x: params_shardings if like_params(x) else replicated(mesh),
                       abstract_opt_state, is_leaf=like_params)
    return TrainState(step=replicated(mesh), params=params_shardings, opt_state=opt)


def init_train_state(params: dict, tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
    """A step-0 state; `params` are consumed (donated)."""
    init = jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)), out_shardings=shardings,
                   donate_argnums=0)
    return init(params)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    mesh: Mesh, rules: LogicalRules, shardings: TrainState,
                    grad_accum_steps: int = 1) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """`step(state, batch) -> (state, metrics)`, jitted with the state donated; metrics[FINITE] says
    whether the loss and the new params and optimizer state are all finite.

    With `grad_accum_steps=k` the global batch is cut into k microbatches (rows i::k, so each stays
    split over the data axes) run in a `lax.scan`; the summed gradients are divided by the total
    token count once, which equals the one-shot step up to float summation order.
    """
    def loss_sum(params: dict, batch: Batch):
        sums = _forward_sums(graphdef, params, batch)
        return sums["loss_sum"], sums

    sums_and_grad = jax.value_and_grad(loss_sum, has_aux=True)
    micro_sharding = NamedSharding(mesh, logical_to_spec((None, "batch", None), rules))

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        with activation_sharding(mesh, rules):
            if grad_accum_steps == 1:
                (_, sums), grads = sums_and_grad(state.params, batch)
            else:
                def split(x):
                    rows = x.shape[0] // grad_accum_steps
                    x = x.reshape(rows, grad_accum_steps, *x.shape[1:]).swapaxes(0, 1)
                    return jax.lax.with_sharding_constraint(x, micro_sharding)

                def body(carry, micro):
                    (_, sums), grads = sums_and_grad(state.params, micro)
                    return jax.tree.map(jnp.add, carry, (sums, grads)), None

                zero = ({k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct", "tokens")},
                        jax.tree.map(jnp.zeros_like, state.params))
                (sums, grads), _ = jax.lax.scan(body, zero, {k: split(batch[k]) for k in BATCH_KEYS})
        tokens = jnp.maximum(sums["tokens"], 1.0)
        grads = jax.tree.map(lambda g: g / tokens, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": sums["loss_sum"] / tokens, "next_token_accuracy": sums["correct"] / tokens,
                   "loss_tokens": sums["tokens"], "grad_norm": optax.tree.norm(grads),
                   "learning_rate": schedule(state.step)}
        metrics[FINITE] = _all_finite((metrics["loss"], params, opt_state))
        return TrainState(state.step + 1, params, opt_state), metrics

    batch_shardings = {k: batch_sharding(mesh, rules) for k in BATCH_KEYS}
    return jax.jit(step, in_shardings=(shardings, batch_shardings), out_shardings=(shardings, replicated(mesh)),
                   donate_argnums=0)


def make_eval_step(graphdef: nnx.GraphDef, mesh: Mesh, rules: LogicalRules,
                   params_shardings: dict) -> Callable[[dict, Batch], dict[str, jax.Array]]:
    """`eval_step(params, batch) -> token sums` (add them over batches, then divide by `tokens`)."""
    def step(params: dict, batch: Batch) -> dict[str, jax.Array]:
        with activation_sharding(mesh, rules):
            return _forward_sums(graphdef, params, batch)

    batch_shardings = {k: batch_sharding(mesh, rules) for k in BATCH_KEYS}
    return jax.jit(step, in_shardings=(params_shardings, batch_shardings), out_shardings=replicated(mesh))
