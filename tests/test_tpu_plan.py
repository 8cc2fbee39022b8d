"""The pipeline's plan before renting (`--dry_run --config.topology=NAME`, teacherlm_jax/pipeline/tpu_plan.py):
on the tiny pipeline and a v5e:2x2 slice (libtpu compiles for it here), every model step is named with a
verdict and a bound, a deliberately huge eval batch does not fit (the program and the excess named, with
what to change), the chip-hours total is the sum of the steps' bounds, the workdir is left as found, and
steps of one program identity (the teacher stages and students of one tiny model) compile it once.
A step's model follows its `@step` chain to its origin without reading any workdir."""
from __future__ import annotations

import os
import re

import pytest

from configs import demo as demo_config
from configs import pipeline as pipeline_config
from teacherlm_jax import cli
from teacherlm_jax.compile.job import human_bytes
from teacherlm_jax.errors import ConfigError
from teacherlm_jax.pipeline import tpu_plan
from teacherlm_jax.pipeline.plan import build_plan

SLICE = "v5e:2x2"
HUGE_BATCH = 2 ** 16  # eval rows whose scoring needs far more than 4 chips of 16 GiB


def listing(root) -> list[tuple[str, int, int]]:
    return sorted((os.path.relpath(os.path.join(d, f), root), os.stat(os.path.join(d, f)).st_size,
                   os.stat(os.path.join(d, f)).st_mtime_ns) for d, _, files in os.walk(root) for f in files)


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """(dry-run text, estimates, cache, compiles counted, workdir listing before, after) of the tiny pipeline."""
    try:
        tpu_plan.parse_slice(SLICE).devices()
    except ConfigError as e:
        pytest.skip(f"no TPU compiler here: {e}")
    config = pipeline_config.get_config("tiny")
    config.topology = SLICE
    config.eval.batch_size = HUGE_BATCH
    work = tmp_path_factory.mktemp("work")
    (work / "notes.txt").write_text("a file the plan must leave alone\n")
    before = listing(work)
    seen, compiles = {}, []
    original_describe, original_compile = tpu_plan.describe, tpu_plan.compile_and_report

    def describe(estimates, cache, seconds):
        seen.update(estimates=estimates, cache=cache)
        return original_describe(estimates, cache, seconds)

    def compile_and_report(lowered, chip, limit_bytes):
        compiles.append(lowered)
        return original_compile(lowered, chip, limit_bytes)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tpu_plan, "describe", describe)
        patch.setattr(tpu_plan, "compile_and_report", compile_and_report)
        text = cli.dry_run(config, str(work))
    return text, seen["estimates"], seen["cache"], len(compiles), before, listing(work), config


@pytest.mark.slow
def test_plan_names_steps_verdicts_and_bounds(planned):
    text, estimates, cache, _, _, _, config = planned
    plan_text = text.split("TPU plan on ", 1)[1]
    model_steps = [s for s in build_plan(config) if s.job in ("train", "augment", "eval")]
    assert [e.step for e in estimates] == [s.name for s in model_steps]
    for e in estimates:
        line = next(line for line in plan_text.splitlines() if line.startswith(e.step + " "))
        assert ("DOES NOT FIT" if e.job == "eval" else "fits") in line, line
    for e in estimates:
        if e.job == "train":
            step = next(s for s in model_steps if s.name == e.step)
            assert e.fits and e.seconds == step.config.num_train_steps * e.programs["train_step"].roofline_seconds
        if e.job == "eval":  # refused by XLA for the chip's memory: no cost, no bound
            assert e.seconds is None and e.per_thousand is None and e.fits is False
    augment = next(e for e in estimates if e.job == "augment")
    # synthetic:student_train is generated locally: its records (max_records of them) are counted
    decode_ceiling = config.augment.batch_size / augment.programs["decode_round"].roofline_seconds
    tokens = config.augment.max_records * config.augment.sampling.max_new_tokens
    assert augment.seconds == pytest.approx(tokens / decode_ceiling)
    chips = cache.tpu.chips
    total = sum(e.seconds for e in estimates if e.seconds is not None) * chips / 3600
    assert f"total: >= {total:.3g} chip-hours" in plan_text


@pytest.mark.slow
def test_too_big_step_names_program_excess_and_changes(planned):
    text, estimates, cache, *_ = planned
    section = text.split("does not fit:", 1)[1]
    for evaluation in (e for e in estimates if e.job == "eval"):
        misfits = {name: p for name, p in evaluation.programs.items() if not p.fits}
        assert misfits and all(p.peak_bytes > cache.limit_bytes for p in misfits.values())
        for name, p in misfits.items():
            needs = "needs at least" if p.error else "needs"
            assert (f"{evaluation.step}: {name} {needs} {human_bytes(p.peak_bytes)} a chip, "
                    f"{human_bytes(p.peak_bytes - cache.limit_bytes)} more than 16.00 GiB") in section
    assert f"--config.eval.batch_size={HUGE_BATCH // 2}" in section
    assert "no bound (does not fit): eval/teacher" in text
    assert re.search(r"more chips: a slice of >= \d+ chips", section)


@pytest.mark.slow
def test_identical_programs_compile_once_and_workdir_untouched(planned):
    _, estimates, cache, compiles, before, after, _ = planned
    assert after == before
    assert compiles == cache.compiles == len(cache.reports)
    requested = sum(len(e.programs) for e in estimates)
    assert compiles < requested
    students = [e for e in estimates if e.step.startswith("students/")]
    assert len(students) == 2 and students[0].programs["train_step"] is students[1].programs["train_step"]
    # the teacher's and a student's scoring: one model however their configs spell it
    scored = [e for e in estimates if e.job == "eval" and "scoring" in e.programs]
    assert len(scored) == 2 and scored[0].programs["scoring"] is scored[1].programs["scoring"]


def test_model_follows_reference_chain_to_its_origin():
    config = demo_config.get_config("tiny")
    steps = build_plan(config)
    by_name = {s.name: s for s in steps}
    origin = by_name["teacher/stage1"].config.model.to_dict()
    augment = tpu_plan.model_section(by_name["augment/cot"], steps)
    # the stage-1 model's architecture, run as the augment step runs it
    assert augment["hidden_size"] == origin["hidden_size"] and augment["n_layer"] == origin["n_layer"]
    assert augment["init_from"] is None and augment["dtype"] == config.augment.teacher.dtype
    student = tpu_plan.model_section(by_name["eval/answers_only"], steps)
    assert student["vocab_size"] == config.students.answers_only.train.model.vocab_size


def test_records_counted_locally_or_said_unknown():
    tiny = pipeline_config.get_config("tiny").augment
    assert tpu_plan.count_records(tiny) == (tiny.max_records, "")
    records, why = tpu_plan.count_records(demo_config.get_config().augment)
    assert records == 0 and "@suite/students.jsonl is written by an earlier step" in why
    evaluation = pipeline_config.get_config("tiny").eval
    assert tpu_plan.count_questions(evaluation) == (evaluation.max_examples, "")


def test_a_hub_model_not_cached_is_refused_not_downloaded():
    config = pipeline_config.get_config()
    config.teacher.init_from = "someone/not-a-cached-model"
    steps = build_plan(config)
    with pytest.raises(ConfigError, match="downloads nothing"):  # followed from augment/cot to the teacher's origin
        tpu_plan.model_section(next(s for s in steps if s.name == "augment/cot"), steps)
    student = tpu_plan.model_section(next(s for s in steps if s.name.startswith("students/")), steps)
    assert student["init_from"] == "bigscience/bloom-560m"  # a published shape: nothing to fetch
