"""Moved to `teacherlm_jax.generation`; these names stay importable from here."""
from teacherlm_jax.generation.generate import GenerateOutput, decoding_layout, generate
from teacherlm_jax.generation.sampler import Sampler, bucket_length
from teacherlm_jax.generation.slots import CACHE_AXES, num_traces

__all__ = ["CACHE_AXES", "GenerateOutput", "Sampler", "bucket_length", "decoding_layout", "generate", "num_traces"]
