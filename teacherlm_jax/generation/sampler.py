"""The sampler, the sampling settings a generation job runs with, and the prompt length buckets."""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from teacherlm_jax.config_checks import require_int

# Prompt (and prefill) widths: powers of two and 1.5x powers of two from 16, so that at most a third of a
# padded width is padding while a dataset-scale job compiles a handful of programs.
PROMPT_BUCKETS = tuple(sorted({b for p in range(4, 16) for b in (2 ** p, 3 * 2 ** (p - 1))}))


def bucket_length(length: int, buckets: Sequence[int] | None = None) -> int:
    """The smallest bucket >= `length` (default: PROMPT_BUCKETS); beyond the largest, the length itself."""
    return min((b for b in (PROMPT_BUCKETS if buckets is None else buckets) if b >= length), default=length)


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Picks the next token from logits: greedy at temperature 0, else temperature -> top-k -> top-p.

    The order and the top-p rule are those of transformers' logits warpers: top-p keeps the most
    likely tokens until their probability mass reaches `top_p` (always at least one). Top-k keeps
    exactly `top_k` tokens (ties at the k-th logit are broken towards the lower token id, where
    transformers keeps every tied token); `top_k` >= the vocabulary keeps all. Top-k and top-p always
    keep the most likely token, so at temperature 0 they change nothing. Frozen and hashable: it is a
    static argument of the compiled program.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.temperature, numbers.Real) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise ValueError(f"temperature={self.temperature!r}; expected a finite number >= 0 (0 is greedy)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise ValueError(f"top_k={self.top_k!r}; expected an integer >= 0 (0 turns top-k off)")
        if not (isinstance(self.top_p, numbers.Real) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p={self.top_p!r}; expected a number in (0, 1] (1 turns top-p off)")
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_k", int(self.top_k))
        object.__setattr__(self, "top_p", float(self.top_p))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def candidates(self, logits: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """Warped logits [..., n] of the candidate tokens and their ids (None: the whole vocabulary).

        Removed tokens get -inf. With top-k only k candidates are kept, so top-p sorts k values, not
        the vocabulary (the tokens top-k removed have probability 0 and change no cumulative sum).
        """
        x = logits.astype(jnp.float32) / (self.temperature or 1.0)
        ids = None
        vocab = x.shape[-1]
        if 0 < self.top_k < vocab:
            x, ids = jax.lax.top_k(x, self.top_k)  # sorted, largest first
        if self.top_p < 1.0:
            if ids is None:
                x, ids = jax.lax.top_k(x, vocab)
            probs = jax.nn.softmax(x, axis=-1)
            mass_before = jnp.cumsum(probs, axis=-1) - probs
            x = jnp.where(mass_before < self.top_p, x, -jnp.inf)
        return x, ids

    def __call__(self, logits: jax.Array, keys: jax.Array) -> jax.Array:
        """Next tokens [rows] from logits [rows, vocab], one PRNG key per row (unused when greedy)."""
        if self.greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        x, ids = self.candidates(logits)
        if ids is None:
            return jax.vmap(jax.random.categorical)(keys, x).astype(jnp.int32)
        # Gumbel-max with each candidate's noise drawn from its token id, not its place in the sorted
        # candidates: two nearly tied logits that rounding orders either way (another batch shape, another
        # prefill split) still draw the same token.
        noise = jax.vmap(lambda key, tokens: jax.vmap(
            lambda token: jax.random.gumbel(jax.random.fold_in(key, token)))(tokens))(keys, ids)
        choice = jnp.argmax(x + noise, axis=-1)
        return jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How a job samples; defaults are TeacherLM's teacher (transformers `generate`, do_sample, top-k 50).

    TeacherLM allowed 2048 new tokens; 512 is the default here because BLOOM's 2048 positions hold the
    prompt too. temperature 0 is greedy; num_samples > 1 (Fine-tune-CoT's diverse reasoning) needs
    temperature > 0. stop_at_eos=False always generates max_new_tokens (benchmarks).
    """

    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    max_new_tokens: int = 512
    num_samples: int = 1
    stop_at_eos: bool = True
    seed: int = 0

    def __post_init__(self):
        self.sampler()  # raises on a bad temperature, top_k or top_p, naming it
        require_int("max_new_tokens", self.max_new_tokens, 1)
        require_int("num_samples", self.num_samples, 1)
        require_int("seed", self.seed, 0)
        if not isinstance(self.stop_at_eos, bool):
            raise ValueError(f"stop_at_eos={self.stop_at_eos!r}; expected True or False")
        if self.num_samples > 1 and self.temperature == 0:
            raise ValueError(f"num_samples={self.num_samples} at temperature=0: greedy samples are identical; "
                             f"use temperature > 0 for diverse reasoning")

    def sampler(self) -> Sampler:
        """The per-token sampler these settings pick with."""
        return Sampler(self.temperature, self.top_k, self.top_p)
