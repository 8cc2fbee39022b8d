"""The eval job: scores equal a transformers+torch computation of lm-evaluation-harness's formula,
TeacherLM's MMLU contexts reach the model, a model rigged to answer B scores the fraction of B answers,
the generative parser, and the job end to end through `teacherlm_jax.main`."""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reference_models import tiny_bloom
from teacherlm_jax import from_pretrained, load_tokenizer
from teacherlm_jax.data import Record
from teacherlm_jax.errors import ConfigError, DataError
from teacherlm_jax.eval import batch_plan, scoring
from teacherlm_jax.eval.generative import generation_prompt, parse_answer
from teacherlm_jax.eval.report import MMLU_CATEGORY
from teacherlm_jax.eval.job import check_finite_weights, choice_tokens, evaluate_records, evaluate_tasks

REPO = Path(__file__).resolve().parents[1]
VOCAB = 320  # covers the 300-token byte-level tokenizer below
B = 37  # the tokenizer's id for "B" (checked in the fixture)


def byte_tokenizer():
    """A byte-level BPE (any text encodes; decode gives it back) with BLOOM's special ids 0-3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(["The following are multiple choice questions (with answers) about",
                                 "Q: Determine the correctness of the following sentence. A: The answer is (",
                                 "the cat sat on the mat --> True"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", padding_side="left")


def records(n: int, num_choices: int = 4, seed: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    words = ["cat", "dog", "mat", "sun", "tree", "river", "blue", "seven"]
    return [Record(id=f"q{i}", question=" ".join(rng.choice(words, rng.integers(2, 12))) + "?",
                   choices=tuple(str(rng.choice(words)) for _ in range(num_choices)),
                   answer=int(rng.integers(num_choices)), subject="virology") for i in range(n)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    directory = tmp_path_factory.mktemp("bloom")
    reference = tiny_bloom(directory, vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)
    tokenizer = byte_tokenizer()
    assert tokenizer("B", add_special_tokens=False)["input_ids"] == [B]
    tokenizer.save_pretrained(directory)
    return directory, reference


@pytest.fixture(scope="module")
def model(checkpoint):
    return from_pretrained(checkpoint[0])


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return load_tokenizer(checkpoint[0])


def torch_scores(reference, contexts, continuations, *, score: str, max_length: int) -> list[list[float]]:
    """lm-evaluation-harness's `_loglikelihood_tokens`, one sequence per choice, batch 1."""
    out = []
    for context, conts in zip(contexts, continuations):
        row = []
        for cont in conts:
            inp = (list(context) + list(cont))[-(max_length + 1):][:-1]
            with torch.no_grad():
                logits = reference(torch.tensor([inp])).logits[0].float()
            logprobs = torch.log_softmax(logits, dim=-1)[len(inp) - len(cont):]
            total = float(logprobs.gather(1, torch.tensor(cont)[:, None]).sum())
            row.append(total / len(cont) if score == "mean" else total)
        out.append(row)
    return out


@pytest.mark.parametrize("score", ["mean", "sum"])
def test_single_token_choices_match_torch(checkpoint, model, tokenizer, score):
    qs = records(7)
    contexts, continuations = choice_tokens(tokenizer, qs)
    assert all(len(c) == 1 for conts in continuations for c in conts)
    max_length = 66  # some contexts are longer: they must be cut on the left as lm-eval does
    result = scoring.loglik_choices(model, contexts, continuations, score=score, batch_size=4, max_length=max_length)
    expected = torch_scores(checkpoint[1], contexts, continuations, score=score, max_length=max_length)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4, atol=1e-4)
    assert result.predictions == [int(np.argmax(e)) for e in expected]
    assert result.truncated == [len(c) > max_length for c in contexts]
    assert any(result.truncated) and not all(result.truncated)


