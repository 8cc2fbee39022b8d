"""Models from config: `build_model(config.model, mesh, rules)` for any job (train, eval, augment).

`config.model.init_from` names a Hugging Face directory / hub id, or a training run's workdir (its
latest checkpoint's params); without it the model is new, its architecture given by the other keys.
Parameters are created directly with their shardings, never whole on one device first.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from teacherlm_jax.errors import ConfigError
from teacherlm_jax.models.hf import FAMILIES, ModelFamily, from_pretrained, read_hf_config, resolve_checkpoint_dir
from teacherlm_jax.models.param_map import RUN_FIELDS
from teacherlm_jax.paths import is_url, workdir_path, write_atomic
from teacherlm_jax.sharding import LogicalRules, param_shardings
from teacherlm_jax.train.checkpoint import abstract_like, restore_params

log = logging.getLogger(__name__)

RUN_KEYS = RUN_FIELDS  # how to run, not what the model is
MODEL_CONFIG = "model_config.json"  # a run's architecture, HF config.json style, for init_from=run dir


def is_run_dir(path: str | os.PathLike) -> bool:
    """A training run's workdir (local or a cloud URL), as opposed to a Hugging Face directory or hub id."""
    if not is_url(path) and not os.path.isdir(os.path.expanduser(os.fspath(path))):
        return False  # e.g. a hub id
    run = workdir_path(path)
    return (run / MODEL_CONFIG).is_file() and (run / "checkpoints").is_dir()


def model_config(model: dict[str, Any]) -> tuple[ModelFamily, Any]:
    """(family, e.g. BloomConfig) for a `config.model` section. `family` may be None with `init_from`
    (taken from the checkpoint); architecture keys given alongside `init_from` must agree with it."""
    model = dict(model)
    init_from, family_name = model.get("init_from"), model.get("family")
    hf = None
    if init_from:
        hf = json.loads((workdir_path(init_from) / MODEL_CONFIG).read_text()) if is_run_dir(init_from) else \
            read_hf_config(resolve_checkpoint_dir(init_from))
        if family_name not in (None, hf.get("model_type")):
            raise ConfigError(f"config.model.init_from={init_from!r} holds a {hf.get('model_type')!r} model, "
                              f"but config.model.family={family_name!r}")
        family_name = hf.get("model_type")
    if family_name not in FAMILIES:
        raise ConfigError(f"config.model.family={family_name!r}; known: {sorted(FAMILIES)}")
    family = FAMILIES[family_name]
    run = {k: model[k] for k in RUN_KEYS if model.get(k) is not None}
    arch = {k: v for k, v in model.items() if k not in (*RUN_KEYS, "init_from", "family")}
    fields = {f.name for f in dataclasses.fields(family.config_cls)}
    unknown = sorted(set(arch) - fields)
    if unknown:
        raise ConfigError(f"config.model: unknown keys {unknown} for {family_name}; known: {sorted(fields)}")
    if hf is None:
        try:
            return family, family.config_cls(**arch, **run)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config.model: {e}") from e
    config = family.config_cls.from_hf_dict(hf, **run)
    for key, value in arch.items():
        if getattr(config, key) != value:
            raise ConfigError(f"config.model.{key}={value!r} disagrees with {init_from} "
                              f"({key}={getattr(config, key)!r}); drop the key or fix it")
    return family, config


def abstract_model(model: dict[str, Any], seed: int = 0) -> nnx.Module:
    """The model with shapes only (no memory), for shardings and restore targets."""
    family, config = model_config(model)
    return nnx.eval_shape(lambda: family.model_cls(config, rngs=nnx.Rngs(seed)))


def load_params(model: dict[str, Any], abstract: nnx.Module, mesh: Mesh, rules: LogicalRules,
                seed: int = 0) -> dict:
    """Sharded params (nested like `nnx.to_pure_dict`): fresh from `seed`, or from `init_from`."""
    shardings = param_shardings(abstract, mesh, rules)
    init_from = model.get("init_from")
    if not init_from:
        family, config = model_config(model)
        fresh = jax.jit(lambda: nnx.to_pure_dict(nnx.state(family.model_cls(config, rngs=nnx.Rngs(seed)),
                                                           nnx.Param)), out_shardings=shardings)
        return fresh()
    target = abstract_like(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)), shardings)
    if is_run_dir(init_from):
        return restore_params(init_from, target)
    c = abstract.config
    loaded = from_pretrained(init_from, mesh=mesh, rules=rules, **{k: getattr(c, k) for k in RUN_KEYS})
    return nnx.to_pure_dict(nnx.state(loaded, nnx.Param))


def build_model(model: dict[str, Any], mesh: Mesh, rules: LogicalRules, *, seed: int = 0) -> nnx.Module:
    """A ready model for `config.model`, its parameters sharded over `mesh` by `rules`."""
    abstract = abstract_model(model, seed)
    graphdef, _ = nnx.split(abstract, nnx.Param)
    return nnx.merge(graphdef, load_params(model, abstract, mesh, rules, seed))


def check_resumable(model: nnx.Module, workdir: str | os.PathLike) -> None:
    """Refuses to resume `workdir` with another architecture, naming the fields that differ, before a
    restore would fail on a parameter's shape deep inside Orbax."""
    path = workdir_path(workdir) / MODEL_CONFIG
    if not path.is_file():  # a run from before model configs were written: the restore checks shapes
        log.warning("%s is missing: cannot check config.model against the checkpoints in %s", path, workdir)
        return
    saved, ours = json.loads(path.read_text()), json.loads(json.dumps(model.config.to_hf_dict()))  # as saved
    diffs = [f"{k}: workdir {saved.get(k, '(unset)')!r}, config {ours.get(k, '(unset)')!r}"
             for k in sorted(set(saved) | set(ours)) if saved.get(k) != ours.get(k)]
    if diffs:
        raise ConfigError(f"config.model differs from the model of the run in {workdir} ({path}):\n  "
                          + "\n  ".join(diffs) + "\nresume with the run's model settings, or train this model in "
                          "another workdir")


def write_model_config(model: nnx.Module, workdir: str | os.PathLike) -> None:
    """Records the architecture in a run's workdir so that other runs can `init_from` it."""
    write_atomic(workdir_path(workdir) / MODEL_CONFIG, json.dumps(model.config.to_hf_dict(), indent=2) + "\n")
