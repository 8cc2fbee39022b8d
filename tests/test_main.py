"""The entry point: job registry, config variants, and bad configs stopping with the key named."""
from __future__ import annotations

import json
import re
import subprocess

import pytest
from absl import app

from configs import common
from configs import train as train_config
from configs.teacher.stages import TINY_MODEL
from teacherlm_jax import main
from teacherlm_jax.errors import ConfigError
from teacherlm_jax.train import loop
from train_subprocess import REPO, jax_env, main_command


def test_every_registered_job_resolves_to_a_run_function():
    assert main.resolve_job("train") is loop.run
    for name in main.JOBS:
        assert callable(main.resolve_job(name))
    with pytest.raises(app.UsageError, match=r"config.job='nope'; known jobs"):
        main.resolve_job("nope")


def test_config_variants():
    tiny = train_config.get_config("tiny")
    assert tiny.job == "train" and tiny.model.init_from is None and tiny.data.source == "synthetic_lm"
    assert train_config.get_config().model.init_from == "bigscience/bloom-560m"
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        train_config.get_config("huge")


@pytest.mark.parametrize("override, message", [
    (dict(grad_accum_steps=3), r"config.batch_size=8: not divisible by the data-parallel size 1 .* "
                               r"grad_accum_steps=3"),
    (dict(rules=[("embed", "fsdp"), ("mlp", "model")]), r"config.rules\[1\]: \('mlp', 'model'\) names mesh axis"),
    (dict(log_every=0), r"config.log_every=0: expected an integer >= 1"),
])
def test_bad_train_configs_name_the_key(tmp_path, override, message):
    config = train_config.get_config("tiny")
    config.update(override)
    with pytest.raises(ConfigError, match=message):
        loop.train(config, tmp_path)


def test_bad_model_keys_name_the_key(tmp_path):
    config = train_config.get_config("tiny")
    with config.unlocked():
        config.model.hiden_size = 8
    with pytest.raises(ConfigError, match=r"config.model: unknown keys \['hiden_size'\]"):
        loop.train(config, tmp_path)


@pytest.mark.slow
def test_main_stops_on_a_mesh_that_does_not_fit_the_devices(tmp_path):
    """A refused config is one line naming the key, exit status 2, and the workdir left absent."""
    workdir = tmp_path / "run"
    proc = subprocess.run(main_command("configs/train.py:tiny", workdir, "--config.mesh.data=3"), cwd=REPO,
                          env=jax_env(devices=2), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "error: config.mesh: {'data': 3, 'fsdp': -1, 'tensor': 1} needs a multiple of 3 devices, " \
           "but there are 2" in proc.stderr
    assert "Traceback" not in proc.stderr and not workdir.exists()


def test_seq_len_over_the_opt_model_positions_is_refused(tmp_path):
    config = train_config.get_config("tiny")
    config.model = common.model(None, family="opt", vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                ffn_dim=64, num_attention_heads=4, max_position_embeddings=16)
    with pytest.raises(ConfigError, match=r"config.data.seq_len=32 must be in \[1, 16\], the model's "
                                          r"max_position_embeddings"):
        loop.train(config, tmp_path)


@pytest.mark.slow  # a job end to end
def test_unset_seq_len_trains_on_whole_examples_and_ends_with_the_summary(tmp_path, capsys):
    """The longest example has 28 tokens (byte tokenizer): rows of 32, nothing cut; the run's last line sums it up."""
    rows = [{"id": f"i{i}", "prompt": "Say:", "target": t} for i, t in enumerate([" a", " bb", " " + "c" * 23] * 4)]
    data_file = tmp_path / "inst.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = train_config.get_config("tiny")
    config.model = common.model(None, **TINY_MODEL)
    config.tokenizer = "builtin:bytes"
    config.data = train_config.data("records", datasets=(str(data_file),), format="instruction", eval_fraction=0.0)
    config.update(num_train_steps=2, log_every=1, eval_every=0, export_hf=False, plot=False)
    config.optimizer.warmup_steps = 0
    loop.run(config, str(tmp_path / "run"))
    report = json.loads((tmp_path / "run" / loop.DATA_REPORT).read_text())
    assert (report["seq_len"], report["longest_example"], report["truncated_examples"]) == (32, 28, 0)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    took = r"(?:\d+s|\d+m\d\ds|\d+h\d\dm)"  # console.duration: 12s, 1m04s, 2h05m
    assert re.fullmatch(rf"train done: 2 steps, in {took}, loss [\d.]+, next-token accuracy [\d.]+% \| checkpoints "
                        + re.escape(f"{tmp_path / 'run' / 'checkpoints'}, metrics {tmp_path / 'run' / 'metrics.jsonl'}"),
                        last), last
