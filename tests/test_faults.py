"""Faults a long run meets, injected: a full disk (Python's writes under the workdir fail with ENOSPC once a
byte budget is spent: `full_disk.py`), damaged checkpoints and augment parts, and a cloud store whose requests
fail. Each gives one short error naming the cause and path, or a warning and a recovery; the rerun after the
fault is gone continues from what was complete."""
from __future__ import annotations

import json
import subprocess
import sys

from train_subprocess import REPO, jax_env, main_command

TRAIN = ["--config.num_train_steps=6", "--config.checkpoint_every=2", "--config.keep_checkpoints=3",
         "--config.eval_every=0", "--config.log_every=1", "--config.plot=False"]


def _steps(workdir) -> list[int]:
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_full_disk_in_training_is_one_line_and_the_rerun_finishes(tmp_path):
    work = tmp_path / "run"
    full = [sys.executable, "tests/full_disk.py", str(tmp_path), "6000",
            *main_command("configs/train.py:tiny", work, *TRAIN)[1:]]
    proc = subprocess.run(full, cwd=REPO, env=jax_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr, proc.stderr[-3000:]
    [error] = _error_lines(proc.stderr)
    assert "disk full (no space left on device)" in error and str(work) in error, error
    assert not list(work.rglob("*.tmp[0-9]*"))  # no half-written file of ours

    proc = subprocess.run(main_command("configs/train.py:tiny", work, *TRAIN), cwd=REPO, env=jax_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _steps(work) == [1, 2, 3, 4, 5, 6]
