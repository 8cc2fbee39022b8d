"""Hugging Face checkpoints <-> our NNX models: `from_pretrained`, `save_pretrained` (tokenizers: teacherlm_jax.tokenizers).

Import streams tensor by tensor: each parameter is built with `jax.make_array_from_callback`, which
reads only the slices each local device holds, so a checkpoint is never held twice in host memory
and a sharded model is placed directly on its mesh.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding

from teacherlm_jax.errors import CheckpointError
from teacherlm_jax.models import bloom, opt
from teacherlm_jax.models.layers import resolve_dtype
from teacherlm_jax.models.param_map import TensorSpec
from teacherlm_jax.models.tensor_files import TensorSource, write_safetensors
from teacherlm_jax.paths import is_url, local_copy, read_text
from teacherlm_jax.sharding import LogicalRules, logical_to_spec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    config_cls: type
    model_cls: type
    tensor_specs: Callable[[Any], list[TensorSpec]]
    base_prefix: str  # where HF's *ForCausalLM keeps the base model's tensors
    architecture: str


FAMILIES: dict[str, ModelFamily] = {
    "bloom": ModelFamily(bloom.BloomConfig, bloom.Bloom, bloom.hf_tensor_specs, "transformer.", "BloomForCausalLM"),
    "opt": ModelFamily(opt.OPTConfig, opt.OPT, opt.hf_tensor_specs, "model.", "OPTForCausalLM"),
}


def family_of(model_or_config) -> ModelFamily:
    model_type = getattr(model_or_config, "model_type", None) or model_or_config.config.model_type
    return FAMILIES[model_type]


def resolve_checkpoint_dir(path_or_hub_id: str | os.PathLike) -> Path:
    """A local directory as is; a cloud URL (gs://) copied into a local cache (`paths.local_copy`: weights are
    memory-mapped, tokenizers read local files); anything else is a hub id fetched through huggingface_hub, or,
    when the hub cannot be reached (offline, HF_HUB_OFFLINE=1), its snapshot in the local hub cache."""
    if is_url(path_or_hub_id):
        try:
            return local_copy(path_or_hub_id)
        except FileNotFoundError as e:
            raise CheckpointError(f"{path_or_hub_id}: no checkpoint there ({e})") from None
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        return path
    name = str(path_or_hub_id)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CheckpointError(f"{name}: no such checkpoint directory")
    import huggingface_hub

    try:
        # Repositories often ship both formats: fetch safetensors when there are any, else .bin.
        files = huggingface_hub.list_repo_files(name)
        weights = "*.safetensors" if any(f.endswith(".safetensors") for f in files) else "*.bin"
        return Path(huggingface_hub.snapshot_download(name, allow_patterns=["*.json", "*.txt", "*.model", weights]))
    except Exception as e:  # network, auth and missing-repo errors all end here
        try:
            cached = Path(huggingface_hub.snapshot_download(name, local_files_only=True))
        except Exception:
            raise CheckpointError(f"{name}: not a local directory, and the hub download failed: {e}") from e
        log.warning("%s: the hub is out of reach (%s); using its cached snapshot %s", name, e, cached)
        return cached


def read_hf_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.exists():
        raise CheckpointError(f"{path}: missing (every Hugging Face checkpoint has a config.json)")
    try:
        config = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(f"{path}: unknown model_type {model_type!r}; supported: {sorted(FAMILIES)}")
    return config


def from_pretrained(
    path_or_hub_id: str | os.PathLike,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    mesh: Mesh | None = None,
    rules: LogicalRules | None = None,
    **config_overrides: Any,
) -> nnx.Module:
    """Loads a Hugging Face causal LM (BLOOM or OPT, by `model_type`) as an NNX model.

    `config_overrides` set run-time fields such as `scan_layers` or `remat_policy`. With `mesh` and
    `rules`, parameters are created sharded by their logical axis names.
    """
    directory = resolve_checkpoint_dir(path_or_hub_id)
    hf_config = read_hf_config(directory)
    family = FAMILIES[hf_config["model_type"]]
    config = family.config_cls.from_hf_dict(hf_config, dtype=dtype, param_dtype=param_dtype, **config_overrides)
    abstract = nnx.eval_shape(lambda: family.model_cls(config, rngs=nnx.Rngs(0)))
    source = TensorSource(directory)
    prefix = _detect_prefix(source, family, family.tensor_specs(config))
    specs = {spec.path: spec for spec in family.tensor_specs(config)}
    state = nnx.state(abstract)
    used: set[str] = set()
    for path, variable in nnx.to_flat_state(state):
        spec, layer = _spec_for(path, specs)
        array = _load_parameter(source, prefix, spec, layer, variable, _sharding(variable, mesh, rules), used)
        variable.set_value(array)
    nnx.update(abstract, state)
    unused = sorted(set(source.names()) - used - {f"{prefix}lm_head.weight", "lm_head.weight"})
    if unused:
        log.warning("%s: %d checkpoint tensors are not used by %s: %s", directory, len(unused),
                    family.architecture, unused[:10])
    return abstract


def _detect_prefix(source: TensorSource, family: ModelFamily, specs: list[TensorSpec]) -> str:
    probe = next(s for s in specs if s.in_base and not s.layered).hf_key
    for prefix in (family.base_prefix, ""):
        if prefix + probe in source:
            return prefix
    raise CheckpointError(f"{source.directory}: no {family.architecture} tensors found "
                          f"(looked for {family.base_prefix + probe!r} and {probe!r})")


def _spec_for(path: tuple, specs: dict[tuple, TensorSpec]) -> tuple[TensorSpec, int | None]:
    if path in specs:
        return specs[path], None
    # Listed (unscanned) layers carry their index in the path: ('h', 3, 'dense', 'kernel').
    for i, key in enumerate(path):
        if isinstance(key, int):
            return specs[path[:i] + path[i + 1:]], key
    raise KeyError(f"no checkpoint tensor is mapped to parameter {path}")


def _sharding(variable, mesh: Mesh | None, rules: LogicalRules | None):
    if mesh is None:
        return SingleDeviceSharding(jax.local_devices()[0])
    names = variable.get_metadata().get("out_sharding") or (None,) * len(variable.get_value().shape)
    return NamedSharding(mesh, logical_to_spec(names, rules or ()))


def _load_parameter(source: TensorSource, prefix: str, spec: TensorSpec, layer: int | None, variable,
                    sharding, used: set[str]) -> jax.Array:
    target = variable.get_value()
    key_prefix = prefix if spec.in_base else ""
    stacked = spec.layered and layer is None
    per_layer_shape = target.shape[1:] if stacked else target.shape

    @functools.lru_cache(maxsize=2)
    def tensor(i: int | None) -> np.ndarray:
        name = key_prefix + spec.hf_key.format(i=i)
        used.add(name)
        raw = source.get(name)
        try:
            converted = spec.to_ours(raw)
        except ValueError:  # a reshape that cannot fit
            converted = None
        if converted is None or converted.shape != per_layer_shape:
            raise CheckpointError(f"{source.directory}: tensor {name!r} has shape {tuple(raw.shape)}, "
                                  f"which does not fit parameter {'/'.join(map(str, spec.path))} "
                                  f"of shape {per_layer_shape}")
        return np.asarray(converted, dtype=target.dtype)

    def shard(index: tuple[slice, ...]) -> np.ndarray:
        if not stacked:
            # A copy, not a view of the memory-mapped file: on CPU jax can alias a host array, and training
            # on parameters that alias a mapped file ran slower per step (benchmarks/train_step.py).
            return np.array(tensor(layer)[index], copy=True)
        layers = range(target.shape[0])[index[0]]
        return np.stack([tensor(i)[index[1:]] for i in layers])

    if stacked:  # touch every layer once so a missing/wrong tensor fails even on zero-device hosts
        for i in range(target.shape[0]):
            tensor(i)
    return jax.make_array_from_callback(target.shape, sharding, shard)


def _host_array(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils  # no public equivalent for gathering to host

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def hf_tensors(model: nnx.Module, dtype: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, array) for every parameter, in checkpoint order, converted one tensor at a time."""
    family = family_of(model)
    config = model.config
    target_dtype = resolve_dtype(dtype or config.param_dtype)
    specs = {spec.path: spec for spec in family.tensor_specs(config)}
    params = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        spec, layer = _spec_for(path, specs)
        params[spec.path, layer] = variable.get_value()
    for spec in specs.values():
        key = (family.base_prefix if spec.in_base else "") + spec.hf_key
        if not spec.layered:
            yield key, spec.to_hf(_host_array(params[spec.path, None])).astype(target_dtype)
            continue
        for i in range(_num_layers(config)):
            stacked = params.get((spec.path, None))
            value = stacked[i] if stacked is not None else params[spec.path, i]
            yield key.format(i=i), spec.to_hf(_host_array(value)).astype(target_dtype)


def _num_layers(config) -> int:
    for name in ("n_layer", "num_hidden_layers"):
        if hasattr(config, name):
            return getattr(config, name)
    raise AttributeError(f"{type(config).__name__} has no layer count")


def save_pretrained(model: nnx.Module, out_dir: str | os.PathLike, *, dtype: str | None = None,
                    max_shard_bytes: int = 2 * 1024**3) -> Path:
    """Writes `config.json` + safetensors that transformers' `*ForCausalLM.from_pretrained` loads.

    Only process 0 writes; every process must call it (gathering sharded parameters is collective).
    """
    out = Path(out_dir)
    dtype = dtype or model.config.param_dtype
    tensors = hf_tensors(model, dtype)
    if jax.process_index() != 0:
        for _ in tensors:
            pass
        return out
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, out, max_shard_bytes=max_shard_bytes)
    hf_config = model.config.to_hf_dict()
    hf_config["dtype"] = str(np.dtype(resolve_dtype(dtype)))
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    return out
