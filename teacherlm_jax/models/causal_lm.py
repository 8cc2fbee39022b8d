"""What BLOOM and OPT share around their block stacks: the length guard, the KV cache, the decode layout, and
logits as the output head applied to the final hidden states. Both halves are reachable on their own, so that
the training loss can apply the head a chunk of the sequence at a time (`teacherlm_jax.train.step`) instead of
holding [batch, length, vocab] float32 logits.
"""
from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from teacherlm_jax.models.kv_cache import KVCache
from teacherlm_jax.models.layers import output_logits, resolve_dtype
from teacherlm_jax.models.stack import decoding_blocks


class CausalLM(nnx.Module):
    """A decoder: `model(input_ids, attention_mask=None, *, cache=None)` -> float32 logits [batch, length, vocab]
    (with a cache, also the updated cache). Subclasses define `final_hidden` and `output_head`, name their block
    stack's attribute (`blocks_attr`) and say what an input longer than their positions should do (`too_long`);
    their config has `num_layers`, `num_heads`, `head_dim`, `max_position_embeddings`, `dtype` and `scan_layers`."""

    blocks_attr: str
    too_long: str
    is_for_decoding: bool = False  # True on `for_decoding()`'s copy

    def check_length(self, length: int) -> None:
        """Refuses inputs (or caches) longer than the model's positions."""
        if length > self.config.max_position_embeddings:
            raise ValueError(f"input of {length} tokens is longer than the model supports (max_position_embeddings="
                             f"{self.config.max_position_embeddings}{self.too_long}")

    def init_cache(self, batch: int, max_length: int) -> KVCache:
        """An empty KV cache for `max_length` slots (prompt plus new tokens)."""
        c = self.config
        self.check_length(max_length)
        return KVCache.zeros(c.num_layers, batch, max_length, c.num_heads, c.head_dim, resolve_dtype(c.dtype))

    def for_decoding(self) -> CausalLM:
        """This model laid out for generation's steps (the decode layout): its block stack as a list of layers,
        so that no decode step copies slices of stacked weights or caches. The same function. A scanned stack's
        layers are sliced out once (a copy of the blocks' weights); a model loaded with `scan_layers=False`
        shares its weights, so generation holds them once. Made once, before generating; a decode layout
        returns itself."""
        if self.is_for_decoding:
            return self
        copy = nnx.merge(*nnx.split(self))
        setattr(copy, self.blocks_attr, decoding_blocks(getattr(copy, self.blocks_attr), self.config.scan_layers))
        copy.config = dataclasses.replace(self.config, scan_layers=False, remat_policy="none")  # no gradients
        copy.is_for_decoding = True
        return copy

    def final_hidden(self, input_ids: jax.Array, attention_mask: jax.Array | None, cache: KVCache | None,
                     segment_ids: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
        """Hidden states [batch, length, embed] after the last block and final norm/projection, and the
        updated cache (None without one). `segment_ids` [batch, length] (no cache): sequences packed in a
        row, each attending only within itself at its own positions."""
        raise NotImplementedError

    def output_head(self) -> jax.Array:
        """The head [embed, vocab]: the tied embedding transposed, or the untied lm_head."""
        raise NotImplementedError

    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *, cache: KVCache | None = None
    ) -> jax.Array | tuple[jax.Array, KVCache]:
        """Logits for `input_ids`; with `cache`, also the updated cache.

        Without a cache `attention_mask` is [batch, length]; with one it covers all cache slots
        [batch, cache.max_length]: 1 where a real token is or will be written, 0 for padding.
        """
        x, new_cache = self.final_hidden(input_ids, attention_mask, cache)
        return with_cache(self.logits(x, self.output_head()), new_cache, cache, input_ids.shape[1])

    def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                      segment_ids: jax.Array | None = None) -> jax.Array:
        """Final hidden states [batch, length, embed]: `logits(hidden_states(ids, mask), output_head())` is
        `model(ids, mask)`; with `segment_ids`, each packed segment's are those it has alone."""
        return self.final_hidden(input_ids, attention_mask, None, segment_ids)[0]

    def logits(self, x: jax.Array, head: jax.Array) -> jax.Array:
        """Float32 logits of hidden states `x` through `head` (`output_head()`, passed in so that a loss can
        differentiate through it); a decode layout's one-token steps compute them vocabulary-major."""
        step = self.is_for_decoding and x.shape[1] == 1
        return output_logits(x, head, resolve_dtype(self.config.dtype), vocab_major=step)


def with_cache(logits: jax.Array, new_cache: KVCache | None, cache: KVCache | None, length: int):
    """A decoder's return value: logits alone without a cache, else (logits, cache advanced by `length`)."""
    if cache is None:
        return logits
    return logits, new_cache.replace(index=cache.index + length)
