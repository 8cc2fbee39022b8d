"""The decontamination report (#14 item 4): planted 13-gram and 8-gram overlaps between training examples
(questions and teacher texts) and evaluation sets are found, template text shared by a whole set is not,
and a training run with `config.data.decontaminate` writes decontamination.json/.md."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from teacherlm_jax.data import Record
from teacherlm_jax.data.decontamination import contamination, eval_records, markdown
from teacherlm_jax.data.examples import TextPair
from teacherlm_jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PREFIX = "Determine the correctness of the following sentence about the world we live in. "  # 13 words
QUESTIONS = ["The Eiffel Tower was moved from Paris to Rome by boat in the winter of nineteen hundred.",
             "A bowl of soup can be eaten with a fork if the soup is thick enough to stick to it well.",
             "Penguins fly south every autumn across the desert to reach the cold lakes of northern Canada.",
             "Tea leaves are grown on high mountain slopes in several provinces of southern China today.",
             "Most cats sleep for more than twelve hours a day and hunt mainly at dusk and at dawn."]


def eval_set(tmp_path: Path) -> Path:
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps({"id": f"t{i}", "question": PREFIX + q, "choices": ["True", "False"],
                                        "answer": i % 2}) + "\n" for i, q in enumerate(QUESTIONS)))
    return path


def training_pairs() -> dict[str, list[TextPair]]:
    """t0's question in a training prompt (13-gram), 9 of t2's words in a teacher text (8-gram only); every
    prompt carries the set's template prefix, which must not count."""
    clean = [TextPair(f"c{i}/cot", f"Q: {PREFIX}Some unrelated claim number {i} about rivers. (A) True (B) False",
                      " Rivers flow downhill.") for i in range(4)]
    planted = [TextPair("p0/cot", f"Q: {PREFIX}{QUESTIONS[0]} (A) True (B) False", " Towers stay put."),
               TextPair("p1/cot", f"Q: {PREFIX}Birds migrate. (A) True (B) False",
                        " Penguins fly south every autumn across the desert to reach warm seas? No: they cannot fly.")]
    return {"toy_aug": clean + planted}


def test_planted_overlaps_are_found_and_templates_ignored(tmp_path):
    evals = {"heldout": eval_records(str(eval_set(tmp_path)))}
    report = contamination(training_pairs(), evals, ns=(13, 8))
    by_n = report["eval_sets"]["heldout"]
    assert report["train"] == {"toy_aug": 6}
    assert by_n["13"]["contaminated"] == 1 and by_n["13"]["checked"] == 5 and by_n["13"]["fraction"] == 0.2
    assert by_n["13"]["examples"][0] | {"ngram": None} == {"eval_id": "t0", "dataset": "toy_aug", "example": "p0/cot",
                                                           "field": "prompt", "ngram": None}
    assert by_n["8"]["contaminated"] == 2 and by_n["8"]["by_field"] == {"prompt": 1, "target": 1}
    t2 = next(e for e in by_n["8"]["examples"] if e["eval_id"] == "t2")
    assert t2["field"] == "target" and t2["ngram"] in "penguins fly south every autumn across the desert to reach"
    assert by_n["8"]["template_ngrams_ignored"] == 6 and by_n["13"]["template_ngrams_ignored"] == 1  # the prefix
    assert "| heldout | 13 | 5 | 5 | 1 | 0.2 | 1 | 0 |" in markdown(report)


def test_clean_training_data_reports_nothing_and_short_items_are_not_checked(tmp_path):
    evals = {"heldout": eval_records(str(eval_set(tmp_path))),
             "short": [Record(id="s", question="Is it?", choices=("yes", "no"), answer=0)]}
    report = contamination({"clean": training_pairs()["toy_aug"][:4]}, evals)
    assert all(r["contaminated"] == 0 for by_n in report["eval_sets"].values() for r in by_n.values())
    assert report["eval_sets"]["short"]["13"] | {"examples": []} == {
        "items": 1, "checked": 0, "contaminated": 0, "fraction": None, "by_field": {"prompt": 0, "target": 0},
        "template_ngrams_ignored": 0, "examples": []}


def test_unknown_eval_set_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match=re.escape("config.data.decontaminate: unknown evaluation set 'nope'")):
        eval_records("nope")


def test_training_run_writes_the_report(tmp_path):
    """A student run with config.data.decontaminate writes decontamination.json/.md and data_report.json."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from configs.student import finetune
    from teacherlm_jax.train.loop import train

    train_file = tmp_path / "train.jsonl"
    rows = [{"id": f"r{i}", "question": PREFIX + (QUESTIONS[0] if i == 3 else f"Claim {i} about rivers."),
             "choices": ["True", "False"], "answer": 0, "cot": "Rivers flow downhill."} for i in range(8)]
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = finetune.get_config("manual,tiny")
    config.data.update(datasets=(str(train_file),), seq_len=96, decontaminate=(str(eval_set(tmp_path)),))
    config.update(num_train_steps=1, batch_size=2, log_every=1, checkpoint_every=1, plot=False, export_hf=False,
                  async_checkpoints=False)
    config.model.update(hidden_size=16, n_layer=1, n_head=2)
    config.optimizer.warmup_steps = 0
    train(config, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "decontamination.json").read_text())
    assert report["eval_sets"][str(tmp_path / "heldout.jsonl")]["13"]["contaminated"] == 1
    assert "r3/cot" in (tmp_path / "run" / "decontamination.md").read_text()
    data = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert data["examples"] == {"train": 8} and data["filter"] == "none"
    config.data.decontaminate = ("creak_test",)
    from teacherlm_jax.data.training import make_records_iterator
    from teacherlm_jax.tokenizers import byte_tokenizer

    with pytest.raises(ConfigError, match="config.data.decontaminate: unknown evaluation set 'creak_test'"):
        make_records_iterator(config, byte_tokenizer(), 0, 1, report={})
