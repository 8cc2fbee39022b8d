"""On 8 fake CPU devices: parameters are split as the rules say; train steps on a 2x2x2 mesh, with
and without gradient accumulation, with the loss in chunks of the sequence (its vocabulary split over
`tensor`), equal the same steps on one device; bfloat16 compute trains with float32 parameters and
optimizer state.

The checks run in a subprocess (`python tests/test_train_sharded.py`) because the fake device count
must be set before jax starts, and pytest's process has started jax already.
"""
from __future__ import annotations

import sys

import pytest

from train_subprocess import jax_env, run_checked

pytestmark = pytest.mark.slow  # every test here starts job processes

MODEL = dict(family="bloom", vocab_size=64, hidden_size=32, n_layer=2, n_head=4, bos_token_id=None,
             eos_token_id=None, pad_token_id=0)
OPT = dict(learning_rate=3e-3, schedule="cosine", warmup_steps=0, end_lr_fraction=0.1, weight_decay=0.1,
           grad_clip_norm=1.0, b1=0.9, b2=0.99, eps=1e-8)


def test_sharded_training_on_8_devices():
    proc = run_checked([sys.executable, __file__], jax_env(devices=8))
    assert "all sharding checks passed" in proc.stdout


def check_params_split_by_rules(mesh, rules):
    import jax
    from flax import nnx

    from teacherlm_jax.sharding import logical_to_spec
    from teacherlm_jax.init_from import resolve

    model = resolve(MODEL).build(mesh, rules)
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    for path, variable in params:
        array = variable.get_value()
        expected = logical_to_spec(variable.get_metadata()["out_sharding"], rules)
        assert array.sharding.spec == expected, (path, array.sharding.spec, expected)
        assert len(array.sharding.device_set) == 8
    shards = {"/".join(map(str, p)): v.get_value().addressable_shards[0].data.shape for p, v in params}
    # vocab -> tensor (2), embed -> fsdp (2), heads/mlp -> tensor, layers/kv unsplit.
    assert shards["word_embeddings"] == (32, 16)
    assert shards["h/query_key_value/kernel"] == (2, 16, 2, 3, 8)
    assert shards["h/dense_h_to_4h/kernel"] == (2, 16, 64)
    assert shards["h/dense_4h_to_h/bias"] == (2, 16)
    assert shards["ln_f/weight"] == (16,)
    assert jax.device_count() == 8


def run_steps(model: dict, mesh, rules, grad_accum: int, batches, loss_chunk: int | None = None):
    import jax
    from flax import nnx

    from teacherlm_jax.init_from import resolve
    from teacherlm_jax.sharding import param_shardings
    from teacherlm_jax.train.data import global_batch
    from teacherlm_jax.train.optim import decay_mask, make_optimizer
    from teacherlm_jax.train.step import LOSS_CHUNK, init_train_state, make_train_step, state_shardings

    source = resolve(model)
    abstract = source.abstract()
    graphdef, _ = nnx.split(abstract, nnx.Param)
    tx, schedule = make_optimizer(OPT, 10, decay_mask(abstract))
    params = source.load_params(abstract, mesh, rules)
    shardings = state_shardings(param_shardings(abstract, mesh, rules), jax.eval_shape(tx.init, params), mesh)
    step = make_train_step(graphdef, tx, schedule, mesh, rules, shardings, grad_accum,
                           LOSS_CHUNK if loss_chunk is None else loss_chunk)
    state, losses, norms = init_train_state(params, tx, shardings), [], []
    for batch in batches:
        state, metrics = step(state, global_batch(batch, mesh, rules, 8, 16))
        losses.append(float(metrics["loss"]))
        norms.append(float(metrics["grad_norm"]))
    return losses, norms, jax.device_get(state)


def check_step_matches_one_device(mesh8, rules8):
    import jax
    import numpy as np

    from teacherlm_jax.sharding import DEFAULT_RULES, make_mesh, parse_rules
    from teacherlm_jax.train.data import SyntheticLM

    data = SyntheticLM(batch_size=8, seq_len=16, vocab=60, seed=3, loss_on="target")
    batches = [next(data) for _ in range(3)]
    mesh1 = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    losses1, norms1, state1 = run_steps(MODEL, mesh1, parse_rules(DEFAULT_RULES, mesh1), 1, batches)
    # Rows differ in length: microbatches hold different token counts. 16 positions fit one default chunk
    # (the whole-sequence loss); loss_chunk=5 runs the chunked loss (4 chunks, the last padded).
    for accum, chunk in ((1, None), (2, None), (2, 5)):
        losses8, norms8, state8 = run_steps(MODEL, mesh8, rules8, accum, batches, chunk)
        np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
        np.testing.assert_allclose(norms8, norms1, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)  # Adam maps |g|~eps noise to ~lr
    assert losses1[-1] < losses1[0]


def check_bfloat16_compute_keeps_float32_state(mesh, rules):
    import jax
    import numpy as np

    from teacherlm_jax.train.data import SyntheticLM

    batch = next(SyntheticLM(batch_size=8, seq_len=16, vocab=60, seed=4))
    losses, _, state = run_steps(dict(MODEL, dtype="bfloat16"), mesh, rules, 1, [batch] * 6)
    assert losses[-1] < losses[0] - 0.2, losses  # fits the batch it sees
    assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state)) if x.ndim} == {np.dtype("float32")}


if __name__ == "__main__":
    from teacherlm_jax.sharding import DEFAULT_RULES, make_mesh, parse_rules

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    rules = parse_rules(DEFAULT_RULES, mesh)
    check_params_split_by_rules(mesh, rules)
    check_step_matches_one_device(mesh, rules)
    check_bfloat16_compute_keeps_float32_state(mesh, rules)
    print("all sharding checks passed")
