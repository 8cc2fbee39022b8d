"""Multiple-choice evaluation pieces: scoring (log-likelihood), generative answers, task names, reports.
The job and the library entry points (`evaluate_records`, `evaluate_tasks`) are in teacherlm_jax/evaluate.py."""
