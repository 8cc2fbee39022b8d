"""The training job: `run(config, workdir)` for `main`, `train(config, workdir)` for code that chains
stages (it returns the Hugging Face export of the final params).

Rerunning the same command after any stop (SIGKILL included) resumes from the latest checkpoint and
continues exactly: same batches, same losses; metrics.jsonl is cut back to the restored step.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from teacherlm_jax.config_checks import raise_all
from teacherlm_jax.console import duration, report_summary
from teacherlm_jax.data.decontamination import REPORT as DECONTAMINATION
from teacherlm_jax.data.decontamination import write_report as write_decontamination
from teacherlm_jax.errors import ConfigError
from teacherlm_jax.init_from import HF_EXPORT, ResolvedModel, resolve
from teacherlm_jax.models.hf import save_pretrained
from teacherlm_jax.paths import local_dir, read_text, workdir_path
from teacherlm_jax.run_config import write_config
from teacherlm_jax.sharding import (abstract_like, data_parallel_size, initialize_distributed, mesh_from_config,
                                    param_shardings)
from teacherlm_jax.tokenizers import load_tokenizer
from teacherlm_jax.train.checkpoint import Checkpointer, SigtermFlag
from teacherlm_jax.train.checks import validate
from teacherlm_jax.train.data import BatchIterator, global_batch, make_train_data
from teacherlm_jax.train.metrics import MetricsWriter, StepTimer, flops_per_token, headline, plot_loss_curve
from teacherlm_jax.train.optim import decay_mask, make_optimizer
from teacherlm_jax.train.run_files import check_resumable, save_tokenizer, write_model_config
from teacherlm_jax.train.step import (
    FINITE, LOSS_CHUNK, TrainState, init_train_state, make_eval_step, make_train_step, state_shardings,
)
from teacherlm_jax.workdir_lock import workdir_lock

log = logging.getLogger(__name__)

DATA_REPORT = "data_report.json"  # what the records source read: datasets, examples, texts each filter dropped


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Job entry (`config.job = "train"`); exits with 143 when a preemption notice stopped the run, else ends
    with the summary line."""
    start = time.perf_counter()
    if train(config, workdir) is None:
        raise SystemExit(143)
    report_summary("train", *train_summary(config, workdir_path(workdir), time.perf_counter() - start))


def train_summary(config: ml_collections.ConfigDict, workdir: epath.Path,
                  seconds: float) -> tuple[dict[str, str], dict[str, epath.Path]]:
    """(headline numbers, outputs) of a finished run, from its metrics.jsonl (process 0's; other processes
    get the outputs only)."""
    metrics = workdir / "metrics.jsonl"
    records = [json.loads(line) for line in read_text(metrics).splitlines() if line.strip()] \
        if metrics.exists() else []
    last = {k: v for r in records for k, v in r.items()}  # each key's latest value
    numbers = {"": f"{last.get('step', config.num_train_steps)} steps", "in": duration(seconds), **headline(last)}
    outputs = {"checkpoints": workdir / "checkpoints", "metrics": metrics}
    if config.get("export_hf", True):
        outputs[HF_EXPORT] = workdir / HF_EXPORT
    if config.get("plot", True):
        outputs["loss curve"] = workdir / "loss_curve.png"
    return numbers, outputs


def check_seq_len(config: ml_collections.ConfigDict, max_positions: int) -> None:
    """An explicit config.data.seq_len must fit the model's positions (OPT's are learned: there is no embedding
    past them; BLOOM's ALiBi has none, but its max_position_embeddings is the length it was trained at and our
    model refuses longer input). Unset (the records source only), it is derived from the data, capped there."""
    seq_len = config.data.seq_len
    if seq_len is not None and not 1 <= seq_len <= max_positions:
        raise ConfigError(f"config.data.seq_len={seq_len} must be in [1, {max_positions}], the model's "
                          f"max_position_embeddings (config.model); with data.source 'records', unset it to take the "
                          f"longest example's length")


def loss_chunk(config: ml_collections.ConfigDict) -> int:
    """config.loss_chunk: positions the loss's head runs on at once (configs written before it: the default)."""
    return int(config.get("loss_chunk", LOSS_CHUNK))


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """Everything the train step needs, built from config without allocating any parameter; shared by
    `train` and the ahead-of-time check (`teacherlm_jax.compile.job`)."""

    model: ResolvedModel  # config.model resolved (teacherlm_jax.init_from)
    abstract: nnx.Module
    graphdef: nnx.GraphDef
    abstract_params: dict
    param_shardings: dict
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    abstract_opt: optax.OptState
    shardings: TrainState

    def abstract_state(self) -> TrainState:
        """The train state as sharded ShapeDtypeStructs: a restore target, or a compile argument."""
        return TrainState(jax.ShapeDtypeStruct((), jnp.int32, sharding=self.shardings.step),
                          abstract_like(self.abstract_params, self.param_shardings),
                          abstract_like(self.abstract_opt, self.shardings.opt_state))


