"""A model's GraphDef as a `jax.jit` static argument, hashed once.

jit hashes its static arguments on every call, and hashing a 24-layer model's GraphDef is milliseconds of
Python: at one program call per decode step (continuous batching) or per scored batch, that is time
the accelerator waits (benchmarks/engine_overhead.py).
"""
from __future__ import annotations

from typing import Any

from flax import nnx


class GraphKey:
    """Wraps `graphdef` with its hash computed once; equal when the GraphDefs are (the same object first)."""

    __slots__ = ("graphdef", "_hash")

    def __init__(self, graphdef: nnx.GraphDef):
        self.graphdef = graphdef
        self._hash = hash(graphdef)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, GraphKey) and (self.graphdef is other.graphdef or (
            self._hash == other._hash and self.graphdef == other.graphdef))

    def merge(self, state: Any) -> nnx.Module:
        return nnx.merge(self.graphdef, state)
