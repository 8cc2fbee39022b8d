"""Chaining stages: a run's final params come back identical through `init_from` = its workdir (its
hf_final export when complete, else orbax, params only) or its Hugging Face export, and a second stage trains
on from them.
Runs in a subprocess (`python tests/test_train_init_from.py WORKDIR`) for its fast-compile XLA flags."""
from __future__ import annotations

import sys

import pytest

from train_subprocess import jax_env, run_checked

pytestmark = pytest.mark.slow  # every test here starts job processes


def test_init_from_run_dir_and_hf_export(tmp_path):
    proc = run_checked([sys.executable, __file__, str(tmp_path)], jax_env(devices=1))
    assert "init_from checks passed" in proc.stdout


if __name__ == "__main__":
    import json
    from pathlib import Path

    import jax
    import numpy as np
    from flax import nnx

    from configs import train as train_config
    from teacherlm_jax.init_from import resolve
    from teacherlm_jax.sharding import mesh_from_config
    from teacherlm_jax.train import train

    root = Path(sys.argv[1])
    first = train_config.get_config("tiny")
    first.update(num_train_steps=12, log_every=1, eval_every=0, checkpoint_every=4, plot=False)
    first.optimizer.warmup_steps = 0
    exported = train(first, root / "a")
    assert exported == root / "a" / "hf_final" and (exported / "model.safetensors").exists()

    mesh, rules = mesh_from_config(first)
    assert resolve(dict(first.model, init_from=str(root / "a"))).init_from == str(exported)  # its complete export
    exported.rename(root / "a" / "hidden")  # without it: the run's latest Orbax checkpoint
    run = resolve(dict(first.model, init_from=str(root / "a")))
    assert run.from_run and run.init_from == str(root / "a")
    final = nnx.state(run.build(mesh, rules), nnx.Param)
    (root / "a" / "hidden").rename(exported)
    from_hf = nnx.state(resolve(dict(first.model, init_from=str(exported))).build(mesh, rules), nnx.Param)
    fresh = nnx.state(resolve(dict(first.model)).build(mesh, rules, seed=first.seed), nnx.Param)
    for a, b, c in zip(jax.tree.leaves(final), jax.tree.leaves(from_hf), jax.tree.leaves(fresh)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(jax.tree.leaves(final), jax.tree.leaves(fresh)))

    second = train_config.get_config("tiny")
    second.update(num_train_steps=2, log_every=1, eval_every=0, plot=False, export_hf=False)
    second.optimizer.warmup_steps = 0
    second.model.init_from = str(root / "a")  # the tiny architecture keys agree with the run's
    assert train(second, root / "b") == root / "b"
    losses = [[json.loads(line)["loss"] for line in (root / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("a", "b")]
    # Both stages see the same first batch: stage two starts from stage one's trained params.
    assert losses[1][0] < losses[0][0] - 0.3, losses

    wrong = train_config.get_config("tiny")
    wrong.model.init_from, wrong.model.hidden_size = str(exported), 64
    try:
        train(wrong, root / "c")
        raise AssertionError("a disagreeing architecture key was accepted")
    except ValueError as e:
        assert "config.model.hidden_size=64 disagrees with" in str(e), e
    print("init_from checks passed")
