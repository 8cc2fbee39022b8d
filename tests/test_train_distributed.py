"""Two jax processes on localhost (CPU, gloo collectives, 2 fake devices each) train together: each
reads only its rows, the losses equal one process with 4 devices, only process 0 writes metrics,
checkpoints hold every process's data position, and the collective HF export works."""
from __future__ import annotations

import json

import pytest

from train_subprocess import jax_env, launch_processes, main_command, run_checked

pytestmark = pytest.mark.slow  # every test here starts job processes

OVERRIDES = ["--config.num_train_steps=6", "--config.log_every=1", "--config.checkpoint_every=3", "--config.eval_every=0",
             "--config.mesh.data=2", "--config.mesh.fsdp=-1", "--config.plot=False",
             "--config.optimizer.warmup_steps=3"]


def _losses(workdir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]


def test_two_processes_train_and_checkpoint_like_one(tmp_path):
    work = tmp_path / "two"
    procs = launch_processes("configs/train.py:tiny", work, *OVERRIDES, devices=2)
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, f"{out[-2000:]}\n{err[-5000:]}"
    # Only process 0 reports: progress in its log, the summary line last on its stdout.
    assert "] step 6/6 (100%)  loss " in outputs[0][1] and "] step " not in outputs[1][1]
    assert outputs[0][0].strip().splitlines()[-1].startswith("train done: 6 steps, in ") and "done" not in outputs[1][0]

    data_states = sorted(p.name for p in (work / "checkpoints" / "6" / "data").glob("process_*"))
    assert data_states == ["process_0-of-2.json", "process_1-of-2.json"]
    assert (work / "checkpoints" / "3").is_dir()
    assert json.loads((work / "hf_final" / "config.json").read_text())["n_layer"] == 2

    single = tmp_path / "one"
    run_checked(main_command("configs/train.py:tiny", single, *OVERRIDES, "--config.export_hf=False"),
                jax_env(devices=4))
    two, one = _losses(work), _losses(single)
    assert [s for s, _ in two] == list(range(1, 7))
    assert [s for s, _ in two] == [s for s, _ in one]
    for (_, a), (_, b) in zip(two, one):
        assert abs(a - b) <= 1e-5 * abs(b), (two, one)
