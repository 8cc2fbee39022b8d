"""`config.model.init_from` -> what a job needs: the model's family and config, its parameters sharded on a
mesh, and where its tokenizer loads from. Every job (train, eval, augment, compile, the lm-eval backend)
resolves models here, so a name means the same model, with the same tokenizer, in each of them.

`init_from` is one of:
- a Hugging Face directory, or a hub id (fetched through huggingface_hub); its tokenizer is its own;
- a training run's workdir (local or gs://; it holds `model_config.json` and `checkpoints/`): its complete
  `hf_final/` export when there is one and it reads, else its newest readable Orbax checkpoint; its tokenizer
  is the one the run trained with (`tokenizer/`, which the train job saves), else its export's;
- nothing: a new model from the architecture keys (`family`, sizes), seeded; it has no tokenizer.
With `weights=False` (the compile job: shapes only) a hub id of a published BLOOM size resolves to that
size's shape without any download.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from teacherlm_jax.errors import CheckpointError, ConfigError, fault_message, one_line
from teacherlm_jax.intact_checkpoint import restore_newest_intact
from teacherlm_jax.models.bloom import BLOOM_SHAPES, bloom_shape
from teacherlm_jax.models.hf import FAMILIES, ModelFamily, from_pretrained, read_hf_config, resolve_checkpoint_dir
from teacherlm_jax.models.param_map import RUN_FIELDS
from teacherlm_jax.paths import is_url, read_text, workdir_path
from teacherlm_jax.sharding import LogicalRules, abstract_like, param_shardings
from teacherlm_jax.tokenizers import load_tokenizer

log = logging.getLogger(__name__)

# A training run's workdir, as other jobs read it.
MODEL_CONFIG = "model_config.json"  # its architecture, HF config.json style
HF_EXPORT = "hf_final"  # its Hugging Face export, written when training ends
TOKENIZER = "tokenizer"  # the tokenizer it trained with


def is_run_dir(path: str | os.PathLike) -> bool:
    """A training run's workdir (local or a cloud URL), as opposed to a Hugging Face directory or hub id."""
    if not is_url(path) and not os.path.isdir(os.path.expanduser(os.fspath(path))):
        return False  # e.g. a hub id
    run = workdir_path(path)
    return (run / MODEL_CONFIG).is_file() and (run / "checkpoints").is_dir()


def complete_export(run_dir: str | os.PathLike) -> str | None:
    """The run's `hf_final/` once complete (its config.json and weights are both there), else None."""
    export = workdir_path(run_dir) / HF_EXPORT
    if not (export / "config.json").is_file():
        return None
    has_weights = any(export.glob("*.safetensors")) or any(export.glob("*.bin"))
    return os.fspath(export) if has_weights else None


def run_tokenizer(run_dir: str | os.PathLike) -> str | None:
    """Where the tokenizer a run trained with loads from: its `tokenizer/`, else its export's; None if neither."""
    for folder in (workdir_path(run_dir) / TOKENIZER, workdir_path(run_dir) / HF_EXPORT):
        if (folder / "tokenizer_config.json").is_file():
            return os.fspath(folder)
    return None


