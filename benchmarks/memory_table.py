"""Memory per chip of a BLOOM training step, 560M to 176B: the table in docs/scaling.md.

    python benchmarks/memory_table.py                  # estimates (seconds, no compilation)
    python benchmarks/memory_table.py --aot            # plus the compile job on fake CPU devices, one
                                                       # process per row (under a minute each)
    python benchmarks/memory_table.py --aot --sizes bloom-1b7,bloom-7b1   # only those sizes' rows
    python benchmarks/memory_table.py --tpu            # plus the compile job for a TPU slice of the row's chips
                                                       # (XLA's TPU compiler, libtpu: v5e-N, v4 beyond 256 chips)

Parameters, optimizer state and gradients are exact: the model's own shapes and the trainer's sharding
rules (`param_shardings`) on an abstract mesh of the row's size. Activations are an estimate of what
the step keeps alive (bytes below, compute dtype bfloat16 = 2 bytes, r rows per chip per microbatch,
s tokens, h hidden, a heads, V vocabulary, t tensor-parallel size, L layers):
  saved per layer   full: r·s·h·2 (the layer input) | dots_no_batch: r·s·(2h + 7h/t)·2 |
                    dots: r·s·(2h + 8h/t)·2 + r·a·s²·4/t | none: r·s·(4h + 12h/t)·2 + r·a·s²·10/t
  one layer rebuilt in the backward pass: the `none` figure, once (remat policies other than none)
  loss over the vocabulary, c = loss_chunk positions at a time (teacherlm_jax/train/step.py): 3 float32
                    [r, c, V/t] arrays (logits, log-softmax, their gradient) and the head's float32
                    gradient accumulated over the chunks, 4·V·h/t; loss_chunk 0 or >= s (all at once): 3
                    float32 [r, s, V/t] arrays
  gathered weights: the embedding in bfloat16 plus its float32 gradient before reduce-scatter,
                    (2 + 4)·V·h/t, and two layers' weights in bfloat16 (FSDP's prefetch)
--aot adds XLA's own per-device figure (`teacherlm_jax.compile.job`) for comparison; CPU numbers are
indicative (XLA's CPU backend fuses less and keeps more bfloat16 work in float32 than TPU/GPU do).
--tpu adds the TPU compiler's figure for the row's mesh over a real slice's chips, which then decides the
TPU verdicts (the estimate still decides H100's). A step the compiler refuses for lack of HBM shows the
temporaries its message names (a lower bound) and fits no chip of that memory; larger chips' verdicts then
come from the estimate (and AOT peak), marked "(est.)".
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from teacherlm_jax.compile.job import REPORT_JSON
from teacherlm_jax.compile.programs import ProgramReport, compile_and_report
from teacherlm_jax.compile.topology import parse_slice
from teacherlm_jax.compile.train_program import lower_train_step
from teacherlm_jax.init_from import resolve
from teacherlm_jax.models.bloom import bloom_shape
from teacherlm_jax.sharding import DEFAULT_RULES, MESH_AXES, mesh_from_config, param_shardings, parse_rules
from teacherlm_jax.train.loop import train_setup
from teacherlm_jax.train.step import LOSS_CHUNK

REPO = Path(__file__).resolve().parents[1]  # the compile job's configs/ are relative to it
GIB = 2 ** 30
# Memory per chip (GiB) of the devices the table is checked against.
DEVICES = {"v5e": 16, "v4 / v6e": 32, "H100": 80, "v5p": 95}
HEADROOM = 0.9  # share of a chip's memory a step may plan for (runtime, fragmentation)


@dataclasses.dataclass(frozen=True)
class Row:
    size: str
    data: int = 1
    fsdp: int = 8
    tensor: int = 1
    rows: int = 1  # per chip per microbatch
    seq_len: int = 2048
    remat: str = "full"
    grad_accum: int = 1
    loss_chunk: int = LOSS_CHUNK

    @property
    def chips(self) -> int:
        return self.data * self.fsdp * self.tensor


ROWS = (
    Row("bloom-560m", remat="none"), Row("bloom-560m"), Row("bloom-560m", rows=4),
    Row("bloom-1b1"), Row("bloom-1b7", loss_chunk=0), Row("bloom-1b7"), Row("bloom-1b7", rows=2),
    Row("bloom-1b7", rows=4), Row("bloom-1b7", rows=8), Row("bloom-3b"), Row("bloom-3b", rows=4, remat="dots_no_batch"),
    Row("bloom-7b1", loss_chunk=0), Row("bloom-7b1"), Row("bloom-7b1", rows=2), Row("bloom-7b1", rows=4),
    Row("bloom-7b1", fsdp=4, tensor=2, rows=2), Row("bloom-7b1", fsdp=16), Row("bloom-7b1", fsdp=4),
    Row("bloom", fsdp=32, tensor=8), Row("bloom", fsdp=64, tensor=8),
)


def state_bytes(row: Row) -> tuple[int, int]:
    """(parameters, parameter count) per chip: float32 master weights, sharded by the trainer's rules."""
    mesh = AbstractMesh((row.data, row.fsdp, row.tensor), MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    model = resolve(dict(family="bloom", **bloom_shape(row.size))).abstract()
    shardings = param_shardings(model, mesh, parse_rules(DEFAULT_RULES, mesh))
    params = jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    per_chip = sum(math.prod(s.shard_shape(p.shape)) * p.dtype.itemsize
                   for p, s in zip(params, jax.tree.leaves(shardings)))
    return per_chip, sum(math.prod(p.shape) for p in params)


def activation_bytes(row: Row) -> int:
    """The estimate in the module docstring."""
    shape = bloom_shape(row.size)
    h, a, vocab, layers = shape["hidden_size"], shape["n_head"], shape["vocab_size"], shape["n_layer"]
    r, s, t, c = row.rows, row.seq_len, row.tensor, 2
    whole = r * s * (4 * h + 12 * h / t) * c + r * a * s * s * 10 / t
    saved = {"none": whole, "full": r * s * h * c, "dots_no_batch": r * s * (2 * h + 7 * h / t) * c,
             "dots": r * s * (2 * h + 8 * h / t) * c + r * a * s * s * 4 / t}[row.remat]
    rebuilt = 0 if row.remat == "none" else whole
    loss = 3 * 4 * r * s * vocab / t if not 0 < row.loss_chunk < s else \
        3 * 4 * r * row.loss_chunk * vocab / t + 4 * vocab * h / t
    gathered = (c + 4) * vocab * h / t + 2 * c * 12 * h * h / t
    return int(layers * saved + rebuilt + loss + gathered)


def estimate(row: Row) -> dict:
    params, count = state_bytes(row)
    grads = params * (2 if row.grad_accum > 1 else 1)  # accumulation keeps a running sum besides
    out = {"params": params, "optimizer": 2 * params, "gradients": grads, "activations": activation_bytes(row)}
    out["total"] = sum(out.values())
    return {**out, "count": count}


def aot(row: Row) -> dict:
    """The compile job's per-device memory for the row, on `row.chips` fake CPU devices."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, "-m", "teacherlm_jax.main", f"--config=configs/compile.py:{row.size}",
               f"--workdir={workdir}", f"--config.fake_devices={row.chips}", *overrides(row)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        return json.loads((Path(workdir) / REPORT_JSON).read_text())["memory_per_device"]


def overrides(row: Row) -> list[str]:
    """The row as compile-job overrides."""
    return [f"--config.mesh.data={row.data}", f"--config.mesh.fsdp={row.fsdp}", f"--config.mesh.tensor={row.tensor}",
            f"--config.batch_size={row.rows * row.data * row.fsdp * row.grad_accum}",
            f"--config.grad_accum_steps={row.grad_accum}", f"--config.data.seq_len={row.seq_len}",
            f"--config.model.remat_policy={row.remat}", f"--config.loss_chunk={row.loss_chunk}"]


def tpu_slice(chips: int) -> str:
    """The TPU slice a row's chips are compiled for: v5e up to 256 chips, then v4 (whose name counts cores)."""
    return f"v5e-{chips}" if chips <= 256 else f"v4-{2 * chips}"


def tpu_report(row: Row) -> ProgramReport:
    """The row's training step compiled by XLA's TPU compiler for a slice of its chips (a refused step reports
    the temporaries the compiler's message names, with `error` set: see `compile_and_report`)."""
    sys.path.insert(0, str(REPO))  # configs/ is a folder of the repository, not of the package
    from configs import compile as compile_config

    config = compile_config.get_config(row.size)
    config.update_from_flattened_dict({arg[len("--config."):].split("=")[0]: _value(arg.split("=")[1])
                                       for arg in overrides(row)})
    mesh, rules = mesh_from_config(config, parse_slice(tpu_slice(row.chips)).devices())
    lowered, _ = lower_train_step(config, train_setup(config, mesh, rules, weights=False), mesh, rules)
    report = compile_and_report(lowered, None, None)[1]
    print(f"{row}: {report.peak_bytes / GIB:.2f} GiB on {tpu_slice(row.chips)}"
          f"{' (refused)' if report.error else ''}, compiled in {report.compile_seconds:.0f} s",
          file=sys.stderr, flush=True)
    return report


def _value(text: str):
    return int(text) if text.lstrip("-").isdigit() else text


def header(show_aot: bool, tpu: bool) -> list[str]:
    head = ["model", "params", "mesh (data x fsdp x tensor)", "chips", "rows x seq / chip", "remat", "loss_chunk",
            "parameters", "Adam state", "gradients", "activations (est.)", "total (est.)"]
    if show_aot:
        head.append("AOT peak, CPU")
    if tpu:
        head.append("peak, TPU compile (slice)")
    return head + [f"fits {d} ({g} GiB)" for d, g in DEVICES.items()]


def row_cells(row: Row, aot_peak: int | None, tpu: ProgramReport | None, show_aot: bool = False
              ) -> list[str]:
    """One row's cells. The TPU compiler's figure, when given, decides the TPU verdicts (the estimate, or the
    AOT peak if larger, decides H100's). A step the compiler refuses does not fit that chip; its figure is only
    a lower bound, so a chip with more memory is decided by the estimate and AOT peak, marked "(est.)"."""
    e = estimate(row)
    cells = [row.size, f"{e['count'] / 1e9:.2f}B", f"{row.data} x {row.fsdp} x {row.tensor}", str(row.chips),
             f"{row.rows} x {row.seq_len}", row.remat, str(row.loss_chunk)]
    cells += [f"{e[k] / GIB:.2f}" for k in ("params", "optimizer", "gradients", "activations", "total")]
    need = max(e["total"], aot_peak or 0)  # the larger of the two decides
    if show_aot:
        cells.append("-" if aot_peak is None else f"{aot_peak / GIB:.2f}")
    if tpu is not None:
        slice_name = tpu_slice(row.chips)
        cells.append(f">= {tpu.peak_bytes / GIB:.2f} ({slice_name}, refused)" if tpu.error
                     else f"{tpu.peak_bytes / GIB:.2f} ({slice_name})")
    for device, g in DEVICES.items():
        limit = HEADROOM * g * GIB
        if tpu is None or device == "H100":
            cells.append("yes" if need <= limit else "no")
        elif not tpu.error:
            cells.append("yes" if tpu.peak_bytes <= limit else "no")
        elif tpu.peak_bytes > limit or g <= parse_slice(slice_name).chip.hbm_gib:
            cells.append("no")
        else:
            cells.append(("yes" if need <= limit else "no") + " (est.)")
    return cells


def table(rows: tuple[Row, ...], aot_max_devices: int, tpu: bool = False) -> str:
    head = header(bool(aot_max_devices), tpu)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        aot_peak = aot(row)["peak"] if aot_max_devices and row.chips <= aot_max_devices else None
        cells = row_cells(row, aot_peak, tpu_report(row) if tpu else None, bool(aot_max_devices))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aot", action="store_true", help="also compile each row on fake CPU devices")
    parser.add_argument("--aot-max-devices", type=int, default=512, help="compile only rows with at most this "
                        "many chips (each row is a process; 512 fake devices compile in about a minute)")
    parser.add_argument("--tpu", action="store_true", help="also compile each row for a TPU slice of its chips")
    parser.add_argument("--sizes", default="", help="comma-separated BLOOM sizes whose rows to show (default: all)")
    args = parser.parse_args()
    sizes = set(filter(None, args.sizes.split(",")))
    rows = tuple(row for row in ROWS if not sizes or row.size in sizes)
    print(f"GiB per chip; bfloat16 compute, float32 master weights, AdamW; 'fits' = the estimated total (or the "
          f"AOT peak, if larger) <= {HEADROOM:.0%} of the chip's memory.\n")
    print(table(rows, args.aot_max_devices if args.aot else 0, args.tpu), end="")


if __name__ == "__main__":
    main()
