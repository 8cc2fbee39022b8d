"""How each parameter of our NNX state corresponds to a tensor of a Hugging Face checkpoint.

A model family lists `TensorSpec`s; `teacherlm_jax.models.hf` walks them to import and export.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

Transform = Callable[[np.ndarray], np.ndarray]


def _identity(x: np.ndarray) -> np.ndarray:
    return x


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """`path` in our state (without the layer index) <-> `hf_key` (`{i}` = layer index).

    `in_base` keys live under the model's base prefix (`transformer.` for BLOOM), which published
    checkpoints may or may not carry.
    """

    path: tuple[str, ...]
    hf_key: str
    to_ours: Transform = _identity
    to_hf: Transform = _identity
    in_base: bool = True

    @property
    def layered(self) -> bool:
        return "{i}" in self.hf_key


def same(path: Sequence[str], hf_key: str, in_base: bool = True) -> TensorSpec:
    return TensorSpec(tuple(path), hf_key, in_base=in_base)


def transposed(path: Sequence[str], hf_key: str, in_base: bool = True) -> TensorSpec:
    return TensorSpec(tuple(path), hf_key, np.transpose, np.transpose, in_base)


def linear(path: Sequence[str], hf_prefix: str, in_shape: Sequence[int], out_shape: Sequence[int],
           bias: bool = True) -> list[TensorSpec]:
    """torch Linear ([out, in] weight) <-> our kernel [*in_shape, *out_shape] and bias [*out_shape]."""
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    kernel = TensorSpec(
        (*path, "kernel"), f"{hf_prefix}.weight",
        lambda w: w.T.reshape(*in_shape, *out_shape),
        lambda k: k.reshape(n_in, n_out).T,
    )
    specs = [kernel]
    if bias:
        specs.append(TensorSpec((*path, "bias"), f"{hf_prefix}.bias",
                                lambda b: b.reshape(out_shape), lambda b: b.reshape(n_out)))
    return specs


def layer_norm(path: Sequence[str], hf_prefix: str) -> list[TensorSpec]:
    return [same((*path, "weight"), f"{hf_prefix}.weight"), same((*path, "bias"), f"{hf_prefix}.bias")]


RUN_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat_policy", "attention_impl")


def config_from_hf(cls: type, hf: dict, aliases: dict[str, tuple[str, ...]], overrides: dict):
    """A config dataclass from an HF `config.json` dict: each field from its first present alias.

    A null token id stays null (the model has no such token); other null fields take the default.
    HF's `dtype` is the storage dtype, never our compute dtype, so run-time fields come only from
    `overrides`.
    """
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name in RUN_FIELDS:
            continue
        for key in aliases.get(field.name, (field.name,)):
            if key in hf and (hf[key] is not None or field.name.endswith("token_id")):
                kwargs[field.name] = hf[key]
                break
    if isinstance(kwargs.get("eos_token_id"), list):
        kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
    return cls(**{**kwargs, **overrides})
