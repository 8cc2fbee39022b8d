"""Teacher stage 2, personalization: one model learns all three kinds, each after its prompt.

`--config configs/teacher/stage2_personalization.py[:tiny]`. Starts from stage 1 (default: the run in
runs/teacher/stage1_multitask; override `--config.model.init_from`). Examples of the kinds are mixed by
`config.data.kind_ratios` (default 1:1:1). The shared datasets carry chain-of-thought rationales only
(CREAK explanations, StrategyQA decompositions, GSM8K solutions); bring fundamentals and common
mistakes (TeacherData-2M is not public) as generic JSONL files with `fundamentals` / `mistakes` fields.
"""
from configs.teacher.stages import parse_variant, teacher_stage

STAGE1 = "runs/teacher/stage1_multitask"


VARIANTS = {"": "from stage 1, the three kinds mixed 1:1:1", "tiny": "a tiny BLOOM on the synthetic suite (CPU)"}


def get_config(arg: str | None = None):
    words = parse_variant(arg)
    config = teacher_stage(fmt="mixed", datasets=("creak", "strategyqa", "gsm8k"),
                           init_from=STAGE1, tiny="tiny" in words)
    config.data.kind_ratios = {"cot": 1.0, "fundamentals": 1.0, "mistakes": 1.0}
    return config
