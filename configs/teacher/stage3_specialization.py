"""Teacher stage 3, specialization: one model per kind, each from stage 2.

`--config configs/teacher/stage3_specialization.py:cot` (or `:fundamentals`, `:mistakes`; add `,tiny`
for the CPU variant, e.g. `:cot,tiny`). Default start: runs/teacher/stage2_personalization.
"""
from configs.teacher.stages import parse_variant, teacher_stage

KINDS = ("cot", "fundamentals", "mistakes")
STAGE2 = "runs/teacher/stage2_personalization"
# Shared data with each kind (fundamentals / mistakes need your own JSONL; see stage2's docstring).
DATASETS = {"cot": ("creak", "strategyqa", "gsm8k"), "fundamentals": (), "mistakes": ()}


VARIANTS = {"cot": "from stage 2, chain of thought only",
            "fundamentals": "fundamentals only (set config.data.datasets: JSONL with fundamentals)",
            "mistakes": "common mistakes only (set config.data.datasets: JSONL with mistakes)",
            "cot,tiny": "a tiny BLOOM on the synthetic suite (CPU); with any kind"}


def get_config(arg: str | None = None):
    words = parse_variant(arg, one_of=KINDS)
    (kind,) = words & set(KINDS)
    return teacher_stage(fmt=kind, datasets=DATASETS[kind], init_from=STAGE2,
                         tiny="tiny" in words, num_train_steps=1000)
