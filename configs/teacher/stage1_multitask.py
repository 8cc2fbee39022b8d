"""Teacher stage 1, multi-task training: `--config configs/teacher/stage1_multitask.py[:tiny]`.

The paper trains on P3-Sense-3K and Muffin (instruction data, not bundled): pass instruction JSONL
with `--config.data.format=instruction --config.data.datasets="('p3.jsonl','muffin.jsonl')"`. The
default trains the answer of every multiple-choice dataset at hand (`Q: ... A: The answer is (X).`).
"""
from configs.teacher.stages import parse_variant, teacher_stage


VARIANTS = {"": "bloom-560m, the answers of the shared multiple-choice datasets",
            "tiny": "a tiny BLOOM on the synthetic suite (CPU)"}


def get_config(arg: str | None = None):
    words = parse_variant(arg)
    return teacher_stage(fmt="answer", datasets=("creak", "strategyqa", "ecqa"),
                         init_from=None, tiny="tiny" in words)