def restore_params(run_dir: str | os.PathLike, target: dict) -> dict:
    """Params only, from the newest Orbax checkpoint of a run that can be read (`intact_checkpoint`), placed like
    `target` (ShapeDtypeStructs)."""
    import orbax.checkpoint as ocp  # here, not at the top: jobs that load Hugging Face checkpoints skip its import

    folder = workdir_path(run_dir) / "checkpoints"
    manager = ocp.CheckpointManager(folder, item_names=("params",), options=ocp.CheckpointManagerOptions(read_only=True))
    found = restore_newest_intact(manager.all_steps(), lambda step: manager.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"], os.fspath(folder))
    manager.close()
    if found is None:
        raise CheckpointError(f"{run_dir}/checkpoints: no finished checkpoint to initialise from")
    step, params = found
    log.info("initialised params from %s step %d", run_dir, step)
    return params


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    """A `config.model` section resolved: build it (`build`), or its shapes (`abstract`) and then params."""
    family: ModelFamily
    config: Any  # e.g. BloomConfig, with config.model's run fields (dtype, scan_layers, ...)
    init_from: str | None  # where params load from: a HF directory / hub id, a run dir (Orbax), None (fresh)
    tokenizer: str | None  # where init_from's tokenizer loads from; None when it has none
    key: str = "config.model"

    @property
    def from_run(self) -> bool:
        return self.init_from is not None and is_run_dir(self.init_from)

    def abstract(self, seed: int = 0) -> nnx.Module:
        """The model with shapes only (no memory), for shardings and restore targets."""
        return nnx.eval_shape(lambda: self.family.model_cls(self.config, rngs=nnx.Rngs(seed)))

    def load_params(self, abstract: nnx.Module, mesh: Mesh, rules: LogicalRules, seed: int = 0) -> dict:
        """Params (nested like `nnx.to_pure_dict`) created sharded: fresh from `seed`, or from `init_from`."""
        shardings = param_shardings(abstract, mesh, rules)
        if self.init_from is None:
            fresh = jax.jit(lambda: nnx.to_pure_dict(nnx.state(
                self.family.model_cls(self.config, rngs=nnx.Rngs(seed)), nnx.Param)), out_shardings=shardings)
            return fresh()
        if self.from_run:
            return self._restore(self.init_from, abstract, shardings)
        try:
            loaded = from_pretrained(self.init_from, mesh=mesh, rules=rules,
                                     **{k: getattr(self.config, k) for k in RUN_FIELDS})
        except Exception as e:
            run = _run_of_export(self.init_from)
            if run is None or fault_message(e) is not None:
                raise
            log.warning("%s cannot be read (%s); initialising from the checkpoints of %s instead", self.init_from,
                        one_line(e), run)
            return self._restore(run, abstract, shardings)
        return nnx.to_pure_dict(nnx.state(loaded, nnx.Param))

    def _restore(self, run: str, abstract: nnx.Module, shardings: dict) -> dict:
        target = abstract_like(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)), shardings)
        try:
            return restore_params(run, target)
        except CheckpointError as e:
            raise ConfigError(f"{self.key}.init_from={self.init_from!r}: {e}") from e

    def build(self, mesh: Mesh, rules: LogicalRules, *, seed: int = 0) -> nnx.Module:
        """A ready model, its parameters sharded over `mesh` by `rules`."""
        abstract = self.abstract(seed)
        graphdef, _ = nnx.split(abstract, nnx.Param)
        return nnx.merge(graphdef, self.load_params(abstract, mesh, rules, seed))

    def tokenizer_path(self, explicit: str | None, key: str = "config.tokenizer") -> str:
        """`explicit` (config.tokenizer) when set, else init_from's tokenizer; a ConfigError naming `key` if neither."""
        if explicit:
            return explicit
        if self.tokenizer is not None:
            return self.tokenizer
        if self.init_from is None:
            raise ConfigError(f"{key} is required: {self.key} is a new model (no init_from), so it has no "
                              f"tokenizer of its own; set {key} (a Hugging Face directory or hub id, or builtin:bytes)")
        raise ConfigError(f"{key} is required: {self.key}.init_from={self.init_from!r} is a training run that "
                          f"saved no tokenizer ({TOKENIZER}/ or {HF_EXPORT}/); set {key}")

    def load_tokenizer(self, explicit: str | None, key: str = "config.tokenizer") -> Any:
        """The tokenizer at `tokenizer_path`, refused when it has more tokens than the model's vocabulary."""
        path = self.tokenizer_path(explicit, key)
        tokenizer = load_tokenizer(path)
        if len(tokenizer) > self.config.vocab_size:
            raise ConfigError(f"{key}: {path} has {len(tokenizer)} tokens but the vocabulary of {self.key} is "
                              f"{self.config.vocab_size}: they do not belong together")
        return tokenizer


