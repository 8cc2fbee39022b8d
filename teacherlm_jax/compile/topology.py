"""TPU slices by the names researchers rent them by, as compile-only devices, and their chips' figures.

XLA's TPU compiler (libtpu, `pip install -e ".[tpu]"`) compiles for any slice on any host, a CPU VM
included: `jax.experimental.topologies.get_topology_desc` gives the slice's chips as devices that can
be compiled for but not run on (no public jax API does this; MaxText's `train_compile.py` uses the same).
A slice is named as gcloud names accelerator types (`v4-8`, `v5litepod-8` or `v5e-8`, `v5p-8`, `v6e-8`,
`v5e-32`: the number counts TensorCores on v4/v5p, chips on v5e/v6e) or in jax's form (`v5e:2x4`).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

import jax

from teacherlm_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Chip:
    """One chip's published figures: what a roofline bound divides by, and the memory a program must fit."""

    device_kind: str  # what jax's devices of this chip report
    peak_bf16_flops: float  # FLOP/s per chip, dense bfloat16
    hbm_bytes_per_s: float  # HBM bandwidth per chip
    hbm_gib: float  # HBM capacity per chip
    source: str


# Google Cloud's TPU system-architecture pages, per chip.
CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 275e12, 1200e9, 32.0, "cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("TPU v5 lite", 197e12, 819e9, 16.0, "cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("TPU v5", 459e12, 2765e9, 95.0, "cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("TPU v6 lite", 918e12, 1640e9, 32.0, "cloud.google.com/tpu/docs/v6e"),
}
# jax's topology prefix per generation (v5p is "v5" there).
_JAX_PREFIX = {"v4": "v4", "v5e": "v5e", "v5p": "v5", "v6e": "v6e"}
# gcloud's accelerator-type prefixes.
_GCLOUD_PREFIX = {"v4": "v4", "v5litepod": "v5e", "v5e": "v5e", "v5p": "v5p", "v6e": "v6e"}
# Slice shapes by chip count: 2D for v5e/v6e, 3D (megacore: one device a chip) for v4/v5p.
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
              256: (4, 8, 8), 512: (8, 8, 8)}
_MEGACORE = ("v4", "v5p")


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    """A TPU slice: its generation (a CHIPS key), chip grid, and how its chips split over hosts."""

    name: str  # as given
    generation: str
    shape: tuple[int, ...]

    @property
    def chips(self) -> int:
        return math.prod(self.shape)

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]

    @property
    def jax_name(self) -> str:
        return f"{_JAX_PREFIX[self.generation]}:{'x'.join(map(str, self.shape))}"

    @property
    def hosts(self) -> int:
        return self.chips // math.prod(self._host_bounds())

    def _host_bounds(self) -> tuple[int, int, int]:
        """Chips per host: a v5e/v6e slice of up to 8 chips is one host; larger ones and v4/v5p have 4 a host."""
        if self.generation not in _MEGACORE and self.chips <= 8:
            return (*self.shape, 1)[:3] if len(self.shape) == 2 else self.shape
        return 2, 2, 1

    def devices(self) -> list[jax.Device]:
        """The slice's chips as compile-only devices (one per chip), through libtpu."""
        try:
            from jax.experimental import topologies  # no public API compiles for a TPU that is not attached
        except ImportError as e:  # pragma: no cover - part of jax
            raise ConfigError(f"config.topology={self.name!r}: jax.experimental.topologies is missing: {e}") from e
        # Compiling opens no chip: other processes (a job on this host's own TPU, parallel tests) may hold libtpu.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        full = math.prod(self.shape) >= 64 if self.generation in _MEGACORE else False
        wrap = tuple(full or size >= 16 for size in (*self.shape, 1)[:3])
        try:
            topology = topologies.get_topology_desc(
                platform="tpu", topology_name=self.jax_name, chip_config_name="megacore" if self.generation in
                _MEGACORE else "default", chips_per_host_bounds=self._host_bounds(), wrap=wrap)
        except Exception as e:  # libtpu missing, or refusing the shape
            missing = "libtpu" in str(e).lower() or "tpu" not in str(e).lower()
            hint = ' (XLA\'s TPU compiler: pip install -e ".[tpu]")' if missing else ""
            raise ConfigError(f"config.topology={self.name!r} ({self.jax_name}): cannot compile for it{hint}: "
                              f"{str(e).splitlines()[0]}") from e
        devices = list(topology.devices)
        if len(devices) != self.chips:
            raise ConfigError(f"config.topology={self.name!r}: libtpu gave {len(devices)} devices for "
                              f"{self.chips} chips")
        return devices


def known_names() -> list[str]:
    """Every slice name `parse_slice` takes in gcloud's form (jax's form takes any grid of these sizes)."""
    names = []
    for prefix, generation in _GCLOUD_PREFIX.items():
        sizes = _SHAPES_3D if generation in _MEGACORE else _SHAPES_2D
        names += [f"{prefix}-{n * 2 if generation in _MEGACORE else n}" for n in sizes]
    return names


def _unknown(name: str) -> ConfigError:
    groups = {}
    for known in known_names():
        prefix, size = known.rsplit("-", 1)
        groups.setdefault(prefix, []).append(size)
    listing = "; ".join(f"{p}-{{{','.join(s)}}}" for p, s in groups.items())
    return ConfigError(f"config.topology={name!r}: unknown TPU slice; known: {listing}, or jax's form "
                       f"such as v5e:2x4, v4:2x2x1, v5p:2x2x2, v6e:4x4")


def parse_slice(name: str) -> TpuSlice:
    """A slice from gcloud's accelerator type (`v5litepod-8`, alias `v5e-8`) or jax's form (`v5e:2x4`)."""
    text = str(name).strip().lower()
    gcloud = re.fullmatch(r"(v4|v5litepod|v5e|v5p|v6e)-(\d+)", text)
    if gcloud:
        generation, count = _GCLOUD_PREFIX[gcloud.group(1)], int(gcloud.group(2))
        chips = count // 2 if generation in _MEGACORE else count
        shapes = _SHAPES_3D if generation in _MEGACORE else _SHAPES_2D
        if (generation in _MEGACORE and count % 2) or chips not in shapes:
            raise _unknown(name)
        return TpuSlice(str(name), generation, shapes[chips])
    grid = re.fullmatch(r"(v4|v5|v5p|v5e|v5litepod|v6e):(\d+(?:x\d+)+)", text)
    if grid:
        generation = {"v5": "v5p", "v5litepod": "v5e"}.get(grid.group(1), grid.group(1))
        shape = tuple(int(x) for x in grid.group(2).split("x"))
        rank = 3 if generation in _MEGACORE else 2
        if len(shape) != rank or min(shape) < 1:
            raise ConfigError(f"config.topology={name!r}: a {generation} grid has {rank} dimensions, e.g. "
                              f"{_JAX_PREFIX[generation]}:{'x'.join(['2'] * rank)}")
        return TpuSlice(str(name), generation, shape)
    raise _unknown(name)
