"""Generation's programs kept as exported StableHLO (`jax.export`) beside jax's persistent compilation cache.

A warm persistent cache spares a job XLA's compiles, not tracing its programs to jaxprs and lowering them to
StableHLO: Python work that grows with the model's layers, paid again by every job for every program
(benchmarks/engine_overhead.py --job reports the phases). With a compilation cache directory set
(`jax_compilation_cache_dir`), a `StoredProgram` exports each shape's program once, into EXPORT_DIR under
it, and later jobs load it back and call it: a call that traces and lowers one call of the exported program,
whose compile the persistent cache then serves.

A stored program is keyed by everything that makes it: this package's source, jax's and flax's versions, the
function, its static arguments and its arguments' tree, shapes, dtypes and shardings. A file that cannot be
read back is exported again (and rewritten), with a warning naming it. Without a cache directory, in a job of
several jax processes (exported programs over a mesh that spans processes are not tested here), or for devices
of another platform than the default backend's (the compile job's TPU slices), programs are traced as plain
`jax.jit` functions.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import export

from teacherlm_jax.models.graph_key import GraphKey

log = logging.getLogger(__name__)

EXPORT_DIR = "teacherlm_exported"  # under the compilation cache directory
PACKAGE = Path(__file__).resolve().parents[1]


@functools.cache
def source_digest() -> str:
    """sha256 of this package's Python source and the versions of jax, jaxlib and flax."""
    versions = " ".join(importlib.metadata.version(name) for name in ("jax", "jaxlib", "flax"))
    digest = hashlib.sha256(versions.encode())
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def store_dir() -> Path | None:
    """Where exported programs are kept: EXPORT_DIR under jax's compilation cache directory (None: not set)."""
    cache = jax.config.jax_compilation_cache_dir
    return None if not cache or "://" in str(cache) else Path(cache) / EXPORT_DIR


def _describe(value: Any) -> str:
    """A static argument as the same text in every process (a GraphKey's default repr is its address)."""
    return repr(value.graphdef) if isinstance(value, GraphKey) else repr(value)


def _leaf_type(leaf: Any) -> tuple:
    """(shape, dtype, sharding or None) of an argument: an array, a `jax.ShapeDtypeStruct` or a Python scalar."""
    if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)):  # most arguments: the checks below cost per call
        return leaf.shape, leaf.dtype, leaf.sharding
    leaf = np.asarray(leaf)
    return leaf.shape, leaf.dtype, None


class StoredProgram:
    """`jax.jit(fn, static_argnames=..., donate_argnums=...)` whose programs are exported once per shape (the
    module docstring). Called, or lowered (`lower`), as the jitted function would be."""

    def __init__(self, fn: Callable, static_argnames: Sequence[str], donate_argnums: Sequence[int] = ()):
        self.fn = fn
        self.donate_argnums = tuple(donate_argnums)
        self.jitted = jax.jit(fn, static_argnames=tuple(static_argnames), donate_argnums=self.donate_argnums)
        self.programs: dict[tuple, Callable] = {}  # (static, tree, leaf types) -> the exported program, jitted
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **static: Any) -> Any:
        program, leaves = self._program(args, static)
        return self.jitted(*args, **static) if program is None else program(*leaves)

    def lower(self, *args: Any, **static: Any) -> jax.stages.Lowered:
        program, leaves = self._program(args, static)
        return self.jitted.lower(*args, **static) if program is None else program.lower(*leaves)

    def _program(self, args: tuple, static: dict[str, Any]) -> tuple[Callable | None, list]:
        folder = store_dir()
        if folder is None or jax.process_count() > 1:
            return None, []
        leaves, tree = jax.tree.flatten(args)
        if not _default_platform(leaves):
            return None, leaves
        key = (tuple(sorted(static.items())), tree, tuple(map(_leaf_type, leaves)))
        if key not in self.programs:
            self.programs[key] = self._load(folder, args, static, leaves, tree)
        return self.programs[key], leaves

    def _load(self, folder: Path, args: tuple, static: dict[str, Any], leaves: list, tree: Any) -> Callable:
        """The program of these arguments' shapes, from its file or exported into it, jitted with the donations."""
        types = [_leaf_type(leaf) for leaf in leaves]
        described = "\n".join([source_digest(), self.fn.__module__, self.fn.__qualname__, repr(tree),
                               *(f"{name}={_describe(value)}" for name, value in sorted(static.items())),
                               *(f"{shape} {dtype} {sharding!r}" for shape, dtype, sharding in types)])
        path = folder / f"{self.fn.__name__}-{hashlib.sha256(described.encode()).hexdigest()}.jax_exported"
        exported = _read(path)
        if exported is None:
            specs = [jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for shape, dtype, sharding in types]
            flat = lambda *xs: self.fn(*jax.tree.unflatten(tree, xs), **static)
            exported = export.export(jax.jit(flat))(*specs)
            _write(path, exported.serialize())
        sizes = [len(jax.tree.leaves(arg)) for arg in args]
        donated = tuple(i for a in self.donate_argnums for i in range(sum(sizes[:a]), sum(sizes[:a + 1])))

        def program(*xs):
            return exported.call(*xs)

        program.__name__ = program.__qualname__ = self.fn.__name__  # compile events name the function
        return jax.jit(program, donate_argnums=donated)


def _default_platform(leaves: list) -> bool:
    """Whether the arguments live on (or are laid out for) the default backend's devices."""
    backend = jax.default_backend()
    for leaf in leaves:
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None:
            return all(d.platform == backend for d in sharding.device_set)
    return True


def _read(path: Path) -> export.Exported | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("could not read the exported program %s (%s); exporting it again", path, e)
        return None
    try:
        return export.deserialize(bytearray(data))
    except Exception as e:  # a damaged or foreign file: whatever the deserializer raised
        log.warning("the exported program %s is damaged (%s: %s); exporting it again", path, type(e).__name__, e)
        return None


def _write(path: Path, data: bytearray) -> None:
    """Writes atomically (processes of one job may export the same program); a failure only costs the next job."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(bytes(data))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not keep the exported program %s (%s); the next job exports it again", path, e)
        with contextlib.suppress(OSError):
            tmp.unlink()
