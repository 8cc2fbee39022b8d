"""Which jax backends a job may start, decided before jax starts any.

With libtpu installed (the `tpu` and `test` extras) jax tries its TPU backend first on every host: on one
without TPU chips that takes libtpu's host-wide lockfile and prints its failed search for a slice, so two
jobs on one CPU host contend for a lock neither uses. Where this host has no TPU chip and jax has no GPU
plugin, jobs start the CPU backend only. JAX_PLATFORMS, when set, decides instead; compiling for a TPU
slice that is not attached (`teacherlm_jax.compile.topology`) works either way.
"""
from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

# PCI ids of TPU chips (vendor Google), as jax's own hardware probe lists them.
GOOGLE_PCI_VENDOR = "0x1ae0"
TPU_PCI_DEVICES = {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"}
GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "jax_rocm60_plugin")


def tpu_chips_attached(pci_root: str = "/sys/bus/pci/devices") -> int:
    """How many TPU chips sit on this host's PCI bus."""
    count = 0
    for vendor in glob.glob(os.path.join(pci_root, "*", "vendor")):
        device = Path(vendor).with_name("device")
        try:
            if Path(vendor).read_text().strip() == GOOGLE_PCI_VENDOR and device.read_text().strip() in TPU_PCI_DEVICES:
                count += 1
        except OSError:
            continue
    return count


def cpu_only_without_tpu() -> bool:
    """Limits jax to its CPU backend where libtpu is installed but nothing else could run (module docstring);
    returns whether it did. Call before jax starts a backend."""
    if os.environ.get("JAX_PLATFORMS") is not None or importlib.util.find_spec("libtpu") is None:
        return False
    if tpu_chips_attached() or any(importlib.util.find_spec(p) is not None for p in GPU_PLUGINS):
        return False
    import jax

    jax.config.update("jax_platforms", "cpu")
    return True
