"""The pipeline under `jax.distributed` with two processes on localhost (CPU, gloo, one device each): every step
runs in both, its records, reports and checkpoints are written once (process 0 keeps the records, behind
barriers), a rerun of both reuses every step, and a step killed in one process resumes."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from train_subprocess import launch_processes

pytestmark = pytest.mark.slow  # every test here starts job processes

# A four-step recipe small enough for two processes on two cores: a fresh tiny teacher specialized at once,
# its augmentation, one student and its evaluation (Fine-tune-CoT's generate mode: decode slots sharded across
# both processes).
CONFIG = '''
from configs import pipeline


def get_config():
    config = pipeline.get_config("tiny")
    config.compilation_cache = False
    config.teacher.stages, config.teacher.evaluate = ("stage3",), ""
    config.teacher.stage3.model.init_from = None
    del config.students["answers_only"]
    for train in (config.teacher.stage3, config.students.finetune_cot.train):
        train.num_train_steps, train.checkpoint_every, train.log_every = 2, 2, 1
        train.data.seq_len = 128
    config.augment.update(max_records=4, chunk_size=2, batch_size=2)
    config.augment.sampling.max_new_tokens = 8
    config.eval.update(max_examples=4, batch_size=4)
    return config
'''
STEPS = ["teacher/stage3_cot", "augment/cot", "students/finetune_cot", "eval/finetune_cot"]


def _run_both(config: Path, work: Path) -> list[tuple[str, str]]:
    procs = launch_processes(str(config), work)
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, f"{out[-2000:]}\n{err[-5000:]}"
    return outputs


def _json(path: Path):
    return json.loads(path.read_text())


def test_two_processes_write_every_record_once_and_a_rerun_reuses_every_step(tmp_path):
    config, work = tmp_path / "two_processes.py", tmp_path / "work"
    config.write_text(CONFIG)
    outputs = _run_both(config, work)
    assert "pipeline done: steps 4 (4 run, 0 reused)" in outputs[0][0] and "pipeline done" not in outputs[1][0]
    plan = _json(work / "pipeline.json")["steps"]
    assert [s["step"] for s in plan] == STEPS and not any(s["reused"] for s in plan)
    records = {step: _json(work / step / "pipeline_step.json") for step in STEPS}
    assert all(r["state"] == "done" for r in records.values())
    # One process keeps the records: timings.json names each step once (its values are not judged here).
    assert sorted(_json(work / "timings.json")) == sorted(STEPS)
    for run in ("teacher/stage3_cot", "students/finetune_cot"):
        rows = [json.loads(line) for line in (work / run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2]  # one row per step
        data = sorted(p.name for p in (work / run / "checkpoints" / "2" / "data").glob("process_*"))
        assert data == ["process_0-of-2.json", "process_1-of-2.json"]
    augmented = work / "augment/cot/augmented/synthetic_student_train"
    ids = [json.loads(line)["id"] for part in sorted(augmented.glob("part-*.jsonl"))
           for line in part.read_text().splitlines()]
    assert len(ids) == 4 == len(set(ids)) and _json(augmented / "summary.json")["records"] == 4
    assert sorted(p.name[0] for p in (augmented / "runs").iterdir()) == ["0", "1"]  # one run per process
    predictions = work / "eval/finetune_cot/eval/synthetic_student_test/predictions.jsonl"
    assert len(predictions.read_text().splitlines()) == 4
    report = _json(work / "report.json")
    assert set(report["students"]) == {"finetune_cot"}

    mtimes = {step: (work / step / "pipeline_step.json").stat().st_mtime_ns for step in STEPS}
    outputs = _run_both(config, work)
    assert "pipeline done: steps 4 (0 run, 4 reused)" in outputs[0][0]
    assert all(s["reused"] for s in _json(work / "pipeline.json")["steps"])
    assert {step: (work / step / "pipeline_step.json").stat().st_mtime_ns for step in STEPS} == mtimes
    assert _json(work / "report.json")["students"] == report["students"]


def test_a_step_killed_in_one_process_resumes(tmp_path):
    """SIGKILL one process inside the student's training (the other is stopped too, as a preempted slice's
    would be), then rerun both: the teacher and the augmentation are reused, the student resumes from its
    checkpoint, and every training step is logged once."""
    config, work = tmp_path / "killed.py", tmp_path / "work"
    head, tail = CONFIG.rsplit("    return config\n", 1)
    config.write_text(head + "    config.students.finetune_cot.train.update(num_train_steps=40, checkpoint_every=5)\n"
                      "    return config\n" + tail)
    procs = launch_processes(str(config), work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    student = work / "students" / "finetune_cot"
    deadline = time.time() + 300
    while not list((student / "checkpoints").glob("[0-9]*")) and procs[1].poll() is None and time.time() < deadline:
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    try:
        procs[0].wait(timeout=20)  # its collectives fail, or it waits on them: stopped either way
    except subprocess.TimeoutExpired:
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
    assert _json(student / "pipeline_step.json")["state"] == "running"
    reused = {step: (work / step / "pipeline_step.json").stat().st_mtime_ns for step in STEPS[:2]}

    outputs = _run_both(config, work)
    assert "pipeline done: steps 4 (2 run, 2 reused)" in outputs[0][0], outputs[0][0][-2000:]
    assert {step: (work / step / "pipeline_step.json").stat().st_mtime_ns for step in STEPS[:2]} == reused
    steps = [json.loads(line)["step"] for line in (student / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, 41))  # resumed: every step logged once
    assert all(_json(work / step / "pipeline_step.json")["state"] == "done" for step in STEPS)
