"""The training engine: train state and step, optimizer, data contract, checkpoints, metrics, loop."""
from teacherlm_jax.train.loop import export_hf, run, train

__all__ = ["export_hf", "run", "train"]
