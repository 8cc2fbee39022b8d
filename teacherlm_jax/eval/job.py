"""Zero-shot multiple-choice evaluation: the eval job (`config.job = "eval"`) and the library calls
other jobs use (`evaluate_records`, `evaluate_tasks`).

    python -m teacherlm_jax.main --config configs/eval.py --workdir DIR \
        --config.model.init_from=CKPT --config.tasks="('mmlu','creak','/path/questions.jsonl')"

CKPT is a Hugging Face directory or hub id, or a training run's workdir: its `hf_final` export when there
is one, else its latest checkpoint (teacherlm_jax/init_from.py); the tokenizer is CKPT's own (for a run,
the one it trained with) unless `config.tokenizer` names another. Writes
DIR/eval/<task>/predictions.jsonl, DIR/eval/metrics.json, DIR/eval/results.md, DIR/eval/accuracy.png
(see teacherlm_jax/eval/). Scoring: teacherlm_jax/eval/scoring.py; generative mode:
teacherlm_jax/eval/generative.py; task names: teacherlm_jax/eval/tasks.py.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from teacherlm_jax.config_checks import Problems, raise_all
from teacherlm_jax.console import report_summary, terminal_bar
from teacherlm_jax.data import Record, eval_context
from teacherlm_jax.data.records import LETTERS
from teacherlm_jax.errors import ConfigError
from teacherlm_jax.eval.generative import generate_answers
from teacherlm_jax.eval.report import Prediction, accuracy, task_metrics, write_predictions, write_report
from teacherlm_jax.eval.scoring import SCORES, encode, loglik_choices
from teacherlm_jax.eval.tasks import Task, load_task, resolve_tasks, subset
from teacherlm_jax.eval.throughput import CostMeter, WorkCost
from teacherlm_jax.init_from import resolve
from teacherlm_jax.paths import workdir_path
from teacherlm_jax.run_config import write_config
from teacherlm_jax.sharding import LogicalRules, initialize_distributed, mesh_from_config

log = logging.getLogger(__name__)
MODES = ("loglik", "generate")


@contextlib.contextmanager
def _progress(total: int, desc: str) -> Iterator[Callable[[int], None]]:
    """A tqdm bar on a terminal (process 0), else a log line about every 10%."""
    bar = terminal_bar(total, desc=desc, unit="row")
    if bar is not None:
        with bar:
            yield bar.update
        return
    done, next_report = 0, 0.1

    def update(n: int) -> None:
        nonlocal done, next_report
        done += n
        if done >= next_report * total or done == total:
            log.info("%s: %d/%d rows", desc, done, total)
            next_report = done / total + 0.1

    yield update


def choice_tokens(tokenizer, records: Sequence[Record], *, mmlu: bool = False
                  ) -> tuple[list[list[int]], list[list[list[int]]]]:
    """(context ids, the ids of each choice's continuation) per record: TeacherLM's context and the
    choice letters `A`, `B`, ..., each tokenized on its own (no special tokens)."""
    contexts = encode(tokenizer, [eval_context(r, mmlu=mmlu) for r in records])
    letters = LETTERS[:max(len(r.choices) for r in records)]
    letter_ids = dict(zip(letters, encode(tokenizer, list(letters))))
    return contexts, [[letter_ids[x] for x in LETTERS[:len(r.choices)]] for r in records]


def evaluate_records(model: nnx.Module, tokenizer, records: Sequence[Record], *, mmlu: bool = False,
                     mode: str = "loglik", score: str = "mean", batch_size: int = 8, max_length: int | None = None,
                     max_new_tokens: int = 256, mesh: Mesh | None = None, rules: LogicalRules | None = None,
                     desc: str = "eval") -> tuple[list[Prediction], float | None]:
    """(one Prediction per record, accuracy: None for no records).

    loglik: TeacherLM's context (`eval_context`, MMLU's when `mmlu`), each choice's letter scored as
    a separately tokenized continuation, `score` = mean | sum of its tokens' log-probs. generate:
    greedy Fine-tune-CoT generation, answer parsed from the text. With `mesh`, the model must already
    be placed on it (`init_from.resolve(...).build`, or `from_pretrained(..., mesh=, rules=)`); `batch_size` is global.
    `max_length` (default: the model's max_position_embeddings) bounds model positions; longer
    contexts are cut on the left and marked `truncated`.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; expected one of {MODES}")
    if score not in SCORES:
        raise ValueError(f"score={score!r}; expected one of {SCORES}")
    if not records:
        return [], None
    if mode == "generate":
        with _progress(len(records), desc) as progress:
            texts, predicted, truncated = generate_answers(
                model, tokenizer, records, batch_size=batch_size, max_new_tokens=max_new_tokens,
                max_length=max_length, mesh=mesh, rules=rules, progress=progress)
        predictions = [Prediction(r.id, [float(i == p) for i in range(len(r.choices))], p, r.answer, r.subject, t, g)
                       for r, p, t, g in zip(records, predicted, truncated, texts)]
        return predictions, accuracy(predictions)
    contexts, continuations = choice_tokens(tokenizer, records, mmlu=mmlu)
    rows = sum(1 if all(len(c) == 1 for c in conts) else len(conts) for conts in continuations)
    with _progress(rows, desc) as progress:
        result = loglik_choices(model, contexts, continuations, score=score, batch_size=batch_size,
                                max_length=max_length, mesh=mesh, rules=rules, progress=progress)
    predictions = [Prediction(r.id, s, p, r.answer, r.subject, t)
                   for r, s, p, t in zip(records, result.scores, result.predictions, result.truncated)]
    return predictions, accuracy(predictions)


def evaluate_tasks(model: nnx.Module, tokenizer, tasks: Sequence[str | Task], out_dir: str | os.PathLike, *,
                   max_examples: int = 0, data_dir: str | None = None, settings: dict[str, Any] | None = None,
                   **kwargs: Any) -> dict[str, Any]:
    """Evaluates each task (see teacherlm_jax/eval/tasks.py for names) and writes the report to
    `out_dir` (process 0 only; every process must call this). `max_examples` > 0 evaluates an evenly
    spaced subset, recorded in the metrics. `kwargs` go to `evaluate_records`. Returns the metrics. `out_dir`
    may be a cloud URL.

    The metrics' `throughput` (this process's, per task and in all: `eval.throughput`) holds the seconds spent
    evaluating, the programs obtained and their seconds by phase: the one part a rerun does not repeat."""
    out_dir = workdir_path(out_dir)
    mode = kwargs.get("mode", "loglik")
    metrics: dict[str, Any] = {
        "settings": {"model": "(in memory)", "mode": mode, "score": kwargs.get("score", "mean"),
                     "dtype": model.config.dtype, "max_examples": max_examples, **(settings or {})},
        "tasks": {},
    }
    costs: dict[str, WorkCost] = {}
    for task in resolve_tasks(tasks):
        records = load_task(task, data_dir=data_dir)
        chosen = subset(records, max_examples)
        if len(chosen) < len(records):
            log.warning("%s: evaluating %d of %d questions (max_examples=%d): a smoke-run figure, not the "
                        "task's accuracy", task.name, len(chosen), len(records), max_examples)
        meter = CostMeter()
        predictions, acc = evaluate_records(model, tokenizer, chosen, mmlu=task.mmlu, desc=task.name, **kwargs)
        costs[task.name] = meter.cost()
        m = metrics["tasks"][task.name] = task_metrics(
            predictions, dataset=task.label, available=len(records), max_examples=max_examples, mmlu=task.mmlu,
            generative=mode == "generate")
        log.info("%s: accuracy %.4f on %d of %d questions (%d contexts cut to fit)", task.name, acc, m["count"],
                 m["available"], m["truncated"])
        if m["truncated"]:
            log.warning("%s: %d contexts were longer than max_length and lost their first tokens", task.name,
                        m["truncated"])
        log.info("%s: %s evaluating", task.name, costs[task.name])
        if jax.process_index() == 0:
            write_predictions(out_dir / task.name / "predictions.jsonl", predictions)
    total = sum(costs.values(), WorkCost())
    metrics["throughput"] = {**total.to_json(), "tasks": {name: cost.to_json() for name, cost in costs.items()}}
    log.info("tasks in all: %s evaluating", total)
    if jax.process_index() == 0:
        write_report(out_dir, metrics)
        log.info("wrote %s/metrics.json, results.md, accuracy.png", out_dir)
    return metrics


def check_finite_weights(model: nnx.Module, source: str) -> None:
    """Refuses a model with NaN/inf weights: its scores are NaN, yet an argmax over them still picks a
    choice, which reads as a plausible accuracy."""
    leaves = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    read = lambda flags: np.asarray(flags.addressable_data(0))  # replicated: every process reads its own
    # A NaN or inf makes its array's sum NaN or inf, so finite sums clear an array. Summing compiles and runs
    # far faster than an elementwise test of the whole model (benchmarks/eval.py times the job's start); only
    # arrays whose sums are not finite (NaN, inf, or finite values that overflow) are tested whole.
    sums = read(_finite_sums([x for _, x in leaves]))
    bad = [jax.tree_util.keystr(path) for (path, x), ok in zip(leaves, sums) if not ok and not read(_all_finite(x))]
    if bad:
        raise FloatingPointError(f"{source}: {len(bad)} of {len(leaves)} weight arrays hold NaN or inf (first: "
                                 f"{', '.join(bad[:3])}); the checkpoint comes from a diverged or broken run")


@jax.jit
def _finite_sums(xs: list[jax.Array]) -> jax.Array:
    return jnp.stack([jnp.isfinite(jnp.sum(x, dtype=jnp.float32)) for x in xs])


@jax.jit
def _all_finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(x))