def train_setup(config: ml_collections.ConfigDict, mesh: Mesh, rules: tuple, *, weights: bool = True,
                model: ResolvedModel | None = None) -> TrainSetup:
    """Model shapes, optimizer and shardings for `config` on `mesh`; `weights=False`: shapes only (`resolve`).
    `model`: config.model already resolved (the compile job's variants of it)."""
    model = model or resolve(config.model, weights=weights)
    abstract = model.abstract(config.seed)
    graphdef, abstract_state = nnx.split(abstract, nnx.Param)
    abstract_params = nnx.to_pure_dict(abstract_state)
    p_shardings = param_shardings(abstract, mesh, rules)
    tx, schedule = make_optimizer(config.optimizer, config.num_train_steps, decay_mask(abstract))
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    return TrainSetup(model, abstract, graphdef, abstract_params, p_shardings, tx, schedule, abstract_opt,
                      state_shardings(p_shardings, abstract_opt, mesh))


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> epath.Path | None:
    """Trains to `config.num_train_steps` (resuming from WORKDIR/checkpoints if any). WORKDIR may be a
    cloud URL (gs://...): every output goes there (`teacherlm_jax.paths`).

    Returns WORKDIR/hf_final (a Hugging Face directory) when config.export_hf, else WORKDIR; None when
    stopped early by a preemption notice (a checkpoint was saved first). Another training on WORKDIR
    (each process locks its own name) refuses at once: see `workdir_lock`. A non-finite loss or weights
    (checked at each logged step, each eval and before each save) stop it with NonFiniteError, nothing of them saved.
    """
    initialize_distributed(config.get("distributed"))
    mesh, rules = mesh_from_config(config)
    raise_all(validate(config, dp_size=data_parallel_size(mesh, rules), process_count=jax.process_count()))
    # Everything the config decides is checked, the model resolved and the data read before the workdir is
    # touched: a refused run leaves it as it found it.
    setup = train_setup(config, mesh, rules)
    model_cfg = setup.abstract.config
    check_seq_len(config, model_cfg.max_position_embeddings)
    tokenizer_path = config.get("tokenizer") or setup.model.tokenizer  # explicit, else init_from's
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path else None
    data_report: dict = {}
    data = make_train_data(config, tokenizer, jax.process_index(), jax.process_count(), report=data_report,
                           max_positions=model_cfg.max_position_embeddings)
    if not isinstance(data, BatchIterator):
        raise TypeError(f"make_train_data returned {type(data).__name__}, which lacks get_state/set_state/seq_len")
    with workdir_lock(workdir, f"train-{jax.process_index()}"):
        return _train(config, workdir_path(workdir), mesh, rules, setup, tokenizer, data, data_report)


