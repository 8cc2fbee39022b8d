"""What BLOOM and OPT share around their block stacks: logits are the output head applied to the final hidden
states, and both halves are reachable on their own, so that the training loss can apply the head a chunk of
the sequence at a time (`teacherlm_jax.train.step`) instead of holding [batch, length, vocab] float32 logits.
"""
from __future__ import annotations

import jax
from flax import nnx

from teacherlm_jax.models.kv_cache import KVCache
from teacherlm_jax.models.layers import output_logits, resolve_dtype


class CausalLM(nnx.Module):
    """A decoder: `model(input_ids, attention_mask=None, *, cache=None)` -> float32 logits [batch, length, vocab]
    (with a cache, also the updated cache). Subclasses define `final_hidden` and `output_head`."""

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
        step = getattr(self, "is_for_decoding", False) and x.shape[1] == 1
        return output_logits(x, head, resolve_dtype(self.config.dtype), vocab_major=step)


def with_cache(logits: jax.Array, new_cache: KVCache | None, cache: KVCache | None, length: int):
    """A decoder's return value: logits alone without a cache, else (logits, cache advanced by `length`)."""
    if cache is None:
        return logits
    return logits, new_cache.replace(index=cache.index + length)
