"""Fail before the hours, not after: every step's config is checked before the first step runs.

Per step that will run: its job's own config checks (the job's `validate`: every number, range, name and mode
it checks when it starts, reported under the step's key), then its datasets exist, are readable and give
examples of the format it trains (a stage-3 `fundamentals` teacher on data with no fundamentals fails here, not after stages 1 and 2;
stage 2's `kind_ratios` naming a kind no dataset has fails too, see `data.training.pairs_by_dataset`);
its `init_from` and tokenizer resolve (a Hugging Face directory, a hub id, a run's workdir; a reference to
an earlier step is checked through that step's model); its sequence length fits the model's positions;
its evaluation tasks load. Every problem found is reported at once, each naming the step and its key.
Outputs of earlier steps (`@step/...`) do not exist yet and are not read.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import ml_collections

from teacherlm_jax.config_checks import under
from teacherlm_jax.errors import ConfigError
from teacherlm_jax.pipeline.plan import REFERENCE, Step, build_plan, split_reference

log = logging.getLogger(__name__)


def _is_ref(value: Any) -> bool:
    return isinstance(value, str) and bool(REFERENCE.match(value))


class _Checks:
    def __init__(self, steps: list[Step], full: bool):
        self.steps = {s.name: s for s in steps}
        self.full = full  # False: the jobs' own config checks only (no model, tokenizer or data read)
        self.problems: list[str] = []
        self._models: dict[str, Any] = {}

    def check(self, step: Step, key: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:  # every failure is reported, with where it came from
            self.problems.append(f"step {step.name}, config.{step.key}{'.' + key if key else ''}: "
                                 f"{type(e).__name__}: {e}")
            return None

    def model(self, step: Step, model: dict[str, Any]):
        """The architecture (e.g. BloomConfig) `model` resolves to; through the referenced step for `@step`."""
        from teacherlm_jax.init_from import resolve

        init_from = model.get("init_from")
        if _is_ref(init_from):
            source, _ = split_reference(REFERENCE.match(init_from).group(1), list(self.steps))
            upstream = self.steps[source]
            section = upstream.config.model if upstream.job == "train" else None
            return self.model(upstream, section.to_dict()) if section is not None else None
        key = repr(sorted(model.items(), key=str))
        if key not in self._models:
            self._models[key] = self.check(step, "model.init_from" if init_from else "model",
                                           lambda: resolve(model).config)
        return self._models[key]

    def tokenizer(self, step: Step, config: ml_collections.ConfigDict, model_key: str) -> None:
        """The tokenizer the step's job loads: config.tokenizer, else its init_from's (teacherlm_jax.init_from)."""
        from teacherlm_jax.init_from import resolve
        from teacherlm_jax.tokenizers import load_tokenizer

        explicit, init_from = config.get("tokenizer"), config[model_key].get("init_from")
        if _is_ref(explicit or init_from):
            return
        if not (explicit or init_from):
            self.problems.append(f"step {step.name}, config.{step.key}.tokenizer: no tokenizer, and no "
                                 f"{model_key}.init_from to take one from")
            return
        self.check(step, "tokenizer", lambda: load_tokenizer(explicit or resolve(
            config[model_key].to_dict(), key=f"config.{model_key}").tokenizer_path(None)))

    def validate(self, step: Step, problems: list[ConfigError]) -> None:
        """A job's own config problems (its `validate`), each under the step's key in the pipeline config."""
        self.problems += [f"step {step.name}, {message}" for message in under(problems, step.key)]


def _train(checks: _Checks, step: Step) -> None:
    import jax

    from teacherlm_jax.data.training import pairs_by_dataset
    from teacherlm_jax.sharding import data_parallel_size, mesh_from_config
    from teacherlm_jax.train.checks import validate

    config = step.config
    mesh = checks.check(step, "mesh", lambda: mesh_from_config(config))
    checks.validate(step, validate(config, dp_size=data_parallel_size(*mesh) if mesh else 1,
                                   process_count=jax.process_count()))
    if not checks.full:
        return
    arch = checks.model(step, config.model.to_dict())
    checks.tokenizer(step, config, "model")
    data = config.data
    if data.get("source") != "records":
        return
    own = tuple(d for d in data.datasets if not _is_ref(d))
    if own and len(own) == len(tuple(data.datasets)):  # a step's output is not there yet: checked when it runs
        checked = ml_collections.ConfigDict(data.to_dict())
        checks.check(step, "data.datasets", lambda: pairs_by_dataset(checked))
    elif not tuple(data.datasets):
        checks.problems.append(f"step {step.name}, config.{step.key}.data.datasets: empty")
    seq_len, limit = data.get("seq_len"), getattr(arch, "max_position_embeddings", None)
    if seq_len and limit and int(seq_len) > int(limit):
        checks.problems.append(f"step {step.name}, config.{step.key}.data.seq_len={seq_len}: longer than the "
                               f"model's {limit} positions (max_position_embeddings)")


def _each_readable(checks: _Checks, step: Step, key: str, specs, read: Callable[[str], list]) -> None:
    """Every spec of `specs` that is not an earlier step's output reads (`read`) to at least one record."""
    for spec in specs:
        if not _is_ref(spec):
            def load(spec=spec):
                if not read(spec):
                    raise ValueError(f"{spec}: no records")
            checks.check(step, key, load)


