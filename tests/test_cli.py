"""What `python -m teacherlm_jax.main` shows a person: errors they can fix as one message (exit 2) with the key
a misspelled one meant, tracebacks on request and for bugs, `--help` and `--dry_run`, and refused runs that
leave the workdir as they found it."""
from __future__ import annotations

import importlib
import json
import logging
import subprocess

import pytest

from configs import pipeline as pipeline_configs
from configs import train as train_config
from teacherlm_jax import cli, main
from teacherlm_jax.errors import ConfigError
from teacherlm_jax.paths import workdir_path
from teacherlm_jax.pipeline import state
from teacherlm_jax.pipeline.job import make_plan
from train_subprocess import REPO, jax_env, main_command


def _main(config: str, workdir, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(main_command(config, workdir, *args), cwd=REPO, env=jax_env(**env), capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ("--config.students.finetune_cot.train.learning_rate=1e-3",
     "error: config.students.finetune_cot.train.learning_rate: no such key; did you mean "
     "config.students.finetune_cot.train.optimizer.learning_rate?"),
    ("--config.teacher.kindz=x", "error: config.teacher.kindz: no such key; did you mean config.teacher.kinds?"),
    ("--config.teacher.stag1.num_train_steps=3", "did you mean config.teacher.stage1.num_train_steps"),
    ("--config.teacher.stage1.num_train_steps=abc",
     "error: flag --config.teacher.stage1.num_train_steps=abc: invalid literal for int()"),
    ("--config.students.finetune_cot.train.num_train_steps=-1",
     "step students/finetune_cot, config.students.finetune_cot.train.num_train_steps=-1: expected an integer >= 1"),
])
def test_errors_a_person_can_fix_are_one_message_with_exit_status_2(tmp_path, override, message):
    proc = _main("configs/pipeline.py:tiny", tmp_path / "work", override)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 6
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_verbose_shows_the_traceback(tmp_path):
    proc = _main("configs/pipeline.py:tiny", tmp_path, "--config.teacher.kindz=x", TEACHERLM_VERBOSE="1")
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    proc = _main("configs/train.py:tiny", tmp_path / "run", "--config.log_every=0", "--verbose")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "config.log_every=0" in proc.stderr


@pytest.mark.slow
def test_missing_config_file_and_unknown_variant(tmp_path):
    proc = _main("configs/pipline.py", tmp_path)
    assert proc.returncode == 2 and "error: --config=configs/pipline.py: no such file; did you mean " \
                                      "configs/pipeline.py?" in proc.stderr
    proc = _main("configs/train.py:huge", tmp_path)
    assert proc.returncode == 2 and "error: --config=configs/train.py:huge: ValueError: configs/train.py: unknown " \
                                      "variant 'huge'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bugs_keep_their_traceback(capsys):
    def refused(argv):
        raise ConfigError("config.x=1: expected 2")

    def bug(argv):
        raise KeyError("a bug")

    with pytest.raises(SystemExit) as exit_:
        cli.guard(refused)([])
    assert exit_.value.code == 2 and "error: config.x=1: expected 2" in capsys.readouterr().err
    with pytest.raises(KeyError, match="a bug"):
        cli.guard(bug)([])


@pytest.mark.slow
def test_help_lists_jobs_configs_and_variants_and_each_variant_builds(tmp_path):
    proc = subprocess.run(main_command("configs/train.py", tmp_path)[:3] + ["--help"], cwd=REPO, env=jax_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name, job in main.JOBS.items():
        assert f"  {name:<10} {job.about}" in proc.stdout
    files = cli.config_files()
    assert {"configs/train.py", "configs/pipeline.py", "configs/demo.py", "configs/student/finetune.py"} <= set(files)
    for path, (about, variants) in files.items():
        assert path in proc.stdout and about and variants, path
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        for variant, what in variants.items():
            assert what in proc.stdout
            assert module.get_config(variant or None).job in main.JOBS  # a variant that builds


def test_every_shipped_config_variant_passes_its_jobs_checks():
    """Except what a variant says it needs from you: the shared data has no fundamentals or mistakes."""
    needs_input = {("configs/teacher/stage3_specialization.py", kind): "config.data.datasets=()"
                   for kind in ("fundamentals", "mistakes")}
    for path, (_, variants) in cli.config_files().items():
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        for variant in variants:
            config = module.get_config(variant or None)
            problems = [str(p) for p in main._function(main.JOBS[config.job].validate)(config)]
            expected = needs_input.get((path, variant))
            if expected is None:
                assert problems == [], (path, variant, problems)
            else:
                assert len(problems) == 1 and problems[0].startswith(expected), (path, variant, problems)


@pytest.mark.slow
def test_dry_run_prints_config_and_plan_and_writes_nothing(tmp_path):
    work = tmp_path / "work"
    proc = _main("configs/pipeline.py:tiny", work, "--dry_run")
    assert proc.returncode == 0, proc.stderr
    config, _, steps = proc.stdout.partition("\nsteps in ")
    assert json.loads(config)["teacher"]["stage1"]["num_train_steps"] == 8
    assert "teacher/stage1         train     run     not run yet" in steps
    assert not work.exists()


def test_plan_says_run_reuse_resume_or_rerun_and_why(tmp_path):
    config = pipeline_configs.get_config("tiny")
    work = workdir_path(tmp_path)
    plan = make_plan(config, work)
    first, second = plan.steps[:2]
    for step, status in ((first, "done"), (second, "running")):
        state.write_record(work / step.name, step, plan.digests[step.name], plan.upstream[step.name],
                           plan.files[step.name], status)
    actions = make_plan(config, work).actions
    assert actions[first.name] == ("reuse", "done, unchanged")
    assert actions[second.name] == ("resume", "stopped while running, unchanged")
    config.teacher.stage1.num_train_steps = 9
    actions = make_plan(config, work).actions
    assert actions[first.name] == ("rerun", "num_train_steps: 8 -> 9")
    assert actions[second.name] == ("rerun", f"step {first.name} changed")
    assert actions["eval/finetune_cot"] == ("run", "not run yet")


@pytest.mark.slow
def test_refused_run_leaves_the_workdir_as_it_found_it(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    for override in ("--config.optimizer.warmup_steps=-1", "--config.data.source=nope", "--config.data.seq_len=4096"):
        proc = _main("configs/train.py:tiny", work, override)
        assert proc.returncode == 2, proc.stderr
        assert sorted(p.name for p in work.iterdir()) == ["notes.txt"], override
    assert "config.data.seq_len=4096 must be in [1, " in proc.stderr  # found once the model resolves
    (tmp_path / "file").write_text("")
    proc = _main("configs/train.py:tiny", tmp_path / "file")
    assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr


@pytest.mark.slow  # a job end to end
def test_num_train_steps_alone_shortens_a_run_with_warmup_clipped(tmp_path, caplog):
    from teacherlm_jax.train.loop import train

    config = train_config.get_config("tiny")  # warmup_steps=10
    config.update(num_train_steps=3, eval_every=0, plot=False, export_hf=False)
    with caplog.at_level(logging.INFO):
        train(config, tmp_path)
    assert "config.optimizer.warmup_steps=10 is longer than the run (num_train_steps=3): warmup clipped to 3 " \
           "steps" in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3
