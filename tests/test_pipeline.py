"""The pipeline job (configs/pipeline.py:tiny): TeacherLM's recipe from Hugging Face-format checkpoints (a tiny
BLOOM teacher and a tiny OPT student base, made here), step reuse by fingerprint, reruns of what an override
changes and of nothing else, SIGKILL and resume, and the checks that stop it before any step runs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from etils import epath

from reference_models import tiny_bloom, tiny_opt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the configs package, as `python -m teacherlm_jax.main` sees it

from configs import pipeline as pipeline_configs  # noqa: E402
from configs.teacher import pipeline as teacher_pipeline_configs  # noqa: E402
from teacherlm_jax.pipeline.job import run  # noqa: E402
from teacherlm_jax.pipeline.plan import build_plan, dependencies  # noqa: E402
from teacherlm_jax.pipeline.state import RECORD  # noqa: E402
from teacherlm_jax.errors import ConfigError  # noqa: E402

SPECIALS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=3)


def _records(work: Path) -> dict[str, tuple[str, int]]:
    """{step: (fingerprint, record mtime)} of every step folder."""
    return {str(p.parent.relative_to(work)): (json.loads(p.read_text())["fingerprint"], p.stat().st_mtime_ns)
            for p in work.rglob(RECORD)}


def _first_loss(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny BLOOM teacher and a tiny OPT student base in Hugging Face format, with the byte tokenizer."""
    from teacherlm_jax.tokenizers import byte_tokenizer

    root = tmp_path_factory.mktemp("hf")
    out = {"teacher": root / "bloom", "student": root / "opt"}
    tiny_bloom(out["teacher"], vocab_size=260, hidden_size=64, n_head=4, **SPECIALS)
    tiny_opt(out["student"], vocab_size=260, hidden_size=48, num_attention_heads=4, max_position_embeddings=512,
             **SPECIALS)
    for path in out.values():
        byte_tokenizer().save_pretrained(str(path))
    return out


def _config(checkpoints: dict[str, Path]):
    config = pipeline_configs.get_config("tiny")
    config.compilation_cache = False  # a process-wide jax setting: not in a test process
    config.teacher.init_from = str(checkpoints["teacher"])
    config.student_base = str(checkpoints["student"])
    config.tokenizer.init_from = str(checkpoints["teacher"])
    for stage in ("stage1", "stage2", "stage3"):
        config.teacher[stage].tokenizer = None
    for student in config.students.values():
        student.train.tokenizer = None
    return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory, checkpoints):
    work = tmp_path_factory.mktemp("pipeline")
    config = _config(checkpoints)
    report = run(config, str(work))
    return config, work, report


@pytest.mark.slow
def test_whole_recipe_from_hugging_face_checkpoints(finished, checkpoints):
    config, work, report = finished
    plan = json.loads((work / "pipeline.json").read_text())["steps"]
    assert [s["step"] for s in plan] == [
        "teacher/stage1", "teacher/stage2", "teacher/stage3_cot", "augment/cot", "students/answers_only",
        "students/finetune_cot", "eval/teacher", "eval/answers_only", "eval/finetune_cot"]
    assert all(json.loads((work / s["step"] / RECORD).read_text())["state"] == "done" for s in plan)
    # Each step's config as its job ran it, references resolved to the folders they name.
    stage2 = json.loads((work / "teacher/stage2/config.json").read_text())
    assert stage2["model"]["init_from"] == str(work / "teacher/stage1")
    # The teacher is the BLOOM checkpoint's architecture, the students the OPT base's.
    teacher_hf = json.loads((checkpoints["teacher"] / "config.json").read_text())
    stage1 = json.loads((work / "teacher/stage1/model_config.json").read_text())
    assert (stage1["model_type"], stage1["hidden_size"]) == ("bloom", teacher_hf["hidden_size"])
    for name in ("answers_only", "finetune_cot"):
        student = json.loads((work / "students" / name / "model_config.json").read_text())
        assert (student["model_type"], student["hidden_size"]) == ("opt", 48)
    # Each stage starts from the previous one's trained weights, not from the checkpoint again.
    assert _first_loss(work / "teacher/stage2") < _first_loss(work / "teacher/stage1")
    # Augmentation by the stage-3 teacher, students on its texts, evaluation of all, the report.
    summary = json.loads((work / "augment/cot/augmented/synthetic_student_train/summary.json").read_text())
    assert summary["records"] == config.augment.max_records
    assert set(report["students"]) == {"answers_only", "finetune_cot"}
    assert report["eval_modes"] == {"teacher": "loglik", "answers_only": "loglik", "finetune_cot": "generate"}
    assert report["tasks"] == ["synthetic_student_test"]
    assert all(0.0 <= a <= 1.0 for a in [report["teacher"], *report["students"].values()])
    assert report["gain"] == pytest.approx(report["students"]["finetune_cot"] - report["students"]["answers_only"])
    assert report["augmentation"]["cot"]["records"] == config.augment.max_records
    assert json.loads((work / "report.json").read_text())["students"] == report["students"]
    for name in ("report.md", "loss_curves.png", "accuracy.png"):
        assert (work / name).stat().st_size > 0
    assert "synthetic_student_test" in (work / "report.md").read_text()


