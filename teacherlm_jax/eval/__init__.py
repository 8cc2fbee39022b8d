"""Multiple-choice evaluation: the eval job and its library entry points (`evaluate_records`, `evaluate_tasks`)
in job.py; its pieces: scoring (log-likelihood; its batches planned by batch_plan), generative answers, task names, reports."""
