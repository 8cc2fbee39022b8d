"""Logical axis names -> mesh axes.

Models name their axes (`batch`, `length`, `embed`, `heads`, `kv`, `mlp`, `vocab`, `layers`); which
mesh axis each maps to is decided here, by rules that come from the config, so the same model code
runs unsharded on one CPU and FSDP/tensor-parallel on a pod.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator, Sequence

import jax
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from teacherlm_jax.errors import ConfigError

LogicalRules = Sequence[tuple[str, str | Sequence[str] | None]]

_active = threading.local()


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
    """Within this context `constrain` pins activations to `mesh` according to `rules`."""
    previous = getattr(_active, "value", None)
    _active.value = (mesh, tuple(rules))
    try:
        yield
    finally:
        _active.value = previous


def target_platform() -> str:
    """The platform of the program being traced: the `activation_sharding` mesh's devices (compile-only TPU
    chips on a CPU host included), else jax's default backend."""
    active = getattr(_active, "value", None)
    return active[0].devices.flat[0].platform if active is not None else jax.default_backend()


def logical_to_spec(names: Sequence[str | None], rules: LogicalRules) -> PartitionSpec:
    """PartitionSpec for logical `names` under `rules` (first matching rule wins, unused mesh axes only)."""
    return nn.logical_to_mesh_axes(tuple(names), tuple(rules))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation by logical names; a no-op outside `activation_sharding`."""
    active = getattr(_active, "value", None)
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, rules)))


# --- Meshes and shardings from config -------------------------------------------------------------

MESH_AXES = ("data", "fsdp", "tensor")

# FSDP shards parameters' embed axis over `fsdp`; tensor parallelism splits heads/mlp/vocab; the batch
# is split over every data-parallel axis. Activations reuse these rules through `constrain`.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
    ("layers", None),
)


def mesh_shape(sizes: dict[str, int], num_devices: int, key: str = "config.mesh") -> tuple[int, ...]:
    """Sizes of (data, fsdp, tensor) with at most one -1 filled by the remaining devices."""
    unknown = sorted(set(sizes) - set(MESH_AXES) - {"rules"})
    if unknown:
        raise ConfigError(f"{key}: unknown mesh axes {unknown}; the axes are {MESH_AXES}")
    shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    for axis, size in zip(MESH_AXES, shape):
        if size == 0 or size < -1:
            raise ConfigError(f"{key}.{axis}={size}: a mesh axis size must be positive or -1 (the rest)")
    if shape.count(-1) > 1:
        raise ConfigError(f"{key}: only one axis may be -1, got {dict(zip(MESH_AXES, shape))}")
    fixed = math.prod(s for s in shape if s != -1)
    if num_devices % fixed:
        raise ConfigError(f"{key}: {dict(zip(MESH_AXES, shape))} needs a multiple of {fixed} devices, "
                          f"but there are {num_devices}")
    shape = [num_devices // fixed if s == -1 else s for s in shape]
    if math.prod(shape) != num_devices:
        raise ConfigError(f"{key}: {dict(zip(MESH_AXES, shape))} uses {math.prod(shape)} devices, but there are "
                          f"{num_devices}; set one axis to -1 to use the rest")
    return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(dict(sizes), len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def parse_rules(rules: Sequence, mesh: Mesh, key: str = "config.rules") -> tuple:
    """Validated rules as tuples: each entry (logical name, mesh axis | tuple of axes | None)."""
    parsed = []
    for i, rule in enumerate(rules):
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ConfigError(f"{key}[{i}]={rule!r}: a rule is (logical axis name, mesh axis or tuple or None)")
        name, target = rule
        axes = () if target is None else (target,) if isinstance(target, str) else tuple(target)
        for axis in axes:
            if axis not in mesh.axis_names:
                raise ConfigError(f"{key}[{i}]: ({name!r}, {target!r}) names mesh axis {axis!r}, "
                                  f"which is not one of {tuple(mesh.axis_names)}")
        parsed.append((name, None if target is None else axes[0] if isinstance(target, str) else axes))
    return tuple(parsed)


def mesh_from_config(config, devices: Sequence[jax.Device] | None = None) -> tuple[Mesh, tuple]:
    """The mesh of `config.mesh` over `devices` (default: every device) and validated rules from `config.rules`
    (or `config.mesh.rules`; default DEFAULT_RULES). `config` is an ml_collections.ConfigDict or any mapping."""
    sizes = {k: v for k, v in dict(config["mesh"]).items() if k != "rules"}
    mesh = make_mesh(sizes, devices)
    if config.get("rules") is not None:
        return mesh, parse_rules(config["rules"], mesh, "config.rules")
    if config["mesh"].get("rules") is not None:
        return mesh, parse_rules(config["mesh"]["rules"], mesh, "config.mesh.rules")
    return mesh, parse_rules(DEFAULT_RULES, mesh)


def batch_axes(rules: LogicalRules) -> tuple[str, ...]:
    """Mesh axes the batch dimension is split over."""
    spec = logical_to_spec(("batch",), rules)[0]
    return () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)


def data_parallel_size(mesh: Mesh, rules: LogicalRules) -> int:
    return math.prod(mesh.shape[axis] for axis in batch_axes(rules))


def batch_sharding(mesh: Mesh, rules: LogicalRules, ndim: int = 2) -> NamedSharding:
    """Sharding of a [batch, ...] array: rows split over the data-parallel axes."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def param_shardings(model, mesh: Mesh, rules: LogicalRules) -> dict:
    """NamedSharding per parameter, nested like `nnx.to_pure_dict(nnx.state(model, nnx.Param))`.

    An axis the mesh does not divide is an error naming the parameter, not a silent replication.
    """
    from flax import nnx

    out: dict = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = variable.get_value().shape
        names = variable.get_metadata().get("out_sharding") or (None,) * len(shape)
        spec = logical_to_spec(names, rules)
        for dim, (size, axes) in enumerate(zip(shape, spec)):
            parts = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ()))
            if size % parts:
                raise ConfigError(f"config.rules: parameter {'/'.join(map(str, path))} axis {dim} ({names[dim]!r}, "
                                  f"size {size}) cannot be split {parts} ways over mesh axes {axes!r}")
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = NamedSharding(mesh, spec)
    return out


def initialize_distributed(distributed=None) -> None:
    """`jax.distributed.initialize` when asked, before any jax computation; idempotent.

    `distributed` is `config.distributed` (a mapping) or None: `enabled` True/False forces it, None
    (default) starts it when `coordinator_address` is set or the environment is a multi-process launch
    (JAX_COORDINATOR_ADDRESS, a TPU VM, SLURM/Open MPI with several tasks). `coordinator_address`,
    `num_processes` and `process_id` are passed on (needed off clusters jax knows, e.g. CPU hosts).
    """
    settings = {k: v for k, v in dict(distributed or {}).items() if v is not None}
    enabled = settings.pop("enabled", None)
    unknown = sorted(set(settings) - {"coordinator_address", "num_processes", "process_id"})
    if unknown:
        raise ConfigError(f"config.distributed: unknown keys {unknown}")
    if jax.distributed.is_initialized() or enabled is False:
        return
    if enabled or settings or _multi_process_env():
        jax.distributed.initialize(**settings)


def _multi_process_env() -> bool:
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_ACCELERATOR_TYPE") or os.path.exists("/dev/accel0"):
        return True  # a TPU VM: jax finds the slice topology itself (single-host slices work too)
    return int(env.get("SLURM_NTASKS", 1)) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", 1)) > 1


def abstract_like(tree, shardings):
    """ShapeDtypeStructs carrying `shardings`: the restore target of `tree` (arrays or shapes)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