def validate(config: ml_collections.ConfigDict, *,
             produced: Callable[[str], bool] = lambda spec: False) -> list[ConfigError]:
    """Every problem of an eval config, each naming its key (checked before a model loads). `produced(spec)`:
    a task file another job writes before this one runs (a pipeline step's output), not looked for."""
    problems = Problems(config)
    problems.choice("mode", MODES)
    problems.choice("score", SCORES)
    problems.integer("batch_size", 1)
    for key, minimum in (("max_examples", 0), ("max_length", 0), ("max_new_tokens", 1)):
        problems.integer(key, minimum)
    if not config.model.get("init_from"):
        problems.add("model.init_from", "required: a Hugging Face directory or hub id, or a training run's workdir")
    if isinstance(config.tasks, str):
        problems.add("tasks", "expected a tuple of task names or paths")
        return problems.errors
    own = [t for t in config.tasks if not produced(t)]
    if own or not config.tasks:
        try:
            resolve_tasks(own)
        except ValueError as e:  # its messages name config.tasks
            problems.errors.append(ConfigError(str(e)))
    return problems.errors


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Job entry: load the model onto the config's mesh, evaluate `config.tasks`, write WORKDIR/eval/."""
    initialize_distributed(config.get("distributed"))
    raise_all(validate(config))  # a bad name or number fails before a model loads
    tasks = resolve_tasks(list(config.tasks))
    mesh, rules = mesh_from_config(config)
    source = resolve(config.model)
    tokenizer_path = source.tokenizer_path(config.get("tokenizer"))
    tokenizer = source.load_tokenizer(tokenizer_path)
    model = source.build(mesh, rules, seed=config.seed)
    check_finite_weights(model, source.init_from)
    write_config(config, workdir)
    out = workdir_path(workdir) / "eval"
    metrics = evaluate_tasks(
        model, tokenizer, tasks, out, max_examples=int(config.max_examples),
        data_dir=config.get("data_dir"), mode=config.mode, score=config.score, batch_size=int(config.batch_size),
        max_length=int(config.max_length) or None, max_new_tokens=int(config.max_new_tokens), mesh=mesh,
        rules=rules, settings={"model": source.init_from, "tokenizer": tokenizer_path,
                               "batch_size": int(config.batch_size),
                               "max_length": int(config.max_length) or model.config.max_position_embeddings})
    report_summary("eval", {name: "n/a" if m["accuracy"] is None else f"accuracy {100 * m['accuracy']:.1f}%"
                            for name, m in metrics["tasks"].items()},
                   {"report": out / "results.md", "metrics": out / "metrics.json"})
