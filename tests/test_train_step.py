"""Pieces of the train step on one device: masked next-token loss (whole and in chunks of the sequence), data
contract, optimizer parts. (Whole steps, gradient accumulation and bfloat16 compute: tests/test_train_sharded.py.)"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from teacherlm_jax.errors import ConfigError
from teacherlm_jax.models.bloom import Bloom, BloomConfig
from teacherlm_jax.models.opt import OPT as OPTModel
from teacherlm_jax.models.opt import OPTConfig
from teacherlm_jax.sharding import DEFAULT_RULES, make_mesh, parse_rules
from teacherlm_jax.train.data import BatchIterator, SyntheticLM, global_batch
from teacherlm_jax.train.optim import decay_mask, make_schedule
from teacherlm_jax.train.checks import validate
from teacherlm_jax.train.step import _forward_sums, token_sums

CFG = dict(vocab_size=40, hidden_size=16, n_layer=2, n_head=2, bos_token_id=None, eos_token_id=None,
           pad_token_id=0)
OPT = dict(learning_rate=1.0, schedule="cosine", warmup_steps=10, end_lr_fraction=0.1, weight_decay=0.1,
           grad_clip_norm=1.0, b1=0.9, b2=0.99, eps=1e-8)


def test_token_sums_scores_next_tokens_under_loss_mask():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    ids = rng.integers(0, 7, size=(2, 5)).astype(np.int32)
    mask = np.array([[1, 1, 1, 1, 0], [0, 0, 0, 1, 1]], np.int32)  # whole row / completion only
    sums = jax.device_get(token_sums(jnp.asarray(logits), {"input_ids": ids, "loss_mask": mask}))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected_loss = expected_correct = 0.0
    for b in range(2):
        for t in range(1, 5):  # token t is predicted by logits at t-1
            if mask[b, t]:
                expected_loss -= logp[b, t - 1, ids[b, t]]
                expected_correct += float(np.argmax(logits[b, t - 1]) == ids[b, t])
    assert sums["tokens"] == mask[:, 1:].sum() == 5
    np.testing.assert_allclose(sums["loss_sum"], expected_loss, rtol=1e-5)
    assert sums["correct"] == expected_correct


MODELS = {  # vocab -> a small model with random weights (large enough that the argmax is often right)
    "bloom_tied": lambda vocab: Bloom(BloomConfig(**{**CFG, "vocab_size": vocab}, initializer_range=0.3),
                                      rngs=nnx.Rngs(0)),
    "opt_untied": lambda vocab: OPTModel(OPTConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, ffn_dim=32,
                                                   num_attention_heads=2, tie_word_embeddings=False, init_std=0.3),
                                         rngs=nnx.Rngs(0)),
}


def loss_and_grads(model: nnx.Module, batch: dict, chunk: int) -> tuple[dict, dict]:
    """The train step's token sums and the gradient of loss_sum, the head `chunk` positions at a time (0: whole)."""
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(p):
        sums = _forward_sums(graphdef, p, batch, chunk)
        return sums["loss_sum"], sums

    (_, sums), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return jax.device_get(sums), jax.device_get(grads)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_chunked_loss_gives_the_whole_sequence_loss_and_gradients(family):
    ids = np.random.default_rng(1).integers(4, 40, size=(3, 13)).astype(np.int32)
    attention = np.ones_like(ids)
    attention[1, :5] = 0  # left padding
    loss_mask = attention.copy()
    loss_mask[2, :9] = 0  # completion only
    model = MODELS[family](40)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids, attention))
    for t in range(0, ids.shape[1] - 1, 2):  # every other token the model's argmax: `correct` counts hits
        ids[:, t + 1] = np.argmax(np.asarray(forward(state, ids))[:, t], axis=-1)
    batch = {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask}
    whole, whole_grads = loss_and_grads(model, batch, 0)
    assert whole["tokens"] == loss_mask[:, 1:].sum() and whole["correct"] >= 8
    scale = max(np.abs(g).max() for g in jax.tree.leaves(whole_grads))  # k_proj's bias has a zero gradient: noise
    for chunk in (1, 6):  # one position a chunk; chunks that do not divide 13 (the last one padded)
        sums, grads = loss_and_grads(model, batch, chunk)
        assert (sums["tokens"], sums["correct"]) == (whole["tokens"], whole["correct"]), chunk
        np.testing.assert_allclose(sums["loss_sum"], whole["loss_sum"], rtol=1e-6)
        for (path, g), g0 in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(whole_grads)):
            np.testing.assert_allclose(g, g0, rtol=1e-4, atol=1e-6 * scale,
                                       err_msg=f"chunk {chunk} {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("family", sorted(MODELS))
def test_chunked_loss_memory_does_not_grow_with_the_whole_logits(family):
    """XLA's own accounting of the compiled gradient when the vocabulary doubles: whole, the temporaries grow by
    more than two float32 copies of the added [batch, length, vocab] logits; in chunks of 16 positions, by less
    than half of one (the chunk's arrays and the head's gradient)."""
    batch_size, length = 2, 256
    ids = jax.ShapeDtypeStruct((batch_size, length), jnp.int32)
    batch = {"input_ids": ids, "attention_mask": ids, "loss_mask": ids}
    temp = {}
    for vocab in (4096, 8192):
        graphdef, params = nnx.split(nnx.eval_shape(lambda: MODELS[family](vocab)), nnx.Param)
        for chunk in (0, 16):
            grad = jax.jit(jax.grad(lambda p, b: _forward_sums(graphdef, p, b, chunk)["loss_sum"]))
            temp[vocab, chunk] = grad.lower(params, batch).compile().memory_analysis().temp_size_in_bytes
    added_logits = batch_size * length * 4096 * 4
    assert temp[8192, 0] - temp[4096, 0] > 2 * added_logits, temp
    assert temp[8192, 16] - temp[4096, 16] < added_logits / 2, temp


def test_a_negative_loss_chunk_is_refused():
    from configs import train as train_config

    config = train_config.get_config("tiny")
    config.loss_chunk = -1
    (problem,) = validate(config)
    assert "config.loss_chunk=-1" in str(problem) and ">= 0" in str(problem)


def test_synthetic_data_splits_global_batches_by_process_and_resumes():
    whole = SyntheticLM(batch_size=4, seq_len=10, vocab=20, seed=5, loss_on="target")
    parts = [SyntheticLM(batch_size=4, seq_len=10, vocab=20, seed=5, loss_on="target", process_index=i,
                         process_count=2) for i in range(2)]
    assert isinstance(whole, BatchIterator)
    first = next(whole)
    halves = [next(p) for p in parts]
    for key in first:
        np.testing.assert_array_equal(first[key], np.concatenate([h[key] for h in halves]))
    state = whole.get_state()
    second = next(whole)
    resumed = SyntheticLM(batch_size=4, seq_len=10, vocab=20, seed=5, loss_on="target")
    resumed.set_state(json.loads(json.dumps(state)))
    np.testing.assert_array_equal(next(resumed)["input_ids"], second["input_ids"])
    lengths = first["attention_mask"].sum(1)
    assert (first["loss_mask"].sum(1) == lengths - lengths // 2).all()  # completion = second half
    assert (first["input_ids"][first["attention_mask"] == 0] == 0).all()


def test_global_batch_rejects_wrong_shapes():
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    rules = parse_rules(DEFAULT_RULES, mesh)
    batch = next(SyntheticLM(batch_size=2, seq_len=8, vocab=20, seed=0))
    assert global_batch(batch, mesh, rules, 2, 8)["input_ids"].shape == (2, 8)
    with pytest.raises(ValueError, match=r"'input_ids' has shape \(2, 8\); expected .*\(2, 6\)"):
        global_batch(batch, mesh, rules, 2, 6)
    with pytest.raises(ValueError, match="no 'loss_mask'"):
        global_batch({k: v for k, v in batch.items() if k != "loss_mask"}, mesh, rules, 2, 8)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_decay_mask_skips_biases_and_layer_norms(scan_layers):
    model = nnx.eval_shape(lambda: Bloom(BloomConfig(**CFG, scan_layers=scan_layers), rngs=nnx.Rngs(0)))
    flat = dict(jax.tree_util.tree_flatten_with_path(decay_mask(model))[0])
    decayed = {jax.tree_util.keystr(k) for k, v in flat.items() if v}
    assert decayed and all(("kernel" in k or "word_embeddings']" in k) for k in decayed), decayed
    assert not any("layernorm" in k or "ln_f" in k or "bias" in k for k in decayed)
    n_kernels = 4 * (1 if scan_layers else CFG["n_layer"])
    assert len(decayed) == n_kernels + 1  # + the (tied) embedding


def test_schedules():
    base = OPT
    const = make_schedule(dict(base, schedule="constant"), 110)
    linear = make_schedule(dict(base, schedule="linear"), 110)
    cosine = make_schedule(dict(base, schedule="cosine"), 110)
    np.testing.assert_allclose([const(0), const(5), const(10), const(109)], [0, 0.5, 1, 1], atol=1e-6)
    np.testing.assert_allclose([linear(5), linear(10), linear(60), linear(110)], [0.5, 1, 0.55, 0.1], atol=1e-6)
    np.testing.assert_allclose([cosine(10), cosine(60), cosine(110)], [1, 0.55, 0.1], atol=1e-6)
    assert float(make_schedule(dict(base, schedule="constant", warmup_steps=0), 5)(0)) == 1.0
    with pytest.raises(ConfigError, match="config.optimizer.schedule"):
        make_schedule(dict(base, schedule="exp"), 10)
    with pytest.raises(ConfigError, match="config.optimizer.warmup_steps"):
        make_schedule(dict(base, warmup_steps=-1), 5)
