"""One run per workdir: a second training or augment process on a held workdir refuses at once, naming
the holder; augment processes of other indices share it; a killed holder's lock is taken over."""
from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from teacherlm_jax.workdir_lock import WorkdirLocked, workdir_lock

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # configs/ is imported from the repository root, as main does
    sys.path.insert(0, str(REPO))
from configs import augment as augment_config  # noqa: E402
from configs import train as train_config  # noqa: E402

pytestmark = pytest.mark.slow  # every test here starts job processes

# Holds `name` on `workdir` with this checkout's lock module, says so, waits.
HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from teacherlm_jax.workdir_lock import workdir_lock
with workdir_lock(sys.argv[2], sys.argv[3]):
    print("held", flush=True)
    time.sleep(120)
"""


def hold(workdir: Path, name: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(REPO), str(workdir), name], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


@pytest.fixture
def holder(request, tmp_path):
    proc = hold(tmp_path, request.param)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny BLOOM teacher in Hugging Face format with the byte tokenizer."""
    from reference_models import tiny_bloom
    from teacherlm_jax.tokenizers import byte_tokenizer

    path = tmp_path_factory.mktemp("teacher")
    tiny_bloom(path, vocab_size=260, hidden_size=64, n_head=4, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    byte_tokenizer().save_pretrained(str(path))
    return path


def augment_config_for(teacher: Path, **overrides) -> ml_collections.ConfigDict:
    config = augment_config.get_config("tiny")
    config.teacher.init_from = str(teacher)
    config.datasets = ("synthetic:student_train",)
    config.kinds = ("cot",)
    config.update(max_records=4, chunk_size=2, **overrides)
    config.sampling.max_new_tokens = 2
    return config


@pytest.mark.parametrize("holder", ["train-0"], indirect=True)
def test_second_training_refuses_naming_the_holder(holder, tmp_path):
    from teacherlm_jax.train.loop import train

    holder_text = f"host {socket.gethostname()}, pid {holder.pid}, started "
    with pytest.raises(WorkdirLocked, match=re.escape(f"{tmp_path}/.lock-train-0: {tmp_path} is in use by "
                                                      f"another run ({holder_text}")):
        train(train_config.get_config("tiny"), tmp_path)  # refused once its checks pass, before it writes


@pytest.mark.parametrize("holder", ["augment-0"], indirect=True)
def test_augment_locks_per_process_index(holder, tmp_path, teacher):
    from teacherlm_jax.augment import run

    with pytest.raises(WorkdirLocked, match=f"pid {holder.pid}"):
        run(augment_config_for(teacher), str(tmp_path))
    run(augment_config_for(teacher, process_index=1, process_count=2), str(tmp_path))  # its own lock
    parts = sorted(p.name for p in (tmp_path / "augmented" / "synthetic_student_train").glob("part-*.jsonl"))
    assert parts == ["part-00001-of-00002.jsonl"]  # chunk 1 is process 1's


def test_killed_holder_is_taken_over_and_release_empties_the_lock(tmp_path, caplog):
    proc = hold(tmp_path, "train-0")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with caplog.at_level(logging.WARNING, logger="teacherlm_jax.workdir_lock"):
        with workdir_lock(tmp_path, "train-0") as path:
            assert f'"pid": {os.getpid()}' in path.read_text()
            with pytest.raises(WorkdirLocked, match=f"pid {os.getpid()}"):  # held: even this process's 2nd try
                with workdir_lock(tmp_path, "train-0"):
                    pass
    assert f"taking over the lock of a run that did not release it (host {socket.gethostname()}, " \
           f"pid {proc.pid}" in caplog.text
    assert path.read_text() == ""
    caplog.clear()
    with workdir_lock(tmp_path, "train-0"):  # released cleanly: nothing to take over
        pass
    assert "taking over" not in caplog.text
