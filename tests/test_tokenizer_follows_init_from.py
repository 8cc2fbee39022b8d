"""Tokenizers follow `init_from`: a run saves the tokenizer it trained with (WORKDIR/tokenizer/), and later jobs
given that run as init_from and no tokenizer load that same tokenizer, offline. The end-to-end check runs in a
subprocess (`python tests/test_tokenizer_follows_init_from.py WORKDIR`) for its fast-compile XLA flags."""
from __future__ import annotations

import sys

import pytest

from train_subprocess import jax_env, run_checked
from teacherlm_jax.init_from import resolve

pytestmark = pytest.mark.slow  # every test here starts job processes

MARK = 4321  # the trained-with tokenizer's model_max_length: no tokenizer found by name has it


def test_jobs_on_a_run_dir_load_the_tokenizer_it_trained_with(tmp_path):
    proc = run_checked([sys.executable, __file__, str(tmp_path)], jax_env(devices=1, HF_HUB_OFFLINE="1"),
                       timeout=600)
    assert "tokenizer checks passed" in proc.stdout


if __name__ == "__main__":
    import json
    import shutil
    from pathlib import Path

    from configs import eval as eval_config
    from configs.student import finetune
    from teacherlm_jax.eval.job import run as eval_run
    from teacherlm_jax.tokenizers import byte_tokenizer
    from teacherlm_jax.train import train

    root = Path(sys.argv[1])
    own = root / "own_tokenizer"  # removed after training: only the run's copy can supply it
    tokenizer = byte_tokenizer()
    tokenizer.model_max_length = MARK
    tokenizer.save_pretrained(own)

    def tiny(steps: int):
        config = finetune.get_config("text,tiny")
        config.update(num_train_steps=steps, checkpoint_every=steps, log_every=1, plot=False)
        config.data.seq_len = 128
        config.optimizer.warmup_steps = 0
        return config

    first = tiny(2)
    first.tokenizer, first.export_hf = str(own), False
    train(first, root / "a")
    shutil.rmtree(own)

    def check(tokenizer_dir: Path, loaded) -> None:
        assert json.loads((tokenizer_dir / "tokenizer_config.json").read_text())["model_max_length"] == MARK
        assert loaded.model_max_length == MARK and loaded.get_vocab() == byte_tokenizer().get_vocab()

    run_a = resolve(dict(first.model, init_from=str(root / "a")))
    assert run_a.from_run and run_a.tokenizer == str(root / "a" / "tokenizer")  # no export: its Orbax checkpoint
    check(root / "a" / "tokenizer", run_a.load_tokenizer(None))

    second = tiny(1)  # a second stage from the first run, tokenizer left to init_from
    second.model.init_from, second.tokenizer = str(root / "a"), None
    train(second, root / "b")
    check(root / "b" / "tokenizer", resolve(dict(second.model, init_from=str(root / "b"))).load_tokenizer(None))
    check(root / "b" / "hf_final", resolve(dict(init_from=str(root / "b" / "hf_final"))).load_tokenizer(None))

    evaluation = eval_config.get_config()
    evaluation.model.init_from, evaluation.tasks = str(root / "b"), ("synthetic:student_test",)
    evaluation.update(max_examples=4, batch_size=4, max_length=128)
    eval_run(evaluation, str(root / "eval"))
    settings = json.loads((root / "eval" / "eval" / "metrics.json").read_text())["settings"]
    assert settings["model"] == str(root / "b" / "hf_final") and settings["tokenizer"] == str(root / "b" / "tokenizer")
    print("tokenizer checks passed")
