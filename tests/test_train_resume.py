"""Preemption safety end to end: a run killed with SIGKILL mid-training, restarted, stopped by SIGTERM,
and restarted again logs exactly the loss curve of an uninterrupted run (each step once); the same on a
gs:// workdir (a local GCS emulator), where every output goes to the bucket."""
from __future__ import annotations

import pytest
import json
import re
import signal
import subprocess
from pathlib import Path

from teacherlm_jax.paths import is_url, workdir_path
from train_subprocess import REPO, jax_env, main_command, run_checked

pytestmark = pytest.mark.slow  # every test here starts job processes

STEPS = 60
OVERRIDES = [f"--config.num_train_steps={STEPS}", "--config.log_every=1", "--config.checkpoint_every=5",
             "--config.keep_checkpoints=2", "--config.eval_every=0", "--config.grad_accum_steps=2",
             "--config.mesh.fsdp=2", "--config.export_hf=False", "--config.plot=False"]


def _command(workdir: Path) -> list[str]:
    return main_command("configs/train.py:tiny", workdir, *OVERRIDES)


def _records(workdir: Path | str) -> list[dict]:
    return [json.loads(line) for line in (workdir_path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _finished_steps(workdir: Path | str) -> list[int]:
    """Steps Orbax finished: renamed into place locally, marked by commit_success.txt on an object store."""
    ckpts = workdir_path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit() and (
        not is_url(p) or (p / "commit_success.txt").exists())) if ckpts.exists() else []


def _interrupt(workdir: Path | str, sig: int, env: dict[str, str], after_step: int,
               command: list[str] | None = None) -> tuple[int, int]:
    """Starts the run (`command`, default the test's) and sends `sig` once it logged `after_step` and has a
    finished checkpoint; returns (exit code, last step logged)."""
    proc = subprocess.Popen(command or _command(workdir), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    last, sent = 0, False
    for line in proc.stderr:  # read to the end: a closed pipe would break the run's last log lines
        progress = re.search(r"\] step (\d+)/\d+ ", line)  # the progress log line, after logging's prefix
        if progress:
            last = int(progress.group(1))
            if not sent and last >= after_step and _finished_steps(workdir):
                proc.send_signal(sig)
                sent = True
    return proc.wait(timeout=120), last


def test_killed_and_preempted_run_reproduces_uninterrupted_losses(tmp_path):
    env = jax_env(devices=2)
    run_checked(_command(tmp_path / "straight"), env)
    expected = _records(tmp_path / "straight")
    assert [r["step"] for r in expected] == list(range(1, STEPS + 1))

    work = tmp_path / "interrupted"
    code, killed_at = _interrupt(work, signal.SIGKILL, env, after_step=6)
    assert code == -signal.SIGKILL and killed_at < STEPS, (code, killed_at)
    resumed_from = _finished_steps(work)[-1]
    assert 0 < resumed_from < STEPS

    code, stopped_at = _interrupt(work, signal.SIGTERM, env, after_step=resumed_from + 3)
    assert code == 143, code  # the run saved a checkpoint on SIGTERM, then stopped
    assert _finished_steps(work)[-1] > resumed_from
    assert [r["step"] for r in _records(work)] == list(range(1, _finished_steps(work)[-1] + 1))

    run_checked(_command(work), env)
    got = _records(work)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in got] == [r["loss"] for r in expected]
    assert [r["grad_norm"] for r in got] == [r["grad_norm"] for r in expected]
    assert expected[-1]["loss"] < expected[0]["loss"] - 0.5


def test_killed_run_on_gcs_resumes_exactly(tmp_path, gcs_bucket):
    """--workdir gs://...: checkpoints (Orbax and tensorstore), metrics.jsonl, TensorBoard events, the loss
    curve and the Hugging Face export all go to the bucket; a run SIGKILLed mid-training and rerun logs the
    losses of an uninterrupted local run and exports the same weights."""
    steps = 12
    overrides = [f"--config.num_train_steps={steps}", "--config.log_every=1", "--config.checkpoint_every=3",
                 "--config.keep_checkpoints=2", "--config.eval_every=6", "--config.eval_steps=1"]
    env = jax_env(devices=1)
    local, cloud = tmp_path / "straight", f"{gcs_bucket}/runs/{tmp_path.name}"
    run_checked(main_command("configs/train.py:tiny", local, *overrides), env)
    command = main_command("configs/train.py:tiny", cloud, *overrides)
    code, killed_at = _interrupt(cloud, signal.SIGKILL, env, after_step=4, command=command)
    assert code == -signal.SIGKILL and killed_at < steps and 0 < _finished_steps(cloud)[-1] < steps, (code, killed_at)
    run_checked(command, env)

    expected, got = _records(local), _records(cloud)
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    for key in ("loss", "grad_norm", "eval_loss"):
        assert [r.get(key) for r in got] == [r.get(key) for r in expected], key
    bucket = workdir_path(cloud)
    weights = "hf_final/model.safetensors"
    assert (bucket / weights).read_bytes() == (local / weights).read_bytes()
    assert (bucket / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name.startswith("events.out.tfevents") for p in (bucket / "tensorboard").iterdir()] == [True, True]
    assert _finished_steps(cloud) == [9, 12] and (bucket / "model_config.json").exists()
    assert not (REPO / "gs:").exists()  # what pathlib made of gs://


def test_resuming_with_another_architecture_names_the_differing_fields(tmp_path):
    env = jax_env(devices=1)
    short = ["--config.num_train_steps=2", "--config.optimizer.warmup_steps=0", "--config.eval_every=0",
             "--config.export_hf=False", "--config.plot=False"]
    run_checked(main_command("configs/train.py:tiny", tmp_path, *short), env)
    proc = subprocess.run(main_command("configs/train.py:tiny", tmp_path, *short, "--config.num_train_steps=4",
                                       "--config.model.hidden_size=64"),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "config.model differs from the model of the run in" in proc.stderr, proc.stderr[-3000:]
    assert "hidden_size: workdir 32, config 64" in proc.stderr
    assert "orbax" not in proc.stderr.lower()  # stopped before any restore
    assert sorted(p.name for p in tmp_path.glob("config*.json")) == ["config.json"]  # the refused config not written
