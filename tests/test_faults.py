"""Faults a long run meets, injected: a full disk (Python's writes under the workdir fail with ENOSPC once a
byte budget is spent: `full_disk.py`), damaged checkpoints and augment parts, and a cloud store whose requests
fail. Each gives one short error naming the cause and path, or a warning and a recovery; the rerun after the
fault is gone continues from what was complete."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from train_subprocess import REPO, jax_env, launch_processes, main_command, run_checked

TRAIN = ["--config.num_train_steps=6", "--config.checkpoint_every=2", "--config.keep_checkpoints=3",
         "--config.eval_every=0", "--config.log_every=1", "--config.plot=False"]


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _steps(workdir: Path) -> list[int]:
    return [r["step"] for r in _records(workdir)]


def _losses(workdir: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["grad_norm"]) for r in _records(workdir)]


def _train(work: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(main_command("configs/train.py:tiny", work, *TRAIN, *overrides), cwd=REPO, env=jax_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 6-step run with checkpoints at steps 2, 4 and 6 (no export: `init_from` reads its checkpoints)."""
    work = tmp_path_factory.mktemp("finished") / "run"
    run_checked(main_command("configs/train.py:tiny", work, *TRAIN, "--config.export_hf=False"), jax_env())
    assert sorted(int(p.name) for p in (work / "checkpoints").iterdir()) == [2, 4, 6]
    return work


