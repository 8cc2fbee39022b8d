"""Hugging Face checkpoint import/export: layouts, round trips, and errors that name the problem."""
import json

import numpy as np
import pytest
import torch

import teacherlm_jax as tl
from reference_models import tiny_bloom, torch_logits

from teacherlm_jax.errors import CheckpointError

IDS = np.array([[3, 3, 10, 20, 30, 40], [5, 6, 7, 8, 9, 11]])
MASK = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


def assert_same_logits(model, reference):
    expected = torch_logits(reference, IDS, MASK)
    got = np.asarray(model(IDS, MASK))
    real = MASK.astype(bool)
    np.testing.assert_allclose(got[real], expected[real], rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("tie", [True, False])
def test_save_pretrained_round_trips_through_transformers(tmp_path, tie):
    from transformers import BloomForCausalLM

    reference = tiny_bloom(tmp_path / "in", tie_word_embeddings=tie, apply_residual_connection_post_layernorm=not tie)
    model = tl.from_pretrained(tmp_path / "in", scan_layers=tie)
    tl.save_pretrained(model, tmp_path / "out")
    reloaded = BloomForCausalLM.from_pretrained(tmp_path / "out").eval()
    np.testing.assert_allclose(torch_logits(reloaded, IDS, MASK), torch_logits(reference, IDS, MASK),
                               rtol=1e-6, atol=1e-6)
    assert_same_logits(tl.from_pretrained(tmp_path / "out"), reference)


def test_save_pretrained_bfloat16_loads_in_transformers(tmp_path):
    from transformers import BloomForCausalLM

    tiny_bloom(tmp_path / "in")
    model = tl.from_pretrained(tmp_path / "in", dtype="bfloat16", param_dtype="bfloat16")
    tl.save_pretrained(model, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded = BloomForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.bfloat16)
    assert reloaded.transformer.word_embeddings.weight.dtype == torch.bfloat16
    ours = tl.from_pretrained(tmp_path / "out", dtype="bfloat16", param_dtype="bfloat16")
    np.testing.assert_array_equal(np.asarray(ours.word_embeddings.get_value(), np.float32),
                                  reloaded.transformer.word_embeddings.weight.detach().float().numpy())


def test_sharded_safetensors_checkpoint_loads(tmp_path):
    from transformers import BloomForCausalLM

    reference = tiny_bloom(None, n_layer=3)
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert_same_logits(tl.from_pretrained(tmp_path), reference)
    # Our writer shards the same way, and transformers reads it back.
    tl.save_pretrained(tl.from_pretrained(tmp_path), tmp_path / "ours", max_shard_bytes=20_000)
    shards = sorted((tmp_path / "ours").glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    assert_same_logits(tl.from_pretrained(tmp_path / "ours"), reference)
    np.testing.assert_allclose(torch_logits(BloomForCausalLM.from_pretrained(tmp_path / "ours"), IDS, MASK),
                               torch_logits(reference, IDS, MASK), rtol=1e-6, atol=1e-6)


def test_pytorch_bin_checkpoint_loads(tmp_path):
    reference = tiny_bloom(tmp_path, safe_serialization=False, tie_word_embeddings=False)
    assert list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.safetensors"))
    assert_same_logits(tl.from_pretrained(tmp_path), reference)


def test_prefixless_checkpoint_loads(tmp_path):
    """Checkpoints saved from BloomModel (as bigscience/bloom is) have no `transformer.` prefix."""
    from safetensors.torch import load_file, save_file

    reference = tiny_bloom(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    assert any(k.startswith("transformer.") for k in tensors)
    save_file({k.removeprefix("transformer."): v for k, v in tensors.items()}, path)
    assert_same_logits(tl.from_pretrained(tmp_path), reference)


def test_missing_config_is_reported(tmp_path):
    tiny_bloom(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        tl.from_pretrained(tmp_path)


def test_unknown_model_type_is_reported(tmp_path):
    tiny_bloom(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "llama-ish"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown model_type 'llama-ish'"):
        tl.from_pretrained(tmp_path)


def test_missing_weights_are_reported(tmp_path):
    tiny_bloom(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        tl.from_pretrained(tmp_path)


def test_truncated_safetensors_is_reported(tmp_path):
    tiny_bloom(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors: tensor .* extends past the end"):
        tl.from_pretrained(tmp_path)


def test_corrupt_safetensors_header_is_reported(tmp_path):
    tiny_bloom(tmp_path)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[10:20] = b"\xff" * 10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        tl.from_pretrained(tmp_path)


def test_corrupt_bin_is_reported(tmp_path):
    tiny_bloom(tmp_path, safe_serialization=False)
    path = next(tmp_path.glob("*.bin"))
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: cannot be read safely"):
        tl.from_pretrained(tmp_path)


def test_wrong_tensor_shape_is_reported(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_bloom(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    key = "transformer.h.1.mlp.dense_h_to_4h.weight"
    tensors[key] = tensors[key][:-1]
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match=r"h\.1\.mlp\.dense_h_to_4h\.weight' has shape \(191, 48\)"):
        tl.from_pretrained(tmp_path)


def test_missing_tensor_is_reported(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_bloom(tmp_path, tie_word_embeddings=False)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    del tensors["lm_head.weight"]
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match="'lm_head.weight' is missing"):
        tl.from_pretrained(tmp_path)


def test_missing_local_directory_is_reported(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        tl.from_pretrained(tmp_path / "nope")


def test_hub_id_goes_through_huggingface_hub(monkeypatch, tmp_path):
    """The hub path is real code: snapshot_download is asked for the id (answered locally here)."""
    import huggingface_hub

    reference = tiny_bloom(tmp_path / "snapshot")
    asked = []

    def fake_snapshot_download(repo_id, allow_patterns):
        asked.append((repo_id, sorted(allow_patterns)))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "list_repo_files",
                        lambda repo_id: ["config.json", "model.safetensors", "pytorch_model.bin"])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert_same_logits(tl.from_pretrained("bigscience/bloom-560m"), reference)
    # Only one weight format is fetched when a repository has both.
    assert asked == [("bigscience/bloom-560m", ["*.json", "*.model", "*.safetensors", "*.txt"])]


def test_tokenizer_is_the_checkpoints_own(tmp_path):
    from reference_models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = tl.load_tokenizer(tmp_path)
    assert loaded.padding_side == "left"
    assert loaded("the cat sat")["input_ids"] == tokenizer("the cat sat")["input_ids"]


def _tokenizer_with_auto_map(directory, tokenizer_class):
    """A saved tokenizer whose config points `auto_map` at a local .py that leaves a marker when run."""
    from reference_models import tiny_tokenizer

    tiny_tokenizer().save_pretrained(directory)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoTokenizer": ["custom_tok.CustomTokenizer", "custom_tok.CustomTokenizer"]}
    if tokenizer_class:
        config["tokenizer_class"] = tokenizer_class
    config_path.write_text(json.dumps(config))
    marker = directory / "RAN"
    (directory / "custom_tok.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class CustomTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    return marker


def test_tokenizer_code_in_the_folder_is_never_run(tmp_path, monkeypatch):
    """A user answering "y" to transformers' prompt must not matter: trust_remote_code is False."""
    marker = _tokenizer_with_auto_map(tmp_path, "CustomTokenizer")
    monkeypatch.setattr("builtins.input", lambda *args: "y")
    with pytest.raises(ValueError, match="never runs a checkpoint's code"):
        tl.load_tokenizer(tmp_path)
    assert not marker.exists()


def test_tokenizer_with_auto_map_and_builtin_class_loads_the_builtin(tmp_path):
    marker = _tokenizer_with_auto_map(tmp_path, None)
    loaded = tl.load_tokenizer(tmp_path)
    assert type(loaded).__module__.startswith("transformers.")
    assert not marker.exists()


def test_hub_id_out_of_reach_loads_from_the_hub_cache(monkeypatch, tmp_path):
    """Offline, a hub id in the local hub cache still resolves, model and tokenizer (no retry that fails)."""
    import huggingface_hub
    from reference_models import tiny_tokenizer

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--bigscience--bloom-560m"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    reference = tiny_bloom(repo / "snapshots" / commit)
    tiny_tokenizer().save_pretrained(repo / "snapshots" / commit)

    def unreachable(repo_id):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", unreachable)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert_same_logits(tl.from_pretrained("bigscience/bloom-560m"), reference)
    assert tl.load_tokenizer("bigscience/bloom-560m")("the cat")["input_ids"] == tiny_tokenizer()("the cat")["input_ids"]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="not a local directory, and the hub download failed: no network"):
        tl.from_pretrained("bigscience/bloom-560m")