@pytest.mark.parametrize("score", ["mean", "sum"])
def test_multi_token_choices_match_torch(checkpoint, model, tokenizer, score):
    texts = [("Q: the cat sat on", [" the mat", " a", " seven blue rivers"]),
             ("Q: sun", [" tree", " dog river"]),
             ("Q: which one is the dog that sat on the mat by the river with seven trees?", [" blue", " cat"])]
    contexts = scoring.encode(tokenizer, [t for t, _ in texts])
    continuations = [scoring.encode(tokenizer, conts) for _, conts in texts]
    assert any(len(c) > 1 for conts in continuations for c in conts)
    max_length = 20
    result = scoring.loglik_choices(model, contexts, continuations, score=score, batch_size=2, max_length=max_length)
    expected = torch_scores(checkpoint[1], contexts, continuations, score=score, max_length=max_length)
    for got, want in zip(result.scores, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert result.truncated[2] and not result.truncated[1]


def test_one_row_per_group_of_choices_equal_but_for_their_last_token():
    rows = scoring.make_rows([[5, 6, 7], [8], [9]], [[[1], [2], [3]], [[1, 2], [3]], [[4, 1], [4, 2], [5, 1]]],
                             max_length=16)
    assert [(r.question, r.choices) for r in rows] == [(0, (0, 1, 2)), (1, (0,)), (1, (1,)), (2, (0, 1)), (2, (2,))]
    assert rows[3].tokens == (9, 4) and rows[3].continuations == ((4, 1), (4, 2))


def test_shared_prefix_choices_match_torch(checkpoint, model, tokenizer):
    """Byte-level " A" / " B": two tokens each, the space shared, scored from one row."""
    contexts = scoring.encode(tokenizer, ["Q: the cat sat on the mat. Answer:", "Q: sun?"])
    continuations = [scoring.encode(tokenizer, [" A", " B", " C"]), scoring.encode(tokenizer, [" yes", " no"])]
    assert len(scoring.make_rows(contexts, continuations, 64)) == 3
    result = scoring.loglik_choices(model, contexts, continuations, score="sum", batch_size=2, max_length=64)
    expected = torch_scores(checkpoint[1], contexts, continuations, score="sum", max_length=64)
    for got, want in zip(result.scores, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_batches_hold_every_row_once_within_their_width():
    rng = np.random.default_rng(0)
    for _ in range(100):
        lengths = rng.integers(1, 200, int(rng.integers(1, 80))).tolist()
        sequences = int(rng.integers(1, 9))
        batches = batch_plan.plan_batches(lengths, sequences, max_length=256, hidden_size=64)
        assert sorted(i for _, batch in batches for seq in batch for i in seq) == list(range(len(lengths)))
        for width, batch in batches:
            assert len(batch) <= sequences and all(sum(lengths[i] for i in seq) <= width <= 256 for seq in batch)
            assert width % batch_plan.WIDTH_STEP == 0 or width == 256
        widths = [width for width, _ in batches]
        assert widths == sorted(widths, reverse=True)  # longest first
        own = batch_plan._fill(lengths, sequences, 256, allowed=None)  # every batch at its own width
        assert len(set(widths)) <= math.isqrt(max(len(own) - 1, 0)) + 1  # programs: ceil(sqrt(own batches))
        # first fit decreasing: a row left for a later batch fits no gap of an earlier one's sequences
        for k, (width, batch) in enumerate(batches):
            gaps = [width - sum(lengths[i] for i in seq) for seq in batch]
            later = [lengths[i] for _, b in batches[k + 1:] for seq in b for i in seq]
            if len(batch) == sequences and later:
                assert min(later) > max(gaps)
    with pytest.raises(ValueError, match="does not fit max_length"):
        batch_plan.plan_batches([5, 9], 2, max_length=8, hidden_size=64)


def test_long_rows_are_not_packed_wider_than_they_need():
    """Five-shot MMLU's long rows (here 450-587 tokens: no two share a sequence of their own width): each
    batch about as wide as its longest row; zero-shot's (35-164): a few batches of one width."""
    lengths = list(range(450, 588, 3))
    batches = batch_plan.plan_batches(lengths, 8, max_length=2048, hidden_size=1024)
    assert batches[0][0] == -(-587 // batch_plan.WIDTH_STEP) * batch_plan.WIDTH_STEP and batches[-1][0] < batches[0][0]
    assert sum(8 * width for width, _ in batches) < 1.25 * sum(lengths)
    lengths = list(range(35, 165, 3))
    batches = batch_plan.plan_batches(lengths, 8, max_length=2048, hidden_size=1024)
    assert len({width for width, _ in batches}) == 1
    assert sum(8 * width for width, _ in batches) < 1.1 * sum(lengths)


def test_planned_widths_pad_least_within_the_program_budget():
    """A run of n batches compiles at most ceil(sqrt(n)) prefill widths; each batch gets at least its own
    width; among plans within the budget, the one with the fewest padded columns (brute force on small runs)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 9))
        own = sorted(rng.choice([16, 24, 32, 48, 64, 96, 128, 192], n).tolist(), reverse=True)
        planned = batch_plan.plan_widths(own)
        budget = math.ceil(math.sqrt(n))
        assert len(planned) == n and all(p >= w for p, w in zip(planned, own))
        assert len(set(planned)) <= max(budget, 1)
        best = min(sum(max(own[i:j]) * (j - i) for i, j in zip((0, *cuts), (*cuts, n)))
                   for k in range(budget) for cuts in itertools.combinations(range(1, n), k))
        assert sum(planned) == best, (own, planned)
        if len(set(own)) <= budget:
            assert planned == own


def test_a_run_compiles_few_programs_and_scores_as_rows_alone(model, tokenizer):
    """Rows of very different lengths over seven batches: at most ceil(sqrt(7)) scoring programs, and each
    question's scores those it gets scored alone."""
    lengths = [150, 100, 60, 40, 20, 9, 3]
    contexts = [[5 + (i * 7 + j) % 80 for j in range(n)] for i, n in enumerate(lengths)]
    continuations = [[[10], [11], [12]] if i % 2 else [[10, 11], [12]] for i in range(len(lengths))]
    before = scoring.num_traces()
    result = scoring.loglik_choices(model, contexts, continuations, batch_size=1, max_length=200)
    assert 1 <= scoring.num_traces() - before <= 3
    for q in (0, 4, 5, 6):
        alone = scoring.loglik_choices(model, contexts[q:q + 1], continuations[q:q + 1], batch_size=1, max_length=200)
        np.testing.assert_allclose(result.scores[q], alone.scores[0], rtol=1e-5, atol=1e-5)
    before = scoring.num_traces()
    scoring.loglik_choices(model, contexts, continuations, batch_size=1, max_length=200)
    assert scoring.num_traces() == before  # the same run again: no new program


def test_mmlu_context_reaches_the_model(tokenizer):
    record = Record(id="x", question="Which is\nright", choices=("a\nb", "c", "d", "e"), answer=0,
                    subject="high_school_us_history")
    golden = ("The following are multiple choice questions (with answers) about high school us history. "
              "Q: Which is right. (A) a b (B) c (C) d (D) e A: The answer is (")
    contexts, continuations = choice_tokens(tokenizer, [record], mmlu=True)
    assert tokenizer.decode(contexts[0]) == golden
    assert [tokenizer.decode(c) for c in continuations[0]] == ["A", "B", "C", "D"]
    contexts, _ = choice_tokens(tokenizer, [record])
    assert tokenizer.decode(contexts[0]) == "Q: Which is\nright (A) a\nb (B) c (C) d (D) e A: The answer is ("


def test_real_mmlu_context(shared_data_dir, tokenizer):
    from teacherlm_jax.data import load_records

    record = load_records("mmlu", "test", data_dir=str(shared_data_dir))[0]
    contexts, _ = choice_tokens(tokenizer, [record], mmlu=True)
    assert tokenizer.decode(contexts[0]) == (
        "The following are multiple choice questions (with answers) about abstract algebra. Q: Find the degree for "
        "the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q. (A) 0 (B) 4 (C) 2 (D) 6 A: The answer is (")


@pytest.fixture(scope="module")
def rigged(tmp_path_factory) -> Path:
    """A BLOOM whose every position predicts "B": ln_f outputs a constant vector v, lm_head row B = 10 v."""
    directory = tmp_path_factory.mktemp("rigged")
    reference = tiny_bloom(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, tie_word_embeddings=False)
    with torch.no_grad():
        v = torch.randn(32, generator=torch.Generator().manual_seed(1))
        reference.transformer.ln_f.weight.zero_()
        reference.transformer.ln_f.bias.copy_(v)
        reference.lm_head.weight[B] = 10 * v
    reference.save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


def test_rigged_model_accuracy_is_fraction_of_b(rigged):
    model, tokenizer = from_pretrained(rigged), load_tokenizer(rigged)
    qs = records(20, num_choices=3, seed=3)
    predictions, acc = evaluate_records(model, tokenizer, qs, batch_size=8)
    assert [p.prediction for p in predictions] == [1] * len(qs)
    expected = sum(r.answer == 1 for r in qs) / len(qs)
    assert 0 < expected < 1 and acc == pytest.approx(expected)


def test_nan_weights_fail_evaluation_instead_of_scoring(tmp_path, tokenizer):
    """Argmax over NaN scores picks choice A: a NaN checkpoint would read as a plausible accuracy."""
    reference = tiny_bloom(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)
    with torch.no_grad():
        reference.transformer.ln_f.bias.fill_(float("nan"))
    reference.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path)
    with pytest.raises(FloatingPointError, match=r"ckpt: 1 of \d+ weight arrays hold NaN or inf \(first: .*ln_f"):
        check_finite_weights(model, "ckpt")
    with pytest.raises(FloatingPointError, match="non-finite log-probabilities for 4 of 4 rows"):
        evaluate_records(model, tokenizer, records(4), batch_size=8)


def test_finite_weights_whose_sum_overflows_pass_the_check(tmp_path):
    """The check sums each array first: a sum that overflows to inf must not fail finite weights."""
    reference = tiny_bloom(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)
    with torch.no_grad():
        reference.transformer.ln_f.bias.fill_(3e38)  # finite; any two of them sum to inf in float32
    reference.save_pretrained(tmp_path)
    check_finite_weights(from_pretrained(tmp_path), "ckpt")


@pytest.mark.parametrize("text, choices, expected", [
    (" the sky is blue --> B", ("red", "blue"), 1),
    (" because (A) is wrong --> (B)", ("x", "y", "z"), 1),
    (" reasoning --> blue.\nmore text --> red", ("red", "blue"), 1),
    (" it is true --> True", ("True", "False"), 0),
    (" so the answer is false", ("True", "False"), 1),
    (" (A) looks right but (C) is the answer", ("p", "q", "r"), 2),
    (" --> (C) river", ("cat", "dog", "river"), 2),
    (" --> seven", ("cat", "dog"), None),
    (" the cat ran", ("cat", "category"), 0),  # word-bounded: "cat" is not inside "category"
    ("no answer here", ("cat", "dog"), None),
    (" --> E", ("a", "b"), None),  # a letter beyond the choices names none
])
def test_parse_answer(text, choices, expected):
    assert parse_answer(text, choices) == expected


def test_generative_mode_keeps_text_and_parses_it(model, tokenizer):
    qs = records(3, num_choices=2, seed=4)
    assert generation_prompt(qs[0]).endswith(" (A) " + qs[0].choices[0] + " (B) " + qs[0].choices[1] + " ###")
    predictions, acc = evaluate_records(model, tokenizer, qs, mode="generate", batch_size=2, max_new_tokens=6)
    for p, r in zip(predictions, qs):
        assert isinstance(p.generation, str)
        parsed = parse_answer(p.generation, r.choices)
        assert p.prediction == (-1 if parsed is None else parsed)
        assert p.scores == [float(i == p.prediction) for i in range(len(r.choices))]
    assert acc == sum(p.prediction == r.answer for p, r in zip(predictions, qs)) / 3


def test_evaluate_tasks_jsonl_writes_report(model, tokenizer, tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"id": r.id, "question": r.question, "choices": list(r.choices),
                                        "answer": r.answer}) + "\n" for r in records(9)))
    metrics = evaluate_tasks(model, tokenizer, [str(path)], tmp_path / "eval", max_examples=5, batch_size=4,
                             max_length=66)  # the shapes of the tests above: no new compile
    m = metrics["tasks"]["mine"]
    assert (m["count"], m["available"], m["subset"], m["max_examples"]) == (5, 9, True, 5)
    lines = (tmp_path / "eval" / "mine" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["q0", "q2", "q4", "q6", "q8"]  # evenly spaced
    assert "subset: 5 of 9" in (tmp_path / "eval" / "results.md").read_text()
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        evaluate_tasks(model, tokenizer, ["nope"], tmp_path / "x")


def test_metrics_report_the_programs_a_run_pays_for_and_a_rerun_in_the_process_pays_none(model, tokenizer, tmp_path,
                                                                                         caplog):
    """With jax's caches cleared (a process that has compiled nothing), evaluating obtains programs: metrics.json's
    throughput has them per task and in all, with their seconds by phase, and the log says what share of the
    evaluating time they took; the same evaluation again in this process obtains none."""
    import jax

    tasks = []
    for name, seed in (("first", 1), ("second", 2)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": r.id, "question": r.question, "choices": list(r.choices),
                                            "answer": r.answer}) + "\n" for r in records(5, seed=seed)))
        tasks.append(str(path))
    jax.clear_caches()
    with caplog.at_level(logging.INFO, logger="teacherlm_jax.eval.job"):
        returned = evaluate_tasks(model, tokenizer, tasks, tmp_path / "a", batch_size=4, max_length=66)
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())["throughput"]
    assert first == returned["throughput"] and set(first["tasks"]) == {"first", "second"}
    per_task = first["tasks"].values()
    assert first["tasks"]["first"]["compiled_programs"] > 0
    assert first["compiled_programs"] == sum(t["compiled_programs"] for t in per_task)
    for figures in (first, *per_task):
        assert set(figures["program_seconds"]) == {"trace", "lower", "cache_read", "compile"}
    assert first["program_seconds"]["compile"] > 0
    assert first["seconds"] == pytest.approx(sum(t["seconds"] for t in per_task), abs=0.002)
    paid = sum(t for phase, t in first["program_seconds"].items() if phase != "cache_read")
    assert 0 < paid <= first["seconds"]  # obtained inside the evaluating, on this thread
    assert f"tasks in all: {first['compiled_programs']} programs obtained in {paid:.2f} s (trace " in caplog.text
    assert f"of {first['seconds']:.2f} s evaluating" in caplog.text

    again = evaluate_tasks(model, tokenizer, tasks, tmp_path / "b", batch_size=4, max_length=66)["throughput"]
    assert [t["compiled_programs"] for t in again["tasks"].values()] == [0, 0] and again["compiled_programs"] == 0
    assert again["program_seconds"] == {"trace": 0.0, "lower": 0.0, "cache_read": 0.0, "compile": 0.0}
    assert all(isinstance(t, float) for t in again["program_seconds"].values()) and again["seconds"] > 0