@pytest.mark.slow
def test_rerun_reuses_every_step_and_an_override_reruns_only_what_it_changes(finished, checkpoints, caplog):
    config, work, report = finished
    before = _records(work)
    with caplog.at_level("INFO"):
        again = run(_config(checkpoints), str(work))
    assert _records(work) == before and again["students"] == report["students"]
    assert "to run: none" in caplog.text

    changed = _config(checkpoints)
    changed.students.finetune_cot.train.optimizer.learning_rate = 1e-3
    caplog.clear()
    with caplog.at_level("INFO"):
        run(changed, str(work))
    after = _records(work)
    rerun = sorted(step for step in after if after[step] != before[step])
    assert rerun == ["eval/finetune_cot", "students/finetune_cot"]
    assert "optimizer.learning_rate: 0.003 -> 0.001" in caplog.text
    assert "step students/finetune_cot changed" in caplog.text  # why its evaluation reruns


@pytest.mark.slow
def test_killed_and_rerun_resumes_without_losing_or_repeating_steps(tmp_path, checkpoints):
    work = tmp_path / "work"
    args = [sys.executable, "-m", "teacherlm_jax.main", "--config", "configs/teacher/pipeline.py:tiny", "--workdir", str(work),
            "--config.compilation_cache=False", f"--config.teacher.init_from={checkpoints['teacher']}",
            f"--config.tokenizer.init_from={checkpoints['teacher']}", "--config.teacher.stage2.num_train_steps=60",
            "--config.teacher.stage2.checkpoint_every=10", "--config.teacher.stages=('stage1','stage2')"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stage2 = work / "teacher" / "stage2"
    deadline = time.time() + 600
    while not list((stage2 / "checkpoints").glob("[0-9]*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((stage2 / RECORD).read_text())["state"] == "running"
    stage1 = (work / "teacher" / "stage1" / RECORD).stat().st_mtime_ns
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pipeline done: steps 2 (1 run, 1 reused)" in done.stdout.splitlines()[-1]
    assert (work / "teacher" / "stage1" / RECORD).stat().st_mtime_ns == stage1  # not rerun
    steps = [json.loads(line)["step"] for line in (stage2 / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == sorted(set(steps)) and steps[-1] == 60  # resumed: every logged step once
    assert [s["step"] for s in json.loads((work / "pipeline.json").read_text())["steps"]] == [
        "teacher/stage1", "teacher/stage2"]


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_preflight_stops_before_any_step_naming_step_and_key(tmp_path, checkpoints):
    cot_only = _write_jsonl(tmp_path / "cot_only.jsonl", [
        {"id": str(i), "question": f"Is {i} even?", "choices": ["yes", "no"], "answer": i % 2,
         "cot": f"{i} divided by 2 leaves {i % 2}."} for i in range(6)])
    config = _config(checkpoints)
    config.teacher.kinds = ("cot", "fundamentals")
    for stage in ("stage2", "stage3"):
        config.teacher[stage].data.datasets = (cot_only,)
    config.teacher.stage1.data.seq_len = 4096  # the BLOOM checkpoint has 2048 positions
    config.eval.tasks = ("synthetic:student_test", str(tmp_path / "missing.jsonl"))
    work = tmp_path / "work"
    with pytest.raises(ConfigError) as error:
        run(config, str(work))
    message = str(error.value)
    assert "step teacher/stage1, config.teacher.stage1.data.seq_len=4096" in message
    assert "step teacher/stage2, config.teacher.stage2.data.datasets" in message and "fundamentals" in message
    assert "step teacher/stage3_fundamentals, config.teacher.stage3.data.datasets" in message
    assert "step eval/teacher, config.eval.tasks" in message and "missing.jsonl" in message
    assert not (work / "teacher").exists()  # nothing ran


def test_plan_chains_stages_and_handles_subsets(tmp_path):
    config = pipeline_configs.get_config("tiny")
    steps = {s.name: s for s in build_plan(config)}
    assert steps["teacher/stage1"].config.model.get("init_from") is None
    assert steps["teacher/stage2"].config.model.init_from == "@teacher/stage1"
    assert steps["teacher/stage3_cot"].config.model.init_from == "@teacher/stage2"
    assert steps["teacher/stage2"].config.data.kind_ratios.to_dict() == {"cot": 1.0}
    assert steps["augment/cot"].config.teacher.init_from == "@teacher/stage3_cot"
    assert steps["students/finetune_cot"].config.data.datasets == (
        "@augment/cot/augmented/synthetic_student_train",)
    assert steps["students/answers_only"].config.data.datasets == ("synthetic:student_train",)

    # Stage 3 only, from a model you have; no stage 3: the last stage's teacher writes every kind.
    config.teacher.stages, config.teacher.init_from, config.teacher.evaluate = ("stage3",), "/models/t", ""
    steps = {s.name: s for s in build_plan(config)}
    assert steps["teacher/stage3_cot"].config.model.init_from == "/models/t" and "eval/teacher" not in steps
    config.teacher.stages, config.teacher.evaluate = ("stage1", "stage2"), "stage2"
    plan = build_plan(config)
    names = [s.name for s in plan]
    assert "augment/all" in names and not any(n.startswith("teacher/stage3") for n in names)
    augment = next(s for s in plan if s.name == "augment/all")
    assert augment.config.teacher.init_from == "@teacher/stage2" and tuple(augment.config.kinds) == ("cot",)
    assert dependencies(next(s for s in plan if s.name == "eval/teacher"), plan) == ["teacher/stage2"]

    for key, value, match in (("teacher.stages", ("stage2", "stage1"), "in order"),
                              ("teacher.kinds", ("cot", "tricks"), "distinct kinds"),
                              ("teacher.evaluate", "stage3", "teacher.evaluate")):
        bad = pipeline_configs.get_config("tiny")
        section, name = key.split(".")
        bad[section][name] = value
        with pytest.raises(ConfigError, match=match):
            build_plan(bad)
    bad = pipeline_configs.get_config("tiny")
    bad.students.finetune_cot.train.data.format = "mistakes"
    with pytest.raises(ConfigError, match="students.finetune_cot.train.data.format='mistakes'"):
        build_plan(bad)
    bad = pipeline_configs.get_config("tiny")
    bad.eval.tasks = ("@students/nobody/x.jsonl",)
    with pytest.raises(ConfigError, match="names no step"):
        build_plan(bad)


def test_teacher_stages_only_config():
    steps = build_plan(teacher_pipeline_configs.get_config("tiny"))
    assert [s.name for s in steps] == ["teacher/stage1", "teacher/stage2", "teacher/stage3_cot"]


def test_stage_and_student_config_variants():
    from configs.student import finetune
    from configs.teacher import stage3_specialization

    assert stage3_specialization.get_config("mistakes,tiny").data.format == "mistakes"
    with pytest.raises(ValueError, match="exactly one of"):
        stage3_specialization.get_config("tiny")
    with pytest.raises(ValueError, match="unknown variant words"):
        teacher_pipeline_configs.get_config("huge")
    student = finetune.get_config("cot,ftcot")
    assert (student.data.style, student.data.loss_on, student.data.format) == ("finetune_cot", "target", "cot")
    assert finetune.get_config("text").data.format == "answer"
    assert finetune.get_config("mixed,opt").model.family == "opt"


def test_fingerprint_follows_config_upstream_and_file_contents(tmp_path):
    from teacherlm_jax.pipeline.state import FileHashes, external_files, fingerprint, fingerprint_config, why_changed

    data = tmp_path / "questions.jsonl"
    data.write_text('{"id": "1"}\n')
    config = pipeline_configs.get_config("tiny")
    config.augment.datasets = (str(data),)
    augment = next(s for s in build_plan(config) if s.name == "augment/cot")
    hashes = FileHashes(epath.Path(tmp_path))
    files = external_files(augment, hashes)
    first = fingerprint(augment, {"teacher/stage3_cot": "a"}, files)
    assert fingerprint(augment, {"teacher/stage3_cot": "b"}, files) != first  # the teacher was retrained
    os.utime(data, ns=(1, 1))  # the same contents (copied to another machine): the same fingerprint
    assert fingerprint(augment, {"teacher/stage3_cot": "a"}, external_files(augment, hashes)) == first
    hashes.save()
    record = {"config": fingerprint_config(augment), "upstream": {"teacher/stage3_cot": "a"}, "files": files}
    data.write_text('{"id": "1"}\n{"id": "2"}\n')  # the dataset was edited
    edited = external_files(augment, FileHashes(epath.Path(tmp_path)))
    assert fingerprint(augment, {"teacher/stage3_cot": "a"}, edited) != first
    assert why_changed(record, augment, {"teacher/stage3_cot": "b"}, edited) == (
        f"step teacher/stage3_cot changed; {data} changed")
    augment.config.mesh.data = 4  # how it runs, not what it computes
    assert fingerprint(augment, {"teacher/stage3_cot": "a"}, edited) == fingerprint(
        next(s for s in build_plan(config) if s.name == "augment/cot"), {"teacher/stage3_cot": "a"}, edited)


@pytest.mark.slow
def test_pipeline_on_a_cloud_workdir(gcs_bucket, checkpoints):
    """Every step's outputs, the records and the report in a bucket (a local GCS emulator); steps read the
    earlier steps' outputs from there."""
    config = _config(checkpoints)
    config.teacher.stages, config.teacher.evaluate = ("stage3",), ""
    del config.students["answers_only"]
    work = f"{gcs_bucket}/pipeline"
    report = run(config, work)
    root = epath.Path(work)
    assert [s["step"] for s in json.loads((root / "pipeline.json").read_text())["steps"]] == [
        "teacher/stage3_cot", "augment/cot", "students/finetune_cot", "eval/finetune_cot"]
    for name in ("report.md", "report.json", "accuracy.png", "loss_curves.png",
                 "teacher/stage3_cot/hf_final/config.json", "augment/cot/augmented/synthetic_student_train/summary.json",
                 "students/finetune_cot/checkpoints", "eval/finetune_cot/eval/metrics.json"):
        assert (root / name).exists(), name
    assert json.loads((root / "report.json").read_text())["students"] == report["students"]
    assert run(config, work)["students"] == report["students"]
    assert all(s["reused"] for s in json.loads((root / "pipeline.json").read_text())["steps"])  # read from the bucket


@pytest.mark.slow  # a job end to end
def test_a_full_disk_at_the_report_names_the_path_and_leaves_no_partial_report(finished, monkeypatch):
    import full_disk
    from teacherlm_jax.errors import fault_message
    from teacherlm_jax.pipeline.report import write_report

    config, work, _ = finished
    steps, before = build_plan(config), (work / "report.md").read_bytes()
    full_disk.install(str(work), 0, monkeypatch)
    with pytest.raises(Exception) as failed:
        write_report(config, steps, epath.Path(work), timings={s.name: 0.0 for s in steps})
    monkeypatch.undo()
    message = fault_message(failed.value)
    assert message is not None and message.startswith(str(work)) and "disk full" in message, failed.value
    assert (work / "report.md").read_bytes() == before and not list(work.glob("*.tmp*"))
    report = write_report(config, steps, epath.Path(work), timings={s.name: 0.0 for s in steps})
    assert json.loads((work / "report.json").read_text())["students"] == report["students"]
