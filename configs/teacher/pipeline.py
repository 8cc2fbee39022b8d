"""The teacher's three stages in one job: 1 -> 2 -> 3 (cot, fundamentals, mistakes), the pipeline job
(configs/pipeline.py) with teacher stages only.

`python -m teacherlm_jax.main --config configs/teacher/pipeline.py[:tiny] --workdir DIR` trains each stage in
DIR/teacher/<stage>, starting it from the previous stage's export; a rerun reuses finished stages and resumes
a stopped one. Stage settings are under `config.teacher.<stage>` (e.g.
`--config.teacher.stage1.num_train_steps=500`); `--config.teacher.stages="('stage1','stage2')"` runs a subset.
The shared data has chain-of-thought rationales only: the default teaches `cot`; for all three kinds pass
JSONL with `fundamentals` / `mistakes` texts to stages 2 and 3 and `--config.teacher.kinds=...` (checked
before any stage trains).
"""
from configs import pipeline


VARIANTS = {"": "the three bloom-560m teacher stages of configs/pipeline.py",
            "tiny": "the same with a tiny BLOOM on the synthetic suite (tests)"}


def get_config(arg: str | None = None):
    config = pipeline.get_config(arg)
    config.title = "TeacherLM teacher stages"
    for step in ("augment", "students", "eval"):
        del config[step]
    return config
