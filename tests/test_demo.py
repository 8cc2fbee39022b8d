"""The demo end to end (configs/demo.py:tiny: the demo's models at half the steps, its two decisive students): every
step runs, the report says what it should, the student trained on the teacher's rationales beats the
one trained on answers alone (TeacherLM's claim, in direction), and a rerun retrains nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from teacherlm_jax.demo.suite import student_families, write_suite
from teacherlm_jax.demo.tokenizer import train_tokenizer
from teacherlm_jax.pipeline.plan import build_plan

ROOT = Path(__file__).resolve().parents[1]


def _run_demo(workdir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "teacherlm_jax.main", "--config", "configs/demo.py:tiny",
                           "--workdir", str(workdir)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("demo")
    result = _run_demo(workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


@pytest.mark.slow
def test_report_and_direction_of_the_effect(demo_dir):
    report = json.loads((demo_dir / "report.json").read_text())
    students = report["students"]
    assert set(students) == {"answers_only", "finetune_cot"}
    assert all(0.0 <= a <= 1.0 for a in students.values())
    assert 0.0 <= report["teacher"] <= 1.0
    best = report["best_augmented"]
    assert best != "answers_only" and students[best] == max(a for n, a in students.items() if n != "answers_only")
    assert report["gain"] == pytest.approx(students[best] - students["answers_only"])
    assert set(report["per_subject"]) == {"teacher", *students}
    assert report["tasks"] == ["test"] and report["test_questions"]["test"] > 0
    # The students learned from the teacher's generations, which were written and are measured.
    assert report["augmentation"]["cot"]["records"] > 0
    for name in ("report.md", "loss_curves.png", "accuracy.png"):
        assert (demo_dir / name).stat().st_size > 0
    text = (demo_dir / "report.md").read_text()
    assert "answers_only" in text and "Sample augmentations" in text


@pytest.mark.slow
def test_augmented_student_beats_answers_only(demo_dir):
    # The paper's claim, in direction: the best student on the teacher's texts beats answers alone.
    students = json.loads((demo_dir / "report.json").read_text())["students"]
    assert max(a for n, a in students.items() if n != "answers_only") > students["answers_only"], students


@pytest.mark.slow
def test_rerun_skips_finished_steps(demo_dir):
    from configs import demo

    done = sorted(demo_dir.rglob("pipeline_step.json"))
    # Every step of the plan finished once (suite, tokenizer, teacher stages, augmentation, students, evaluations).
    assert sorted(str(p.parent.relative_to(demo_dir)) for p in done) == \
        sorted(step.name for step in build_plan(demo.get_config("tiny")))
    before = {p: p.stat().st_mtime_ns for p in done}
    report_before = json.loads((demo_dir / "report.json").read_text())
    result = _run_demo(demo_dir)
    assert result.returncode == 0, result.stderr[-4000:]
    assert {p: p.stat().st_mtime_ns for p in done} == before
    report_after = json.loads((demo_dir / "report.json").read_text())
    assert report_after["students"] == report_before["students"]
    assert set(report_after["timings"]) == set(report_before["timings"])  # the same steps, none run again (above)


def test_student_families_and_suite_files(tmp_path):
    from configs import demo

    suite = demo.get_config("tiny").suite
    assert student_families(suite) == tuple(suite.families)
    suite.heldout_families = ("pet_food",)
    assert student_families(suite) == ("pet_food",)
    suite.n_teacher_per_family, suite.n_train_per_family, suite.n_test_per_family = 3, 2, 2
    paths = write_suite(suite, tmp_path)
    students = [json.loads(line) for line in paths["students"].read_text().splitlines()]
    assert {r["subject"] for r in students} == {"pet_food"} and len(students) == 2
    teacher = [json.loads(line) for line in paths["teacher_train"].read_text().splitlines()]
    assert "pet_food" not in {r["subject"] for r in teacher} and len(teacher) == 3 * (len(suite.families) - 1)
    suite.student_families = ("nope",)
    with pytest.raises(ValueError, match="student_families"):
        student_families(suite)


def test_tokenizer_round_trips_and_loads_with_auto_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    texts = ["Ann has 14 pens. She gets 5 and then loses 3.", "Q: Is Cal a zib? (A) yes (B) no"] * 20
    out = train_tokenizer(texts, tmp_path / "tok", vocab_size=400)
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok(texts[0])["input_ids"]
    assert tok.decode(ids) == texts[0]
    assert len(ids) < len(texts[0]) / 3  # words, not bytes
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    assert tok.decode(tok("unseen wörds ✓")["input_ids"]) == "unseen wörds ✓"  # byte fallback, no unknowns
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(texts, tmp_path / "small", vocab_size=100)
