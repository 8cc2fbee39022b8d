"""Workdirs may be cloud URLs: gs:// stays a URL (never a local folder named `gs:`), writes are whole, and a
cloud workdir's lock keeps a second run on this machine out and reports a holder from another host. The
gs:// cases run against a local GCS emulator (`gcs_bucket` in conftest.py)."""
from __future__ import annotations

import json
import logging
import os
import re
import uuid

import pytest

from teacherlm_jax.paths import (append_text, local_copy, local_dir, read_bytes, read_text, reading, workdir_path,
                                 write_atomic, write_figure)
from teacherlm_jax.workdir_lock import WorkdirLocked, workdir_lock


@pytest.fixture
def gcs_dir(gcs_bucket):
    return workdir_path(f"{gcs_bucket}/{uuid.uuid4().hex[:8]}")


def test_urls_stay_urls_and_local_paths_become_absolute(tmp_path, monkeypatch):
    assert str(workdir_path("gs://bucket/run")) == "gs://bucket/run"  # pathlib: "gs:/bucket/run"
    assert str(workdir_path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
    monkeypatch.chdir(tmp_path)
    assert str(workdir_path("runs/a")) == str(tmp_path / "runs" / "a")
    with pytest.raises(ValueError, match=re.escape("gcs://bucket/run: unsupported URL scheme gcs://; workdirs")):
        workdir_path("gcs://bucket/run")
    assert not (tmp_path / "gcs:").exists()


@pytest.mark.slow
def test_writes_on_gcs(gcs_dir, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_atomic(gcs_dir / "a.json", '{"x": 1}\n')
    append_text(gcs_dir / "log.jsonl", "1\n")
    append_text(gcs_dir / "log.jsonl", "2\n")
    fig, _ = plt.subplots()
    write_figure(fig, gcs_dir / "plot.png")
    plt.close(fig)
    with local_dir(gcs_dir / "export") as local:
        (local / "sub").mkdir()
        (local / "sub" / "w.bin").write_bytes(b"\0\1\2")
    assert (gcs_dir / "a.json").read_text() == '{"x": 1}\n'
    assert (gcs_dir / "log.jsonl").read_text() == "1\n2\n"
    assert (gcs_dir / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (gcs_dir / "export" / "sub" / "w.bin").read_bytes() == b"\0\1\2"
    assert not local.exists()  # the staging folder is gone
    assert sorted(p.name for p in gcs_dir.iterdir()) == ["a.json", "export", "log.jsonl", "plot.png"]


@pytest.mark.slow
def test_local_copy_of_a_bucket_folder_is_reused_until_it_changes(gcs_dir, tmp_path):
    write_atomic(gcs_dir / "ckpt" / "config.json", "{}")
    write_atomic(gcs_dir / "ckpt" / "sub" / "w.bin", b"\0\1")
    copy = local_copy(f"{gcs_dir}/ckpt", cache=tmp_path)
    assert (copy / "sub" / "w.bin").read_bytes() == b"\0\1" and (copy / "config.json").read_text() == "{}"
    (copy / "marker").write_text("kept while the bucket folder is unchanged")
    assert local_copy(f"{gcs_dir}/ckpt", cache=tmp_path) == copy and (copy / "marker").exists()
    write_atomic(gcs_dir / "ckpt" / "sub" / "w.bin", b"\0\1\2")  # rewritten in the bucket: fetched again
    again = local_copy(f"{gcs_dir}/ckpt", cache=tmp_path)
    assert (again / "sub" / "w.bin").read_bytes() == b"\0\1\2" and not (again / "marker").exists()
    with pytest.raises(FileNotFoundError, match="no such folder, or no files"):
        local_copy(f"{gcs_dir}/empty", cache=tmp_path)


@pytest.mark.slow
def test_cloud_workdir_lock(gcs_dir, caplog):
    """Per machine: a second holder here is refused naming the first; a record left by another host is
    reported (it may still run there); release empties the record."""
    with workdir_lock(str(gcs_dir), "train-0") as record:
        assert str(record) == f"{gcs_dir}/.lock-train-0"
        assert json.loads(record.read_text())["pid"] == os.getpid()
        with pytest.raises(WorkdirLocked, match=re.escape(f"{record}: {gcs_dir} is in use by another run (host")):
            with workdir_lock(str(gcs_dir), "train-0"):
                pass
    assert record.read_text() == ""
    record.write_text(json.dumps({"host": "tpu-vm-7", "pid": 12, "started": "2026-01-01T00:00:00"}))
    with caplog.at_level(logging.WARNING, logger="teacherlm_jax.workdir_lock"):
        with workdir_lock(str(gcs_dir), "train-0"):
            pass
    assert "(host tpu-vm-7, pid 12, started 2026-01-01T00:00:00; a cloud workdir is locked per machine only" \
        in caplog.text


@pytest.mark.slow
def test_an_unreachable_cloud_workdir_is_refused_saying_how_to_authenticate(tmp_path):
    """The store stopped (nothing listens on its port): gcsfs alone retries for over half a minute; the job is
    refused by the bounded probe (`check_reachable`, whose bound the next test checks without a network), exit
    status 2, naming the URL and how to authenticate. Nothing is written."""
    import socket
    import subprocess

    from train_subprocess import REPO, jax_env, main_command

    with socket.socket() as s:  # a port nothing listens on: the emulator stopped
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = jax_env(STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{port}", GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
    proc = subprocess.run(main_command("configs/train.py:tiny", "gs://teacherlm-test/run"), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # a hang guard, not a speed check
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: gs://teacherlm-test/run: cannot reach or authenticate to the store" in proc.stderr
    assert "gcloud auth application-default login" in proc.stderr and "GOOGLE_APPLICATION_CREDENTIALS" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_store_that_answers_with_an_error_or_not_at_all_is_refused(tmp_path):
    """The probe's two ways to fail, without a network: the client raises (credentials refused), or it hangs."""
    import threading

    from teacherlm_jax.paths import StorageUnreachable, check_reachable

    class Store:
        def __init__(self, exists):
            self.exists = exists

        def __fspath__(self):
            return "gs://bucket/run"

        def __str__(self):
            return "gs://bucket/run"

    def refused():
        raise PermissionError("401 Anonymous caller does not have storage.objects.list access")

    with pytest.raises(StorageUnreachable, match=r"gs://bucket/run: .*\(PermissionError: 401 Anonymous caller.*"
                                                 r"gcloud auth application-default login"):
        check_reachable(Store(refused), timeout=5)
    never = threading.Event()
    with pytest.raises(StorageUnreachable, match=r"no answer within 0.5 s"):
        check_reachable(Store(never.wait), timeout=0.5)
    never.set()
    check_reachable(Store(lambda: False), timeout=5)  # an answer, even "absent", is a reachable store


def test_a_flaky_store_is_retried_with_backoff(gcs_dir, tmp_path, flaky_store, caplog):
    failures, waits = flaky_store
    failures["upload"] = 3
    with caplog.at_level(logging.WARNING):
        write_atomic(gcs_dir / "a.json", '{"x": 1}\n')
        append_text(gcs_dir / "a.json", "more\n")
    assert (gcs_dir / "a.json").read_text() == '{"x": 1}\nmore\n'
    assert waits == [1.0, 2.0, 4.0] and f"{gcs_dir}/a.json: write failed (HttpError: Service Unavailable" in caplog.text
    with local_dir(gcs_dir / "export") as local:
        (local / "w.bin").write_bytes(b"\0\1")
        failures["upload"] = 1
    failures["read"] = 2
    assert (local_copy(f"{gcs_dir}/export", cache=tmp_path) / "w.bin").read_bytes() == b"\0\1"
    assert waits == [1.0, 2.0, 4.0, 1.0, 1.0, 2.0] and failures["upload"] == failures["read"] == 0


def test_a_store_that_keeps_failing_is_one_error_naming_the_object(gcs_dir, flaky_store):
    from teacherlm_jax import paths
    from teacherlm_jax.errors import StorageError

    failures, waits = flaky_store
    failures["upload"] = 10 ** 6
    with pytest.raises(StorageError) as failed:
        write_atomic(gcs_dir / "report.json", "{}")
    assert str(failed.value).startswith(f"{gcs_dir}/report.json: write failed ")
    assert "HttpError: Service Unavailable" in str(failed.value) and "\n" not in str(failed.value)
    assert waits[:4] == [1.0, 2.0, 4.0, 8.0] and max(waits) == paths.RETRY_MAX_S
    assert sum(waits) <= paths.RETRY_TOTAL_S  # bounded: it gave up
    assert not (gcs_dir / "report.json").exists()
    failures["upload"] = 0
    write_atomic(gcs_dir / "report.json", "{}")  # the store is back: the rerun writes it
    assert (gcs_dir / "report.json").read_text() == "{}"


def test_reads_of_a_flaky_store_are_retried_and_one_that_keeps_failing_named(gcs_dir, tmp_path, flaky_store):
    from teacherlm_jax.errors import StorageError

    failures, waits = flaky_store
    write_atomic(gcs_dir / "summary.json", '{"records": 2}\n')
    failures["read"] = 2
    assert read_text(gcs_dir / "summary.json") == '{"records": 2}\n'
    assert waits == [1.0, 2.0] and failures["read"] == 0
    failures["read"] = 1
    assert read_bytes(gcs_dir / "summary.json") == b'{"records": 2}\n'
    failures["read"] = 1
    with reading(gcs_dir / "summary.json") as f:
        assert f.read() == b'{"records": 2}\n'
    assert waits == [1.0, 2.0, 1.0, 1.0]
    failures["read"] = 10 ** 6
    with pytest.raises(StorageError) as failed:
        read_text(gcs_dir / "summary.json")
    assert str(failed.value).startswith(f"{gcs_dir}/summary.json: read failed ") and "\n" not in str(failed.value)
    assert "ConnectionResetError" in str(failed.value)
    failures["read"], waited = 0, len(waits)
    with pytest.raises(FileNotFoundError):  # not a passing error: no retry
        read_text(gcs_dir / "absent.json")
    local = tmp_path / "local.json"  # a local file is read as it is
    local.write_bytes(b"\xff")
    with pytest.raises(UnicodeDecodeError):
        read_text(local)
    assert read_bytes(local) == b"\xff" and len(waits) == waited
