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

from teacherlm_jax.models.causal_lm import CausalLM
from teacherlm_jax.sharding import LogicalRules, activation_sharding, batch_sharding, logical_to_spec, replicated

Batch = dict[str, jax.Array]
BATCH_KEYS = ("input_ids", "attention_mask", "loss_mask")
# Sequence positions whose logits the loss computes at once (config.loss_chunk; 0: all at once). Per chunk
# the step holds ~3 float32 [rows per device, chunk, vocab] arrays: 0.75 GiB a row at BLOOM's vocabulary,
# and for the whole step the head's float32 gradient (embed x vocab); 8 chunks of a 2048-token row.
LOSS_CHUNK = 256
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
    targets, weights = next_tokens(batch)
    return _sums(logits.astype(jnp.float32), targets, weights)[0]


def next_tokens(batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(targets, float32 weights) [batch, length] of each position's next token; the last position has
    weight 0 (nothing follows it), so the loss runs over whole lengths, which split into equal chunks."""
    targets = jnp.pad(batch["input_ids"][:, 1:], ((0, 0), (0, 1)))
    weights = jnp.pad(batch["loss_mask"][:, 1:].astype(jnp.float32), ((0, 0), (0, 1)))
    return targets, weights


def _sums(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
    """(token sums, log-probabilities) of float32 logits [..., vocab] against targets under weights."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    hit = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {"loss_sum": jnp.sum(ce * weights), "correct": jnp.sum(hit * weights), "tokens": jnp.sum(weights)}, logp


def chunked_token_sums(model: CausalLM, batch: Batch, chunk: int) -> dict[str, jax.Array]:
    """`token_sums(model(ids, mask), batch)` without ever holding the [batch, length, vocab] logits: the head
    runs on `chunk` positions at a time (`chunked_sums`)."""
    hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"])
    return chunked_sums(model.logits, hidden, model.output_head(), *next_tokens(batch), chunk)


def chunked_sums(logits_fn: Callable[[jax.Array, jax.Array], jax.Array], hidden: jax.Array, head: jax.Array,
                 targets: jax.Array, weights: jax.Array, chunk: int) -> dict[str, jax.Array]:
    """Token sums of `logits_fn(hidden, head)` computed `chunk` positions at a time in a `lax.scan`.

    Differentiating a scan would save every chunk's logits for the backward pass (all of them again), and
    rematerialising them would cost one more pass of the head. So the gradient is made in the forward pass,
    chunk by chunk, as fused linear cross-entropy kernels do (Liger's, Apple's Cut Cross-Entropy): d loss /
    d logits = (softmax - one_hot(target)) * weight, pulled back through the head at once; the pass keeps
    d hidden (the size of hidden) and d head (float32, the size of the head). Same sums and gradients as
    the whole-sequence loss up to float summation order; `correct` and `tokens` have no gradient.
    """
    batch, length, _ = hidden.shape
    chunks = -(-length // chunk)

    def split(x: jax.Array) -> jax.Array:  # [batch, length, ...] -> [chunks, batch, chunk, ...], zero-padded
        x = jnp.pad(x, ((0, 0), (0, chunks * chunk - length)) + ((0, 0),) * (x.ndim - 2))
        return x.reshape(batch, chunks, chunk, *x.shape[2:]).swapaxes(0, 1)

    zero = {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct", "tokens")}

    @jax.custom_vjp
    def sums(h: jax.Array, w_head: jax.Array, t: jax.Array, w: jax.Array) -> dict[str, jax.Array]:
        def body(total, xs):
            return _add(total, _sums(logits_fn(xs[0], w_head), xs[1], xs[2])[0]), None

        return jax.lax.scan(body, zero, (h, t, w))[0]

    def forward(h, w_head, t, w):
        def body(carry, xs):
            total, d_head = carry
            h_chunk, t_chunk, w_chunk = xs
            logits, pullback = jax.vjp(logits_fn, h_chunk, w_head)
            chunk_sums, logp = _sums(logits, t_chunk, w_chunk)
            d_logits = (jnp.exp(logp) - jax.nn.one_hot(t_chunk, logits.shape[-1], dtype=jnp.float32)) \
                * w_chunk[..., None]
            d_h, d_w = pullback(d_logits)
            return (_add(total, chunk_sums), d_head + d_w.astype(jnp.float32)), d_h

        (total, d_head), d_hidden = jax.lax.scan(body, (zero, jnp.zeros(w_head.shape, jnp.float32)), (h, t, w))
        return total, (d_hidden, d_head)

    def backward(residuals, g):
        d_hidden, d_head = residuals
        scale = g["loss_sum"]
        return (d_hidden * scale).astype(hidden.dtype), (d_head * scale).astype(head.dtype), None, None

    sums.defvjp(forward, backward)
    return sums(split(hidden), head, split(targets), split(weights))


def _add(a: dict[str, jax.Array], b: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return jax.tree.map(jnp.add, a, b)


def _forward_sums(graphdef: nnx.GraphDef, params: dict, batch: Batch, loss_chunk: int) -> dict[str, jax.Array]:
    """Token sums of the model on `batch`: the head `loss_chunk` positions at a time, or all at once when
    loss_chunk is 0 or the rows are no longer than it (one chunk would hold the same arrays, and the head's
    gradient besides: bloom-560m at 4 x 128 peaked 0.5 GiB higher that way)."""
    model = nnx.merge(graphdef, params)
    if 0 < loss_chunk < batch["input_ids"].shape[1]:
        return chunked_token_sums(model, batch, loss_chunk)
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
                    grad_accum_steps: int = 1,
                    loss_chunk: int = LOSS_CHUNK) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """`step(state, batch) -> (state, metrics)`, jitted with the state donated; metrics[FINITE] says
    whether the loss and the new params and optimizer state are all finite.

    With `grad_accum_steps=k` the global batch is cut into k microbatches (rows i::k, so each stays
    split over the data axes) run in a `lax.scan`; the summed gradients are divided by the total
    token count once, which equals the one-shot step up to float summation order. `loss_chunk`: see
    `_forward_sums`.
    """
    def loss_sum(params: dict, batch: Batch):
        sums = _forward_sums(graphdef, params, batch, loss_chunk)
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
                   params_shardings: dict,
                   loss_chunk: int = LOSS_CHUNK) -> Callable[[dict, Batch], dict[str, jax.Array]]:
    """`eval_step(params, batch) -> token sums` (add them over batches, then divide by `tokens`)."""
    def step(params: dict, batch: Batch) -> dict[str, jax.Array]:
        with activation_sharding(mesh, rules):
            return _forward_sums(graphdef, params, batch, loss_chunk)

    batch_shardings = {k: batch_sharding(mesh, rules) for k in BATCH_KEYS}
    return jax.jit(step, in_shardings=(params_shardings, batch_shardings), out_shardings=replicated(mesh))
