"""Decoders (BLOOM, OPT) and their Hugging Face checkpoint interop."""
from flax import nnx

# Parameters carry logical axis names only; shardings are applied by teacherlm_jax.sharding rules,
# not eagerly at creation (which would need a global mesh for every model, even on one CPU).
nnx.use_eager_sharding(False)