def resolve(model: Mapping[str, Any], *, key: str = "config.model", weights: bool = True) -> ResolvedModel:
    """`model` (a `config.model` section: init_from, family, architecture and run keys) resolved; architecture
    keys given beside `init_from` must agree with it. Errors are ConfigErrors naming `key`."""
    model = dict(model)
    init_from, family_name = model.get("init_from") or None, model.get("family")
    hf, tokenizer = None, None
    if init_from is not None:
        init_from = os.fspath(init_from)
        if not weights and published_bloom(init_from):
            return resolve({**model, **_agreeing(model, bloom_shape(init_from), init_from, key),
                            "init_from": None, "family": "bloom"}, key=key)
        try:
            hf, init_from, tokenizer = _read_init_from(init_from)
        except (CheckpointError, OSError, ValueError) as e:
            raise ConfigError(f"{key}.init_from={model['init_from']!r}: {e}") from e
        if family_name not in (None, hf.get("model_type")):
            raise ConfigError(f"{key}.init_from={init_from!r} holds a {hf.get('model_type')!r} model, "
                              f"but {key}.family={family_name!r}")
        family_name = hf.get("model_type")
    if family_name not in FAMILIES:
        raise ConfigError(f"{key}.family={family_name!r}; known: {sorted(FAMILIES)}")
    family = FAMILIES[family_name]
    run = {k: model[k] for k in RUN_FIELDS if model.get(k) is not None}
    arch = {k: v for k, v in model.items() if k not in (*RUN_FIELDS, "init_from", "family")}
    fields = {f.name for f in dataclasses.fields(family.config_cls)}
    unknown = sorted(set(arch) - fields)
    if unknown:
        raise ConfigError(f"{key}: unknown keys {unknown} for {family_name}; known: {sorted(fields)}")
    if hf is None:
        try:
            return ResolvedModel(family, family.config_cls(**arch, **run), None, None, key)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}: {e}") from e
    config = family.config_cls.from_hf_dict(hf, **run)
    _agreeing(arch, {k: getattr(config, k) for k in arch}, init_from, key)
    return ResolvedModel(family, config, init_from, tokenizer, key)


def _read_init_from(init_from: str) -> tuple[dict, str, str | None]:
    """(HF-style config dict, where params load from, where the tokenizer loads from) of an init_from."""
    if is_run_dir(init_from):
        export = complete_export(init_from)
        tokenizer = run_tokenizer(init_from)
        if export is not None:
            try:
                return read_hf_config(workdir_path(export)), export, tokenizer
            except (OSError, ValueError) as e:
                if fault_message(e) is not None:  # a full disk or a failing store: not a damaged export
                    raise
                log.warning("%s cannot be read (%s); initialising from the run's checkpoints instead", export,
                            one_line(e))
        return json.loads(read_text(workdir_path(init_from) / MODEL_CONFIG)), init_from, tokenizer
    return read_hf_config(resolve_checkpoint_dir(init_from)), init_from, init_from


def _run_of_export(path: str) -> str | None:
    """The training run whose `hf_final/` export `path` is, if it is one."""
    parent, name = os.path.split(os.fspath(path).rstrip("/"))
    return parent if name == HF_EXPORT and is_run_dir(parent) else None


def published_bloom(init_from: str) -> bool:
    """Whether `init_from` is a BLOOM hub id whose shape is published (`bloom_shape`): no download needed."""
    name = init_from.removeprefix("bigscience/")
    return init_from.startswith("bigscience/") and name in BLOOM_SHAPES and not os.path.exists(init_from)


def _agreeing(given: Mapping[str, Any], actual: Mapping[str, Any], init_from: str, key: str) -> dict[str, Any]:
    """`actual`, once every architecture key in `given` that it names agrees with it."""
    for name, value in actual.items():
        if given.get(name) is not None and given[name] != value:
            raise ConfigError(f"{key}.{name}={given[name]!r} disagrees with {init_from} ({name}={value!r}); "
                              f"drop the key or fix it")
    return dict(actual)