def _damage(step_dir: Path, how: str) -> None:
    if how == "overwritten":  # every file of the step
        for file in (p for p in step_dir.rglob("*") if p.is_file()):
            file.write_bytes(b"\x00garbage")
    else:  # an item's files gone
        shutil.rmtree(step_dir / "opt_state")


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow  # a job end to end
def test_full_disk_in_training_is_one_line_and_the_rerun_finishes(tmp_path):
    work = tmp_path / "run"
    full = [sys.executable, "tests/full_disk.py", str(tmp_path), "6000",
            *main_command("configs/train.py:tiny", work, *TRAIN)[1:]]
    proc = subprocess.run(full, cwd=REPO, env=jax_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr, proc.stderr[-3000:]
    [error] = _error_lines(proc.stderr)
    assert "disk full (no space left on device)" in error and str(work) in error, error
    not_logged = [line for line in proc.stderr.splitlines() if not re.match(r"[IWEF]\d{4} ", line)]
    assert not_logged == [error, "(--verbose or TEACHERLM_VERBOSE=1 shows the traceback)"], proc.stderr[-3000:]
    assert not list(work.rglob("*.tmp[0-9]*"))  # no half-written file of ours

    proc = subprocess.run([*full, "--verbose"], cwd=REPO, env=jax_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "No space left on device" in proc.stderr

    proc = _train(work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _steps(work) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("how", ["overwritten", "missing"])
def test_damaged_latest_checkpoint_resumes_from_the_newest_intact_one(finished_run, tmp_path, how):
    work = tmp_path / "run"
    shutil.copytree(finished_run, work)
    _damage(work / "checkpoints" / "6", how)
    proc = _train(work, "--config.export_hf=False")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"checkpoint {work}/checkpoints/6 cannot be read" in proc.stderr, proc.stderr[-3000:]
    assert f"resumed from {work}/checkpoints step 4" in proc.stderr
    assert (work / "damaged_checkpoints" / "6").is_dir()  # set aside, for a person to look at
    assert sorted(int(p.name) for p in (work / "checkpoints").iterdir()) == [2, 4, 6]
    assert _losses(work) == _losses(finished_run)  # steps 5 and 6 again, the same losses


@pytest.mark.slow
def test_two_processes_resume_from_the_newest_intact_checkpoint(tmp_path):
    """Both processes pass over the damaged step 2 for step 1, process 0 sets it aside while the other waits,
    and the step after it is trained again with the same loss."""
    work = tmp_path / "run"
    overrides = [*TRAIN, "--config.num_train_steps=2", "--config.checkpoint_every=1", "--config.export_hf=False"]

    def train_two() -> list[str]:
        procs = launch_processes("configs/train.py:tiny", work, *overrides)
        outputs = [p.communicate(timeout=300) for p in procs]
        for p, (out, err) in zip(procs, outputs):
            assert p.returncode == 0, f"{out[-2000:]}\n{err[-5000:]}"
        return [err for _, err in outputs]

    train_two()
    finished = _losses(work)
    _damage(work / "checkpoints" / "2", "overwritten")
    logs = train_two()
    assert all(f"checkpoint {work}/checkpoints/2 cannot be read" in log for log in logs), logs[1][-3000:]
    assert all(f"resumed from {work}/checkpoints step 1" in log for log in logs)
    assert (work / "damaged_checkpoints" / "2").is_dir() and _losses(work) == finished


def test_no_intact_checkpoint_is_one_error_naming_each(finished_run, tmp_path):
    work = tmp_path / "run"
    shutil.copytree(finished_run, work)
    for step in (2, 4, 6):
        _damage(work / "checkpoints" / str(step), "overwritten")
    proc = _train(work, "--config.export_hf=False")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [error] = _error_lines(proc.stderr)
    assert f"{work}/checkpoints: no checkpoint can be read" in error
    assert all(f"step {step}: " in error for step in (2, 4, 6)), error


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory) -> Path:
    """A 2-step run with its hf_final export."""
    work = tmp_path_factory.mktemp("exported") / "run"
    run_checked(main_command("configs/train.py:tiny", work, *TRAIN, "--config.num_train_steps=2"), jax_env())
    return work


@pytest.mark.parametrize("damaged", ["model.safetensors", "config.json"])
def test_init_from_a_run_whose_export_is_damaged_uses_its_checkpoints(exported_run, tmp_path, damaged):
    source = tmp_path / "source"
    shutil.copytree(exported_run, source)
    (source / "hf_final" / damaged).write_bytes(b"\x00garbage")
    proc = _train(tmp_path / "next", f"--config.model.init_from={source}", "--config.num_train_steps=1",
                  "--config.export_hf=False")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{source}/hf_final cannot be read (" in proc.stderr, proc.stderr[-3000:]
    assert f"initialised params from {source} step 2" in proc.stderr


def test_init_from_a_run_with_a_damaged_latest_checkpoint_uses_the_one_before(finished_run, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(finished_run, source)
    _damage(source / "checkpoints" / "6", "overwritten")
    proc = _train(tmp_path / "next", f"--config.model.init_from={source}", "--config.num_train_steps=1",
                  "--config.export_hf=False")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"checkpoint {source}/checkpoints/6 cannot be read" in proc.stderr
    assert f"initialised params from {source} step 4" in proc.stderr
    assert (source / "checkpoints" / "6").is_dir()  # another run's folder: read, never changed


@pytest.mark.parametrize("damage", ["truncated", "deleted", "record"])
def test_a_done_pipeline_step_whose_outputs_are_damaged_runs_again(tmp_path, damage, caplog):
    from configs import pipeline as pipeline_configs
    from teacherlm_jax.paths import workdir_path
    from teacherlm_jax.pipeline import state
    from teacherlm_jax.pipeline.job import make_plan

    config, work = pipeline_configs.get_config("tiny"), workdir_path(tmp_path)
    plan = make_plan(config, work)
    step = plan.steps[0]
    out = work / step.name
    (out / "hf_final").mkdir(parents=True)
    (out / "hf_final" / "model.safetensors").write_bytes(b"\0" * 64)
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    state.write_record(out, step, plan.digests[step.name], plan.upstream[step.name], plan.files[step.name], "done",
                       outputs=state.output_sizes(out))
    (out / ".lock-train-0").write_text("")  # a file the record does not list: no harm
    assert make_plan(config, work).actions[step.name] == ("reuse", "done, unchanged")
    weights = out / "hf_final" / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(b"\0" * 10)
        why = "done, but its outputs are damaged: changed size: hf_final/model.safetensors (64 -> 10 bytes)"
    elif damage == "deleted":
        weights.unlink()
        why = "done, but its outputs are damaged: gone: hf_final/model.safetensors"
    else:
        (out / state.RECORD).write_text('{"step": "teacher/st')
        why = f"its {out / state.RECORD} cannot be read (JSONDecodeError: Unterminated string"
    action, reason = make_plan(config, work).actions[step.name]
    assert action == "rerun" and reason.startswith(why), reason
    if damage == "record":  # its folder is emptied, then the step runs from scratch
        with caplog.at_level("INFO"):
            state.prepare(step, out, plan.digests[step.name], plan.upstream[step.name], plan.files[step.name])
        assert not out.exists() and f"step {step.name}: {why}" in caplog.text


def test_an_export_cut_short_by_a_full_disk_does_not_pass_for_complete(tmp_path, monkeypatch):
    """Over an earlier complete export: save_pretrained writes the weights first, then config.json."""
    import errno

    from teacherlm_jax.init_from import complete_export
    from teacherlm_jax.train import loop

    out = tmp_path / "hf_final"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"complete")
    assert complete_export(tmp_path) == str(out)

    def weights_then_full(model, local):
        (local / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(local / "model.safetensors"))

    monkeypatch.setattr(loop, "save_pretrained", weights_then_full)
    with pytest.raises(OSError):
        loop.export_hf(None, out)
    assert complete_export(tmp_path) is None  # init_from falls back to the run's checkpoints


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_and_a_damaged_one_named(tmp_path, caplog):
    import logging

    from etils import epath

    from teacherlm_jax.errors import DataError
    from teacherlm_jax.train.metrics import truncate_jsonl

    path = epath.Path(tmp_path / "metrics.jsonl")
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"st')
    with caplog.at_level(logging.WARNING):
        truncate_jsonl(path, 2)  # what a resume from step 2 does
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert f"{path}:4: a line cut short" in caplog.text
    path.write_text('{"step": 1}\ngarbage\n{"step": 3}\n')
    with pytest.raises(DataError, match=f"{path}:2: not a metrics record"):
        truncate_jsonl(path, 2)


def test_a_store_tensorstore_gave_up_on_is_one_line(monkeypatch):
    """Orbax writes arrays through tensorstore, which retries a failing store itself; once it gives up, the
    CLI's line says the store kept failing (here: nothing listens where the store should be)."""
    import tensorstore as ts

    from teacherlm_jax.errors import fault_message

    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "token")
    context = ts.Context({"gcs_request_retries": {"max_retries": 2, "initial_delay": "0s", "max_delay": "0s"}})
    with pytest.raises(ValueError) as failed:
        store = ts.KvStore.open({"driver": "gcs", "bucket": "no-such-bucket", "path": "run/"}, context=context).result()
        store.write("checkpoints/2/params", b"1").result()
    message = fault_message(failed.value)
    assert message is not None and "the store kept failing (ValueError: ABORTED: All 2 retry attempts failed" in message, \
        failed.value
    assert "\n" not in message


def test_a_pipeline_on_a_flaky_bucket_reuses_a_done_step_and_names_a_record_it_cannot_read(gcs_bucket, flaky_store,
                                                                                             tmp_path):
    """Its file hashes and the step's record are read through the retries: each read failing once, the done step
    is still reused; reads that keep failing stop the plan with one error naming the record, and the step's
    folder is kept (a record that does not arrive is not a damaged one)."""
    from configs import pipeline as pipeline_configs
    from teacherlm_jax.errors import StorageError
    from teacherlm_jax.paths import workdir_path, write_atomic
    from teacherlm_jax.pipeline import state
    from teacherlm_jax.pipeline.job import make_plan

    failures, waits = flaky_store
    config, work = pipeline_configs.get_config("tiny"), workdir_path(f"{gcs_bucket}/{tmp_path.name}")
    plan = make_plan(config, work)
    plan.hashes.save()
    step = plan.steps[0]
    out = work / step.name
    write_atomic(out / "metrics.jsonl", '{"step": 1}\n')
    args = (plan.digests[step.name], plan.upstream[step.name], plan.files[step.name])
    state.write_record(out, step, *args, "done", outputs=state.output_sizes(out))
    failures["each_read_once"] = True
    assert make_plan(config, work).actions[step.name] == ("reuse", "done, unchanged")
    failures["each_read_once"] = False
    assert waits == [1.0, 1.0]  # the hashes, the record: each failed once
    (work / state.HASHES).unlink()
    failures["read"] = 10 ** 6
    with pytest.raises(StorageError) as failed:
        state.prepare(step, out, *args)
    assert str(failed.value).startswith(f"{out / state.RECORD}: read failed "), failed.value
    failures["read"] = 0
    assert (out / "metrics.jsonl").exists() and state.read_record(out)["state"] == "done"


def test_init_from_a_run_in_a_flaky_bucket_reads_through_the_retries_and_a_failing_export_is_not_damage(
        gcs_bucket, flaky_store, tmp_path):
    """A run's model_config.json is read through the retries. Its export's config.json that keeps failing to
    arrive stops the job naming it; only an export that arrives and does not read is passed over for the run's
    checkpoints."""
    from configs import train as train_configs
    from teacherlm_jax import init_from
    from teacherlm_jax.errors import ConfigError, fault_message
    from teacherlm_jax.paths import workdir_path, write_atomic

    failures, waits = flaky_store
    architecture = init_from.resolve(train_configs.get_config("tiny").model).config.to_hf_dict()
    run = workdir_path(f"{gcs_bucket}/{tmp_path.name}")
    write_atomic(run / init_from.MODEL_CONFIG, json.dumps(architecture))
    write_atomic(run / "checkpoints" / "2" / "params" / "manifest.ocdbt", b"\0")
    failures["each_read_once"] = True
    resolved = init_from.resolve({"init_from": str(run)})
    failures["each_read_once"] = False
    assert resolved.config.to_hf_dict() == architecture and resolved.init_from == str(run) and waits == [1.0]

    write_atomic(run / init_from.HF_EXPORT / "config.json", json.dumps(architecture))
    write_atomic(run / init_from.HF_EXPORT / "model.safetensors", b"\0")
    failures["read"] = 10 ** 6
    with pytest.raises(ConfigError) as failed:
        init_from.resolve({"init_from": str(run)})
    message = fault_message(failed.value)
    assert message is not None and message.startswith(f"{run}/{init_from.HF_EXPORT}/config.json: read failed "), \
        failed.value


def test_a_checkpoint_that_fails_to_arrive_for_a_moment_is_restored_not_passed_over(gcs_bucket, flaky_store, tmp_path,
                                                                                   caplog):
    """Orbax does not retry its reads of a checkpoint in a bucket: a reset connection is a store's passing
    error, so the step's restore is retried, not taken for damage; a store that keeps failing stops the restore
    naming the checkpoint, with no step passed over."""
    import logging

    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from teacherlm_jax.errors import StorageError
    from teacherlm_jax.intact_checkpoint import restore_newest_intact
    from teacherlm_jax.paths import workdir_path

    failures, waits = flaky_store
    folder = workdir_path(f"{gcs_bucket}/{tmp_path.name}") / "checkpoints"
    manager = ocp.CheckpointManager(folder, item_names=("params",))
    for step in (4, 6):
        manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave({"w": np.full(4, float(step))})))
    manager.wait_until_finished()
    target = {"w": jax.ShapeDtypeStruct((4,), np.float64, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))}

    def restore(step: int) -> dict:
        return manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]

    failures["read"] = 2
    with caplog.at_level(logging.WARNING):
        step, params = restore_newest_intact(manager.all_steps(), restore, str(folder))
    assert step == 6 and np.asarray(params["w"]).tolist() == [6.0] * 4 and "cannot be read" not in caplog.text
    assert failures["read"] == 0 and waits == [1.0, 2.0] and f"{folder}/6: restore failed" in caplog.text
    failures["read"] = 10 ** 6
    with pytest.raises(StorageError, match=f"^{re.escape(str(folder))}/6: restore failed "):
        restore_newest_intact(manager.all_steps(), restore, str(folder))
    manager.close()
