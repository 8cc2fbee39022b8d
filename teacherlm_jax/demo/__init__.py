"""The end-to-end TeacherLM demo on a laptop CPU (`config.job = "demo"`, configs/demo.py).

pipeline.py runs the steps (suite, tokenizer, teacher stages, augmentation, students, evaluation),
tokenizer.py trains the suite's tokenizer, report.py writes DIR/report.md and DIR/report.json.
"""
from teacherlm_jax.demo.pipeline import run

__all__ = ["run"]