def test_mmlu_category_map_covers_57_subjects(shared_data_dir):
    subjects = {p.name[:-len("_test.csv")] for p in (shared_data_dir / "mmlu_canonical_reformatted" / "test").iterdir()}
    assert subjects == set(MMLU_CATEGORY) and len(subjects) == 57
    assert sorted(set(MMLU_CATEGORY.values())) == ["STEM", "humanities", "other", "social sciences"]


@pytest.mark.slow
def test_job_end_to_end(shared_data_dir, rigged, tmp_path):
    """Through `python -m teacherlm_jax.main` on 2 CPU devices (batch split over the mesh): the rigged
    model answers B everywhere, so each task's accuracy is its fraction of B answers."""
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("".join(json.dumps({"id": r.id, "question": r.question, "choices": list(r.choices),
                                         "answer": r.answer}) + "\n" for r in records(5)))
    workdir = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               TEACHERLM_DATA_DIR=str(shared_data_dir))
    cmd = [sys.executable, "-m", "teacherlm_jax.main", "--config", "configs/eval.py", "--workdir", str(workdir),
           f"--config.model.init_from={rigged}", f"--config.tasks=('mmlu','creak','{jsonl}')",
           "--config.max_examples=12", "--config.batch_size=4", "--config.max_length=160"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "contexts were longer than max_length" in proc.stderr
    out = workdir / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"mmlu", "creak", "mine"}
    assert metrics["settings"]["max_examples"] == 12
    for name, m in metrics["tasks"].items():
        preds = [json.loads(x) for x in (out / name / "predictions.jsonl").read_text().splitlines()]
        assert len(preds) == m["count"] == min(12, m["available"])
        assert all(set(p) >= {"id", "scores", "prediction", "answer"} for p in preds)
        assert all(p["prediction"] == 1 and len(p["scores"]) == (2 if name == "creak" else 4) for p in preds)
        assert m["accuracy"] == pytest.approx(np.mean([p["answer"] == 1 for p in preds]))
    mmlu = metrics["tasks"]["mmlu"]
    assert mmlu["available"] == 14042 and mmlu["subset"] and mmlu["dataset"] == "mmlu/test"
    assert 0 < mmlu["truncated"] < 12  # byte-level tokens: some MMLU contexts exceed 160
    assert set(mmlu["categories"]) <= {"STEM", "humanities", "social sciences", "other"}
    assert sum(c["count"] for c in mmlu["categories"].values()) == 12
    assert mmlu["macro_accuracy"] == pytest.approx(np.mean([s["accuracy"] for s in mmlu["subjects"].values()]))
    assert "| mmlu |" in (out / "results.md").read_text()
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert proc.stdout.strip().splitlines()[-1] == "eval done: " + ", ".join(
        f"{name} accuracy {100 * m['accuracy']:.1f}%" for name, m in metrics["tasks"].items()) + \
        f" | report {out / 'results.md'}, metrics {out / 'metrics.json'}"


