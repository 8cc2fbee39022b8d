"""Tiny random transformers checkpoints, built in-process, that the tests compare against."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Layer norms start at weight 1, bias 0; random values make a wrong wiring visible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.copy_(0.05 * torch.randn(module.bias.shape, generator=gen))


def tiny_bloom(directory: Path | None = None, *, seed: int = 0, vocab_size: int = 128, hidden_size: int = 48,
               n_layer: int = 2, n_head: int = 6, safe_serialization: bool = True, **kwargs):
    """A random BloomForCausalLM in float32 (saved to `directory` when given)."""
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(seed)
    config = BloomConfig(vocab_size=vocab_size, hidden_size=hidden_size, n_layer=n_layer, n_head=n_head,
                         initializer_range=0.1, **kwargs)
    model = BloomForCausalLM(config).eval()
    randomize_norms(model, seed)
    if directory is not None:
        save_reference(model, directory, safe_serialization)
    return model


def save_reference(model, directory: Path, safe_serialization: bool = True) -> None:
    """transformers 5 writes only safetensors; `.bin` checkpoints (older releases) are written by hand."""
    if safe_serialization:
        model.save_pretrained(directory)
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # tied tensors saved once each
    torch.save(state, Path(directory) / "pytorch_model.bin")


def torch_logits(model, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(np.asarray(input_ids)),
                    attention_mask=None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask)))
    return out.logits.float().numpy()


def tiny_tokenizer(words: tuple[str, ...] = ("the", "cat", "sat", "on", "mat", "a", "dog")):
    """A word-level fast tokenizer with BLOOM's special-token ids (unk 0, bos 1, eos 2, pad 3)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(words)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")


def tiny_opt(directory: Path | None = None, *, seed: int = 0, vocab_size: int = 128, hidden_size: int = 48,
             num_hidden_layers: int = 2, num_attention_heads: int = 6, ffn_dim: int = 96,
             max_position_embeddings: int = 32, safe_serialization: bool = True, **kwargs):
    """A random OPTForCausalLM in float32 (saved to `directory` when given)."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    config = OPTConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                       num_attention_heads=num_attention_heads, ffn_dim=ffn_dim,
                       max_position_embeddings=max_position_embeddings, init_std=0.1, **kwargs)
    model = OPTForCausalLM(config).eval()
    randomize_norms(model, seed)
    if directory is not None:
        save_reference(model, directory, safe_serialization)
    return model


def left_padded_batch(vocab: int, lengths: list[int], *, pad_id: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random ids [rows, max(lengths)], row r left-padded with `pad_id` to `lengths[r]` real tokens."""
    rng = np.random.RandomState(seed)
    width = max(lengths)
    ids = rng.randint(4, vocab, (len(lengths), width))
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, width - n:] = 1
        ids[row, :width - n] = pad_id
    return ids, mask


# The tiny checkpoints the numerics tests run on, by family: each exercises a wiring the other lacks.
CHECKPOINTS = {
    "bloom_6_heads": ("bloom", dict(n_head=6, hidden_size=48)),
    "bloom_12_heads_post_ln_untied": ("bloom", dict(n_head=12, hidden_size=48,
                                                    apply_residual_connection_post_layernorm=True,
                                                    tie_word_embeddings=False)),
    "bloom_16_heads_3_layers": ("bloom", dict(n_head=16, hidden_size=64, n_layer=3, layer_norm_epsilon=1e-3)),
    "bloom_5_heads": ("bloom", dict(n_head=5, hidden_size=40)),
    "opt_pre_ln": ("opt", dict()),
    # opt-350m's shape: post-LN blocks, embeddings narrower than the hidden size.
    "opt_post_ln_projected": ("opt", dict(do_layer_norm_before=False, word_embed_proj_dim=32)),
    # head_dim 12 (q scale not a power of two), exact GELU, no biases, untied head, no final layer norm.
    "opt_untied_gelu_no_bias_no_final_ln": ("opt", dict(num_attention_heads=4, activation_function="gelu",
                                                        enable_bias=False, tie_word_embeddings=False,
                                                        _remove_final_layer_norm=True, num_hidden_layers=3)),
}
PAD_ID = {"bloom": 3, "opt": 1}
CHECKPOINT_VOCAB = 128


def reference_checkpoint(name: str, directory: Path):
    """CHECKPOINTS[name] saved to `directory`; returns (family, the torch model)."""
    family, kwargs = CHECKPOINTS[name]
    build = tiny_bloom if family == "bloom" else tiny_opt
    return family, build(directory, vocab_size=CHECKPOINT_VOCAB, **kwargs)