def _train(config: ml_collections.ConfigDict, workdir: epath.Path, mesh: Mesh, rules: tuple, setup: TrainSetup,
           tokenizer, data: BatchIterator, data_report: dict) -> epath.Path | None:
    abstract, graphdef, abstract_params = setup.abstract, setup.graphdef, setup.abstract_params
    p_shardings, tx, schedule, shardings = setup.param_shardings, setup.tx, setup.schedule, setup.shardings
    model_cfg = abstract.config
    if (workdir / "checkpoints").exists():  # a resume of another model is refused before anything is written
        check_resumable(abstract, workdir)
    write_config(config, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        save_tokenizer(tokenizer, workdir)
    if data_report and jax.process_index() == 0:
        if DECONTAMINATION in data_report:  # config.data.decontaminate: its own report files
            write_decontamination(data_report.pop(DECONTAMINATION), workdir)
        (workdir / DATA_REPORT).write_text(json.dumps(data_report, indent=2) + "\n")
    seq_len = data.seq_len
    if config.data.seq_len != seq_len:  # derived from the data: the eval stream pads to the same length
        config = config.copy_and_resolve_references()
        config.data.seq_len = seq_len
    ckpt = Checkpointer(workdir, every=config.checkpoint_every, keep=config.keep_checkpoints,
                        use_async=config.get("async_checkpoints", True))
    restored = ckpt.restore_latest(setup.abstract_state())  # the newest readable one, else the error says why
    if restored:  # our own checkpoint wins over init_from: this is a restart (checked resumable above)
        start, state, data_state = restored
        data.set_state(data_state)
        log.info("resumed from %s/checkpoints step %d", workdir, start)
    else:
        start = 0
        state = init_train_state(setup.model.load_params(abstract, mesh, rules, config.seed), tx, shardings)
    if jax.process_index() == 0:
        write_model_config(abstract, workdir)

    train_step = make_train_step(graphdef, tx, schedule, mesh, rules, shardings, config.grad_accum_steps,
                                 loss_chunk(config))
    eval_step = make_eval_step(graphdef, mesh, rules, p_shardings, loss_chunk(config))
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params))
    tokens_per_step = config.batch_size * seq_len
    timer = StepTimer(tokens_per_step, tokens_per_step * flops_per_token(
        num_params, _layers(model_cfg), model_cfg.hidden_size, seq_len))

    def evaluate(params) -> dict[str, float]:
        it = make_train_data(config, tokenizer, jax.process_index(), jax.process_count(), split="eval")
        totals = None
        for _ in range(config.eval_steps):
            batch = global_batch(_checked(next(it), model_cfg.vocab_size), mesh, rules, config.batch_size, seq_len)
            sums = eval_step(params, batch)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        totals = jax.device_get(totals)
        tokens = max(float(totals["tokens"]), 1.0)
        return {"eval_loss": float(totals["loss_sum"]) / tokens,
                "eval_next_token_accuracy": float(totals["correct"]) / tokens}

    writer = MetricsWriter(workdir, start_step=start, total_steps=config.num_train_steps)
    sigterm = SigtermFlag()
    checked = start  # the last step whose loss and params were seen finite (a restored step was, when saved)
    try:
        for step in range(start, config.num_train_steps):
            batch = global_batch(_checked(next(data), model_cfg.vocab_size), mesh, rules, config.batch_size, seq_len)
            state, metrics = train_step(state, batch)
            done = step + 1
            if step == start:  # the first step compiles: time from its end
                jax.block_until_ready(metrics)
                timer.mark(done)
            record: dict[str, float] = {}
            last = done == config.num_train_steps
            if done % config.log_every == 0 or last:
                record.update(finite_metrics(metrics, done, checked, workdir), **timer.measure(done))
                checked = done
            if config.eval_every and (done % config.eval_every == 0 or last):
                if checked != done:  # weights seen finite before their eval is judged
                    finite_metrics(metrics, done, checked, workdir)
                    checked = done
                record.update(finite_eval(evaluate(state.params), done, workdir))
            if record:
                writer.write(done, record)
                timer.mark(done)  # eval and logging are not training time
            preempted = sigterm.raised or ckpt.reached_preemption(done)
            if preempted or last or ckpt.should_save(done):
                if checked != done:  # only checked states are saved (and so exported)
                    finite_metrics(metrics, done, checked, workdir)
                    checked = done
                ckpt.save(done, state, data.get_state())
            if preempted:
                log.warning("preempted: saved step %d in %s; rerun the same command to continue", done, workdir)
                return None
    finally:
        ckpt.close()
        writer.close()
        sigterm.restore()

    if config.get("plot", True):
        plot_loss_curve(workdir)
    if not config.get("export_hf", True):
        return workdir
    return export_hf(nnx.merge(graphdef, state.params), workdir / HF_EXPORT, tokenizer)


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or weights."""


def finite_metrics(metrics: dict, step: int, checked: int, workdir: epath.Path) -> dict[str, float]:
    """The train step's metrics as floats (less FINITE), fetched where the loop fetches them anyway; raises
    NonFiniteError, before anything of `step` is logged, saved or exported, when they are not finite."""
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not values.pop(FINITE):
        raise _diverged(step, f"non-finite loss or weights (loss {values['loss']}, grad_norm {values['grad_norm']}, "
                              f"learning_rate {values['learning_rate']}); step {checked} was the last seen finite",
                        workdir)
    return values


def finite_eval(values: dict[str, float], step: int, workdir: epath.Path) -> dict[str, float]:
    """`values` (eval metrics) when finite; else NonFiniteError before they are logged or step saved: finite
    weights whose held-out loss is not finite have diverged as surely as a non-finite training loss."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise _diverged(step, f"evaluation gave non-finite {bad} (the weights are finite)", workdir)
    return values


def _diverged(step: int, cause: str, workdir: epath.Path) -> NonFiniteError:
    return NonFiniteError(f"training diverged at step {step}: {cause}. Nothing of step {step} was saved: "
                          f"{workdir}/checkpoints keeps the last good checkpoint. Lower config.optimizer.learning_rate "
                          f"(or raise warmup_steps / grad clipping) and rerun")


def export_hf(model: nnx.Module, out_dir: str | os.PathLike, tokenizer=None) -> epath.Path:
    """`save_pretrained` (collective: every process calls it) plus the tokenizer, if any; to a cloud URL
    through a local folder (both writers take local paths only). One that fails leaves no config.json, which
    marks an export complete."""
    out = workdir_path(out_dir)
    try:
        with local_dir(out) as local:
            save_pretrained(model, local)
            if tokenizer is not None and jax.process_index() == 0:
                tokenizer.save_pretrained(str(local))
    except BaseException:  # a full disk: an export cut short must not pass for complete (`complete_export`)
        if jax.process_index() == 0:
            (out / "config.json").unlink(missing_ok=True)
        raise
    log.info("exported Hugging Face checkpoint to %s", out)
    return out


def _checked(batch: dict[str, np.ndarray], vocab_size: int) -> dict[str, np.ndarray]:
    """Out-of-range ids would be clipped silently by the embedding lookup; refuse them instead."""
    top = int(np.max(batch["input_ids"]))
    if top >= vocab_size or int(np.min(batch["input_ids"])) < 0:
        raise ValueError(f"data batch has token id {top} outside the model's vocabulary [0, {vocab_size}); "
                         f"check config.data / config.tokenizer against config.model")
    return batch


def _layers(model_config) -> int:
    return getattr(model_config, "n_layer", None) or model_config.num_hidden_layers
