"""The tiny teacher pipeline: stages 1 -> 2 -> 3 (x3) train on CPU, chain their weights, and resume."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the configs package, as `python -m teacherlm_jax.main` sees it

from configs.student import finetune  # noqa: E402
from configs.teacher import pipeline, stage3_specialization  # noqa: E402
from teacherlm_jax import teacher_pipeline  # noqa: E402

STAGES = ["stage1_multitask", "stage2_personalization", "stage3_cot", "stage3_fundamentals", "stage3_mistakes"]


def losses(stage_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    config = pipeline.get_config("tiny")
    for stage in STAGES:
        s = config.stages[stage]
        s.num_train_steps, s.log_every, s.eval_every, s.checkpoint_every, s.batch_size = 12, 3, 0, 12, 4
        s.plot = False
    workdir = tmp_path_factory.mktemp("teacher")
    teacher_pipeline.run(config, str(workdir))
    return config, workdir


def test_loss_falls_in_every_stage(tiny_pipeline):
    _, workdir = tiny_pipeline
    for stage in STAGES:
        curve = losses(workdir / stage)
        assert len(curve) == 4, stage
        assert curve[-1] < curve[0], (stage, curve)
        assert (workdir / stage / "hf_final" / "config.json").is_file()
        assert (workdir / stage / "hf_final" / "tokenizer.json").is_file()


def test_each_stage_starts_from_the_previous_stage(tiny_pipeline):
    config, workdir = tiny_pipeline
    assert teacher_pipeline.stage_config(config, "stage1_multitask", workdir).model.init_from is None
    assert (teacher_pipeline.stage_config(config, "stage2_personalization", workdir).model.init_from
            == str(workdir / "stage1_multitask" / "hf_final"))
    for kind in ("cot", "fundamentals", "mistakes"):
        assert (teacher_pipeline.stage_config(config, f"stage3_{kind}", workdir).model.init_from
                == str(workdir / "stage2_personalization" / "hf_final"))
    # A fresh byte-level model starts near ln(260) = 5.6; a stage started from trained weights does not.
    first = {stage: losses(workdir / stage)[0] for stage in STAGES}
    assert first["stage1_multitask"] > 4.5
    for stage in STAGES[1:]:
        assert first[stage] < first["stage1_multitask"] - 1.0, first


def test_rerun_skips_complete_stages(tiny_pipeline, caplog):
    config, workdir = tiny_pipeline
    before = {stage: (workdir / stage / "metrics.jsonl").read_text() for stage in STAGES}
    with caplog.at_level("INFO"):
        teacher_pipeline.run(config, str(workdir))
    assert all(f"stage {stage}: complete" in caplog.text for stage in STAGES)
    assert before == {stage: (workdir / stage / "metrics.jsonl").read_text() for stage in STAGES}


def test_stage_variants_and_their_errors():
    assert stage3_specialization.get_config("mistakes,tiny").data.format == "mistakes"
    with pytest.raises(ValueError, match="exactly one of"):
        stage3_specialization.get_config("tiny")
    with pytest.raises(ValueError, match="unknown variant words"):
        pipeline.get_config("huge")
    student = finetune.get_config("cot,ftcot")
    assert (student.data.style, student.data.loss_on, student.data.format) == ("finetune_cot", "target", "cot")
    assert finetune.get_config("text").data.format == "answer"
    assert finetune.get_config("mixed,opt").model.family == "opt"