def test_run_dir_resolves_to_its_export(checkpoint, tmp_path):
    import shutil

    from teacherlm_jax.init_from import resolve

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "model_config.json").write_text((checkpoint[0] / "config.json").read_text())
    source = resolve({"init_from": str(run)})
    assert source.from_run and source.init_from == str(run)  # no export: its latest Orbax checkpoint
    with pytest.raises(ConfigError, match=r"saved no tokenizer \(tokenizer/ or hf_final/\); set config.tokenizer"):
        source.tokenizer_path(None)
    shutil.copytree(checkpoint[0], run / "hf_final")
    source = resolve({"init_from": str(run)})
    assert source.init_from == source.tokenizer == str(run / "hf_final")


def test_empty_task_is_an_error_naming_it(model, tokenizer, tmp_path):
    """Not an accuracy of NaN (which is not JSON) over no questions."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match=f"{empty}: 0 records: task 'empty' has no questions"):
        evaluate_tasks(model, tokenizer, [str(empty)], tmp_path / "eval")
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_reports_are_strict_json_with_null_for_what_cannot_be_computed(tmp_path):
    from teacherlm_jax import report_json
    from teacherlm_jax.eval.report import task_metrics, write_report

    m = task_metrics([], dataset="none", available=0, max_examples=0, mmlu=False, generative=False)
    assert m["accuracy"] is None and "no questions" in m["note"]
    write_report(tmp_path, {"settings": {"model": "m", "mode": "loglik", "score": "mean", "dtype": "float32"},
                            "tasks": {"none": m}})
    strict = json.loads((tmp_path / "metrics.json").read_text(),
                        parse_constant=lambda name: pytest.fail(f"{name} in metrics.json"))
    assert strict["tasks"]["none"]["accuracy"] is None
    assert "| none | n/a |" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match=r"report value tasks\.t\.scores\[1\] is not finite"):
        report_json.dumps({"tasks": {"t": {"scores": [0.5, float("nan")]}}})


def _six_questions_config(rigged: Path, tmp_path: Path):
    """The eval job's config for the rigged model on six questions of a task file `mine`."""
    from configs.eval import get_config

    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("".join(json.dumps({"id": r.id, "question": r.question, "choices": list(r.choices),
                                         "answer": r.answer}) + "\n" for r in records(6, num_choices=3, seed=3)))
    config = get_config()
    config.model.init_from, config.tasks, config.batch_size = str(rigged), (str(jsonl),), 4
    return config


