"""Nothing non-finite passes silently in training: bad optimizer numbers are refused when the config is
read, and a run whose loss or weights stop being finite fails naming the step, its last good checkpoint
kept and nothing of the bad state saved or exported."""
from __future__ import annotations

import json
import math
import subprocess

import pytest

from teacherlm_jax.errors import ConfigError
from teacherlm_jax.train.optim import make_optimizer
from train_subprocess import REPO, jax_env, main_command

OPT = dict(learning_rate=1e-3, schedule="cosine", warmup_steps=10, end_lr_fraction=0.1, weight_decay=0.0,
           grad_clip_norm=1.0, b1=0.9, b2=0.999, eps=1e-8)


@pytest.mark.parametrize("key, value", [
    ("learning_rate", math.nan), ("learning_rate", -1e-3), ("learning_rate", math.inf),
    ("warmup_steps", 2.5), ("end_lr_fraction", 1.5), ("weight_decay", -0.1), ("grad_clip_norm", math.nan),
    ("b1", 1.0), ("b2", -0.1), ("eps", 0.0),
])
def test_bad_optimizer_numbers_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"config\.optimizer\.{key}={value!r}: expected a finite number"):
        make_optimizer(dict(OPT, **{key: value}), 100, mask={})


def test_good_optimizer_numbers_pass():
    make_optimizer(dict(OPT, warmup_steps=100, learning_rate=0.0), 100, mask={})


@pytest.mark.slow
def test_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    # Adam's first update is -lr * sign(grad): with lr 1e38 every weight is ~1e38 after step 1 (finite,
    # saved), and step 2's activations overflow, so its loss is NaN.
    cmd = main_command("configs/train.py:tiny", tmp_path, "--config.num_train_steps=4", "--config.log_every=2",
                       "--config.checkpoint_every=1", "--config.eval_every=0", "--config.plot=False",
                       "--config.optimizer.learning_rate=1e38", "--config.optimizer.warmup_steps=0",
                       "--config.async_checkpoints=False")
    proc = subprocess.run(cmd, cwd=REPO, env=jax_env(devices=1), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "training diverged at step 2: non-finite loss or weights (loss nan" in proc.stderr, proc.stderr[-3000:]
    saved = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == ["1"]
    assert not (tmp_path / "hf_final").exists()


@pytest.mark.slow
def test_non_finite_eval_on_an_unlogged_step_stops_before_it_is_written(tmp_path):
    # As above, step 1's weights are ~1e38 (finite); evaluating them overflows. Step 1 is not a logged
    # step (log_every=2): its eval metrics alone would reach metrics.jsonl.
    cmd = main_command("configs/train.py:tiny", tmp_path, "--config.num_train_steps=4", "--config.log_every=2",
                       "--config.checkpoint_every=1", "--config.eval_every=1", "--config.eval_steps=1",
                       "--config.plot=False", "--config.optimizer.learning_rate=1e38",
                       "--config.optimizer.warmup_steps=0", "--config.async_checkpoints=False")
    proc = subprocess.run(cmd, cwd=REPO, env=jax_env(devices=1), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "training diverged at step 1: evaluation gave non-finite {'eval_loss': nan" in proc.stderr, \
        proc.stderr[-3000:]
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines() if (tmp_path / "metrics.jsonl").exists() else []
    assert [json.loads(row, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl")) for row in rows] == []
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


def test_metrics_rows_are_strict_json(tmp_path):
    """metrics.jsonl is read by jq and dashboards: a non-finite value is refused naming its key, never
    written as a bare NaN token (the loop stops a run on one before it gets here)."""
    from teacherlm_jax.train.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path, start_step=0, total_steps=2)
    writer.write(1, {"loss": 1.5})
    with pytest.raises(ValueError, match="report value eval_loss is not finite"):
        writer.write(2, {"loss": 1.25, "eval_loss": math.nan})
    writer.close()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.5}\n'
