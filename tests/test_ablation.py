"""The ablation job (configs/ablation.py:tiny, the full grid with 2 seeds at tiny sizes) end to end: every
student and seed runs, the seed changes the run, the report has its structure and consistent intervals; and
the bootstrap on inputs whose answer is known. No direction of effect is asserted (tiny models)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the configs package, as `python -m teacherlm_jax.main` sees it

from configs import ablation as ablation_configs  # noqa: E402
from teacherlm_jax.errors import ConfigError  # noqa: E402
from teacherlm_jax.pipeline.ablation import bootstrap_difference, student_runs  # noqa: E402
from teacherlm_jax.pipeline.plan import build_plan  # noqa: E402

STUDENTS = ("answers_only", "cot", "fundamentals", "mistakes", "all_kinds", "finetune_cot_n1", "finetune_cot_n4")


@pytest.fixture(scope="module")
def ablation_dir(tmp_path_factory) -> Path:
    """The tiny ablation run as a user runs it (a process of its own: the students share compiled programs
    through the job's compilation cache, a process-wide jax setting)."""
    work = tmp_path_factory.mktemp("ablation")
    result = subprocess.run([sys.executable, "-m", "teacherlm_jax.main", "--config", "configs/ablation.py:tiny",
                             "--workdir", str(work)], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    return work


@pytest.mark.slow
def test_every_student_and_seed_ran(ablation_dir):
    seeds = ablation_configs.get_config("tiny").seeds
    assert len(seeds) == 2
    for student in STUDENTS:
        for seed in seeds:
            for step in (f"students/{student}/seed{seed}", f"eval/{student}/seed{seed}"):
                record = json.loads((ablation_dir / step / "pipeline_step.json").read_text())
                assert record["state"] == "done", step
    # The seed changes the run: the same student's data order (so its losses) differs between seeds.
    losses = [[json.loads(line)["loss"] for line in (ablation_dir / f"students/cot/seed{s}/metrics.jsonl")
               .read_text().splitlines() if "loss" in json.loads(line)] for s in seeds]
    assert losses[0] != losses[1]


@pytest.mark.slow
def test_sampled_students_read_their_own_samples(ablation_dir):
    def samples(name: str) -> list:
        parts = sorted((ablation_dir / f"augment/cot-{name}/augmented/students").glob("part-*.jsonl"))
        return [json.loads(line)["cot"] for part in parts for line in part.read_text().splitlines()]

    n1, n4 = samples("finetune_cot_n1"), samples("finetune_cot_n4")
    assert n1 and len(n1) == len(n4) and all(isinstance(t, list) and len(t) == 4 for t in n4)
    assert all(isinstance(t, str) for t in n1)  # one sample: a string
    # The same sampling seeds: n4's first sample is n1's sample, so the count is the only difference.
    assert [t[0] for t in n4] == n1


@pytest.mark.slow
def test_report_structure_and_intervals(ablation_dir):
    report = json.loads((ablation_dir / "report.json").read_text())
    ablation = report["ablation"]
    assert set(ablation) == set(STUDENTS)
    for name, s in ablation.items():
        assert set(s) == {"accuracy_mean", "accuracy_std", "seeds", "vs_answers_only"}
        accuracies = list(s["seeds"].values())
        assert sorted(s["seeds"]) == ["1", "2"] and all(0.0 <= a <= 1.0 for a in accuracies)
        assert s["accuracy_mean"] == pytest.approx(statistics.mean(accuracies))
        assert s["accuracy_std"] == pytest.approx(statistics.stdev(accuracies))
        versus = s["vs_answers_only"]
        if name == "answers_only":
            assert versus is None
            continue
        low, high = versus["ci95"]
        assert isinstance(versus["mean"], float) and low <= versus["mean"] <= high
        assert versus["mean"] == pytest.approx(s["accuracy_mean"] - ablation["answers_only"]["accuracy_mean"])
    assert set(report["ablation_per_family"]) == set(STUDENTS)
    assert all(set(f) == {"pet_color", "town_weather"} for f in report["ablation_per_family"].values())
    assert (ablation_dir / "ablation.png").stat().st_size > 0
    text = (ablation_dir / "report.md").read_text()
    assert "## Ablation" in text and "Accuracy per family" in text and "95% interval" in text


def test_bootstrap_identical_students_interval_contains_zero():
    correct = np.random.default_rng(0).random((3, 200)) < 0.5
    mean, (low, high) = bootstrap_difference(correct, correct)
    assert mean == 0.0 and low <= 0.0 <= high


def test_bootstrap_right_where_the_other_is_wrong():
    right = np.ones((3, 100))
    mean, (low, high) = bootstrap_difference(right, 1 - right)
    assert mean == 1.0 and low == pytest.approx(1.0) and high == pytest.approx(1.0)


def test_bootstrap_is_deterministic_and_wider_with_seed_noise():
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 150)) < 0.6, rng.random((3, 150)) < 0.4
    assert bootstrap_difference(a, b) == bootstrap_difference(a, b)
    _, (low, high) = bootstrap_difference(a, b)
    noisy = a.copy()
    noisy[0] = False  # one seed failed everywhere: the seeds disagree, the interval widens
    _, (noisy_low, noisy_high) = bootstrap_difference(noisy, b)
    assert noisy_high - noisy_low > high - low
    with pytest.raises(ValueError, match="same questions"):
        bootstrap_difference(a, b[:, :10])


def test_student_runs_parse_seed_names():
    assert student_runs(["teacher", "cot/seed1", "cot/seed3", "finetune_cot_n4/seed2"]) == {
        "cot": {1: "cot/seed1", 3: "cot/seed3"}, "finetune_cot_n4": {2: "finetune_cot_n4/seed2"}}


def test_bad_config_names_the_key():
    config = ablation_configs.get_config("tiny")
    config.seeds = (1, 1)
    with pytest.raises(ConfigError, match=r"config.seeds=\(1, 1\)"):
        build_plan(config)
    config = ablation_configs.get_config("tiny")
    config.students.finetune_cot_n4.sampling.num_sample = 4
    with pytest.raises(ConfigError, match=r"config.students.finetune_cot_n4.sampling: unknown keys \['num_sample'\]"):
        build_plan(config)
    config = ablation_configs.get_config("tiny")
    config.students.answers_only.sampling = {"num_samples": 2}
    with pytest.raises(ConfigError, match="config.students.answers_only.sampling: its data.format='answer'"):
        build_plan(config)


def test_variants():
    answer_first = ablation_configs.get_config("answer_first")
    assert answer_first.students.cot.train.data.style == "teacherlm" and answer_first.students.cot.mode == "loglik"
    full = ablation_configs.get_config()
    assert full.seeds == (1, 2, 3) and set(full.students) == set(STUDENTS)
    shapes = {(s.train.num_train_steps, s.train.batch_size, s.train.data.seq_len) for s in full.students.values()}
    assert len(shapes) == 1  # equal compute
    with pytest.raises(ValueError, match="configs/ablation.py"):
        ablation_configs.get_config("huge")