@pytest.mark.slow
def test_job_writes_its_report_to_gcs(rigged, tmp_path, gcs_bucket):
    """`run(config, "gs://...")`: predictions, metrics.json, results.md and accuracy.png in the bucket."""
    from teacherlm_jax.eval.job import run
    from teacherlm_jax.paths import workdir_path

    config = _six_questions_config(rigged, tmp_path)
    workdir = f"{gcs_bucket}/eval/{tmp_path.name}"
    run(config, workdir)
    out = workdir_path(workdir) / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    preds = [json.loads(x) for x in (out / "mine" / "predictions.jsonl").read_text().splitlines()]
    assert metrics["tasks"]["mine"]["count"] == len(preds) == 6 and all(p["prediction"] == 1 for p in preds)
    assert "| mine |" in (out / "results.md").read_text()
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (REPO / "gs:").exists() and not Path("gs:").exists()


def test_a_full_disk_stops_the_job_naming_the_path_and_the_rerun_writes_every_report(rigged, tmp_path, monkeypatch):
    import full_disk
    from teacherlm_jax.errors import fault_message
    from teacherlm_jax.eval.job import run

    config = _six_questions_config(rigged, tmp_path)
    run(config, str(tmp_path / "reference"))
    workdir = tmp_path / "full"
    full_disk.install(str(workdir), (tmp_path / "reference" / "config.json").stat().st_size + 100, monkeypatch)
    with pytest.raises(Exception) as failed:
        run(config, str(workdir))
    monkeypatch.undo()
    message = fault_message(failed.value)
    assert message is not None and message.startswith(str(workdir)) and "disk full" in message, failed.value
    assert not list(workdir.rglob("*.tmp*")) and not (workdir / "eval" / "metrics.json").exists()
    run(config, str(workdir))
    files = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(tmp_path / "reference"))
                           for p in (tmp_path / "reference").rglob("*") if p.is_file())
    results = lambda root: {k: v for k, v in json.loads((root / "eval" / "metrics.json").read_text()).items()
                            if k != "throughput"}  # the rerun's seconds and programs are its own
    assert results(workdir) == results(tmp_path / "reference")
