"""The teacher's three stages in one job: 1 -> 2 -> 3 (cot, fundamentals, mistakes).

`python -m teacherlm_jax.main --config configs/teacher/pipeline.py[:tiny] --workdir DIR` trains each
stage in DIR/<stage>, starting it from the previous stage's export; a stage whose final export is
complete is skipped, one that was stopped resumes from its checkpoint. Stage settings are under
`config.stages.<stage>` (e.g. `--config.stages.stage1_multitask.num_train_steps=500`).
"""
import ml_collections

from configs import common
from configs.teacher import stage1_multitask, stage2_personalization, stage3_specialization
from configs.teacher.stages import parse_variant


def get_config(arg: str | None = None):
    words = parse_variant(arg)
    variant = "tiny" if "tiny" in words else None
    config = common.base("teacher_pipeline")
    config.stages = ml_collections.ConfigDict()
    config.stages.stage1_multitask = stage1_multitask.get_config(variant)
    config.stages.stage2_personalization = stage2_personalization.get_config(variant)
    for kind in stage3_specialization.KINDS:
        config.stages[f"stage3_{kind}"] = stage3_specialization.get_config(",".join(filter(None, (kind, variant))))
    # Each stage starts from this one's export (set by the job, whatever the stage configs say).
    config.previous = {"stage2_personalization": "stage1_multitask", "stage3_cot": "stage2_personalization",
                       "stage3_fundamentals": "stage2_personalization", "stage3_mistakes": "stage2_personalization"}
    return config
