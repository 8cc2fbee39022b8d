"""Start-up without torch: `--help` imports neither jax nor transformers, no job imports torch (the numerical
reference, which only the tests and the lm-eval backend use), and the tokenizer each job loads without
AutoTokenizer is the one AutoTokenizer gives."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer, GPT2Tokenizer

from teacherlm_jax.tokenizers import byte_tokenizer, load_tokenizer
from train_subprocess import REPO, jax_env

HEAVY = ("torch", "jax", "flax", "transformers")


def _imported_after(code: str) -> list[str]:
    script = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=jax_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_help_imports_no_framework():
    code = ("import runpy\nsys.argv = ['teacherlm_jax.main', '--help']\ntry:\n"
            "    runpy.run_module('teacherlm_jax.main', run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert e.code in (0, None), e.code")
    assert _imported_after(code) == []


def _checkpoint_folder(path: Path, model_type: str | None, tokenizer=None) -> Path:
    (tokenizer or byte_tokenizer()).save_pretrained(str(path))
    if model_type:
        (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return path


@pytest.mark.slow
def test_jobs_load_their_tokenizer_without_torch(tmp_path):
    folder = _checkpoint_folder(tmp_path / "bloom", "bloom")
    jobs = "; ".join(f"import teacherlm_jax.{job}" for job in ("main", "train.loop", "eval.job", "augment.job",
                                                                "pipeline.job", "compile.job"))
    imported = _imported_after(f"{jobs}\nfrom teacherlm_jax.tokenizers import load_tokenizer\n"
                               f"load_tokenizer({str(folder)!r})")
    assert "torch" not in imported and "jax" in imported


def _gpt2_tokenizer(tmp_path: Path) -> GPT2Tokenizer:
    """OPT's tokenizer class (facebook/opt-*: GPT2Tokenizer) on a tiny byte-level BPE."""
    vocab = {"</s>": 0, "<pad>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate("abcdefghijklmnopqrstuvwxyzĠ")}}
    vocab["Ġa"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ a\n")
    return GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), bos_token="</s>",
                         eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


@pytest.mark.parametrize("model_type", [None, "bloom", "opt"])
@pytest.mark.parametrize("kind", ["tokenizers", "gpt2"])
def test_tokenizer_equals_auto_tokenizers(tmp_path, model_type, kind):
    source = _gpt2_tokenizer(tmp_path) if kind == "gpt2" else None
    folder = _checkpoint_folder(tmp_path / "checkpoint", model_type, source)
    ours = load_tokenizer(folder)
    auto = AutoTokenizer.from_pretrained(str(folder), padding_side="left", trust_remote_code=False)
    assert type(ours) is type(auto)
    texts = ["a cab", "bad face a"]
    assert ours(texts, padding=True)["input_ids"] == auto(texts, padding=True)["input_ids"]
    assert (ours.padding_side, ours.pad_token_id, ours.eos_token_id) == ("left", auto.pad_token_id, auto.eos_token_id)


def test_other_tokenizer_classes_go_through_auto_tokenizer(tmp_path, monkeypatch):
    folder = _checkpoint_folder(tmp_path, "bloom")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "auto_map": {"AutoTokenizer": [None, "x.Y"]}}))
    calls = []
    original = AutoTokenizer.from_pretrained.__func__

    def recorded(cls, *args, **kwargs):
        calls.append(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(recorded))
    try:
        load_tokenizer(folder)
    except ValueError as e:
        assert "never runs a checkpoint's code" in str(e)
    assert calls and calls[0]["trust_remote_code"] is False
