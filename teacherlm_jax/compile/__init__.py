"""The compile job (job.py): a training step compiled ahead of time for a mesh, and generation's memory per chip
(generation_memory.py), so a configuration is sized before chips are rented."""
