"""Moved to `teacherlm_jax.generation.scheduler` (nothing in it is augment-specific); these names stay
importable from here."""
from teacherlm_jax.generation.scheduler import BUCKETS, TAIL_SLOTS, Engine, Prompt, prompt_width
from teacherlm_jax.generation.sampler import SUFFIX_BUCKETS

__all__ = ["BUCKETS", "SUFFIX_BUCKETS", "TAIL_SLOTS", "Engine", "Prompt", "prompt_width"]
