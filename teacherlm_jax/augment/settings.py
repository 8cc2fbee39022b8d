"""What the augment job generates and how it cuts the work: kinds, sampling (`generation.sampler.Sampling`),
batching, prompt limits, seeds."""
from __future__ import annotations

import dataclasses
import hashlib
import json

from teacherlm_jax.data import KINDS
from teacherlm_jax.config_checks import require_int
from teacherlm_jax.generation.sampler import Sampling

TRUNCATION = ("left", "skip")
ENGINES = ("continuous", "static")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the job generates and how it cuts the work (see `teacherlm_jax.augment`): `batch_size` prompts
    decode at once (batch_size x num_samples slots), `chunk_size` records per part file, `engine`
    "continuous" (slots refilled as rows end) or "static" (batches decode until their longest row ends)."""

    kinds: tuple[str, ...] = KINDS
    sampling: Sampling = Sampling()
    batch_size: int = 16
    chunk_size: int = 256
    max_prompt_tokens: int = 0
    truncation: str = "left"
    engine: str = "continuous"

    def __post_init__(self):
        kinds = self.kinds
        if isinstance(kinds, str) or not kinds or len(set(kinds)) != len(kinds) or set(kinds) - set(KINDS):
            bad = [k for k in ([kinds] if isinstance(kinds, str) else kinds) if k not in KINDS]
            raise ValueError(f"kinds={kinds!r}; expected a non-empty tuple of distinct kinds out of {KINDS}"
                             + (f" ({bad} unknown)" if bad else ""))
        object.__setattr__(self, "kinds", tuple(kinds))
        require_int("batch_size", self.batch_size, 1)
        require_int("chunk_size", self.chunk_size, 1)
        require_int("max_prompt_tokens", self.max_prompt_tokens, 0)
        if self.truncation not in TRUNCATION:
            raise ValueError(f"truncation={self.truncation!r}; expected one of {TRUNCATION}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine={self.engine!r}; expected one of {ENGINES}")

    def prompt_limit(self, max_position_embeddings: int) -> int:
        """Most prompt tokens the teacher reads: what max_new_tokens leaves of the model's positions."""
        room = max_position_embeddings - self.sampling.max_new_tokens
        if room < 1:
            raise ValueError(f"max_new_tokens={self.sampling.max_new_tokens} leaves no room for a prompt in the "
                             f"model's max_position_embeddings={max_position_embeddings}")
        if self.max_prompt_tokens > room:
            raise ValueError(f"max_prompt_tokens={self.max_prompt_tokens} plus max_new_tokens="
                             f"{self.sampling.max_new_tokens} exceeds max_position_embeddings="
                             f"{max_position_embeddings}")
        return self.max_prompt_tokens or room


def prompt_seed(seed: int, dataset: str, record_id: str, kind: str) -> int:
    """A prompt's own seed in [0, 2**32): stable across batching, processes and restarts."""
    digest = hashlib.blake2b(json.dumps([seed, dataset, record_id, kind]).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")
