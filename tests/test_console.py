"""What a person reads: the progress line's figures, the jobs' summary line, the config file in the workdir."""
from __future__ import annotations

import json

import ml_collections
import pytest

from teacherlm_jax.console import count, duration, report_summary, summary_line
from teacherlm_jax.run_config import write_config
from teacherlm_jax.train.metrics import progress_line


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (59, "59s"), (283, "4m43s"), (7500, "2h05m")])
def test_duration(seconds, text):
    assert duration(seconds) == text


@pytest.mark.parametrize("n, text", [(3.14, "3.1"), (950, "950"), (12_400, "12.4k"), (3_100_000, "3.1M"), (5.0, "5")])
def test_count(n, text):
    assert count(n) == text


def test_progress_line_names_next_token_accuracy_and_takes_eta_from_the_rate():
    metrics = {"loss": 2.3141, "next_token_accuracy": 0.4123, "step_time_s": 1 / 3.1, "tokens_per_s": 12_400,
               "grad_norm": 1.0}
    assert progress_line(120, 1000, metrics) == ("step 120/1000 (12%)  loss 2.314  next-token accuracy 41.2%  "
                                                 "3.1 steps/s  12.4k tokens/s  ETA 4m44s")
    eval_only = progress_line(1000, 1000, {"eval_loss": 2.5, "eval_next_token_accuracy": 0.4})
    assert eval_only == "step 1000/1000 (100%)  eval loss 2.5  eval next-token accuracy 40.0%"


def test_summary_line_is_one_line_of_numbers_then_outputs(capsys):
    line = report_summary("eval", {"creak": "accuracy 71.2%", "mmlu": "n/a"},
                          {"report": "/w/eval/results.md", "metrics": "/w/eval/metrics.json"})
    assert line == "eval done: creak accuracy 71.2%, mmlu n/a | report /w/eval/results.md, metrics /w/eval/metrics.json"
    assert capsys.readouterr().out == line + "\n"
    assert summary_line("compile", {"": "fits"}, {}) == "compile done: fits"


def test_config_file_is_rewritten_only_when_it_changes_and_keeps_the_earlier_one(tmp_path):
    config = ml_collections.ConfigDict({"job": "train", "data": {"datasets": ("creak",), "seq_len": None}})
    path = write_config(config, tmp_path / "run")
    assert path == tmp_path / "run" / "config.json"
    assert json.loads(path.read_text()) == {"job": "train", "data": {"datasets": ["creak"], "seq_len": None}}
    write_config(config, tmp_path / "run")  # a resume with the same config
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json"]
    first = path.read_text()
    config.data.seq_len = 512
    write_config(config, tmp_path / "run")
    (kept,) = (tmp_path / "run").glob("config.*T*Z.json")
    assert kept.read_text() == first and json.loads(path.read_text())["data"]["seq_len"] == 512
