"""teacherlm_jax: TeacherLM (He et al. 2023) in JAX/Flax."""
from teacherlm_jax.models.hf import from_pretrained, save_pretrained
from teacherlm_jax.generation import generate
from teacherlm_jax.tokenizers import load_tokenizer

__all__ = ["from_pretrained", "generate", "load_tokenizer", "save_pretrained"]