def _augment(checks: _Checks, step: Step) -> None:
    from teacherlm_jax.augment import read_settings, resolve_dataset
    from teacherlm_jax.data.registry import load_records

    config = step.config
    settings, _, problems = read_settings(config, produced=_is_ref)
    checks.validate(step, problems)
    if problems or not checks.full:
        return  # a dataset it cannot name is not read
    arch = checks.model(step, config.teacher.to_dict())
    limit = getattr(arch, "max_position_embeddings", None)
    if limit:
        checks.check(step, "sampling.max_new_tokens", lambda: settings.prompt_limit(limit))
    checks.tokenizer(step, config, "teacher")
    _each_readable(checks, step, "datasets", config.datasets, lambda spec: load_records(
        resolve_dataset(spec).source, resolve_dataset(spec).split, data_dir=config.get("data_dir")))


def _eval(checks: _Checks, step: Step) -> None:
    from teacherlm_jax.eval.job import validate
    from teacherlm_jax.eval.tasks import load_task, resolve_task

    config = step.config
    problems = validate(config, produced=_is_ref)
    checks.validate(step, problems)
    if problems or not checks.full:
        return
    checks.model(step, config.model.to_dict())
    checks.tokenizer(step, config, "model")
    _each_readable(checks, step, "tasks", config.tasks,
                   lambda spec: load_task(resolve_task(spec), data_dir=config.get("data_dir")))


CHECKS = {"train": _train, "augment": _augment, "eval": _eval}


def problems(steps: list[Step], to_run: set[str], *, full: bool = True) -> list[str]:
    """Every problem of the steps in `to_run`, each naming its step and key; `full=False`: the jobs' own
    config checks only (numbers, names, choices: nothing loaded)."""
    checks = _Checks(steps, full)
    for step in steps:
        if step.name in to_run and step.job in CHECKS:
            CHECKS[step.job](checks, step)
    return checks.problems


def preflight(steps: list[Step], to_run: set[str]) -> None:
    """Raises ConfigError listing every problem of the steps in `to_run` (those whose output is not reused)."""
    found = problems(steps, to_run)
    if found:
        raise ConfigError(f"the pipeline stopped before running anything: {len(found)} problem(s)\n  "
                          + "\n  ".join(found))
    log.info("preflight: %d steps to run checked", len(to_run))


def validate(config: ml_collections.ConfigDict) -> list[ConfigError]:
    """The pipeline config's problems that need nothing loaded: its plan, and each step's own config checks
    (the job's `validate`), each under the step's key. The run checks the rest (`preflight`)."""
    try:
        steps = build_plan(config)
    except ConfigError as e:
        return [e]
    return [ConfigError(p) for p in problems(steps, {s.name for s in steps}, full=False)]
