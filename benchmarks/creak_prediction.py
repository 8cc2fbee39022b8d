"""How long augmenting CREAK with a bloom-7b1 teacher takes on rented TPU slices, from XLA's TPU compiles:
the table of docs/scaling.md ("How long does augmenting CREAK take?"). Roofline bounds, not measurements.

    python benchmarks/creak_prediction.py

For each slice and mesh, the augment engine's decode round and insert (`compile.programs.generation_programs`,
bloom-7b1 in bfloat16, 64-token prompt buckets + 256 new tokens) are compiled for the slice by libtpu. A decode
step's bound is XLA's bytes accessed (and flops) per chip over the chip's bandwidth (and peak); the job's
slot-steps (CREAK's 10,174 training records x 3 kinds x 101 steps, every slot busy) over the slots gives the
steps, each at its bound plus a per-step host overhead (2 ms assumed, 31.5 ms as measured for the ce4bea3
engine on an H200); prefill is the insert's bound per fill of the slots.
"""
from __future__ import annotations

import dataclasses
import time

from teacherlm_jax.compile.programs import compile_and_report, generation_programs
from teacherlm_jax.compile.topology import parse_slice
from teacherlm_jax.models.bloom import bloom_shape
from teacherlm_jax.sharding import DEFAULT_RULES, make_mesh, parse_rules

RECORDS, KINDS, STEPS_PER_TEXT = 10_174, 3, 101  # 100 generated tokens on average plus the EOS step
PROMPT, NEW = 64, 256
OVERHEADS_MS = (31.5, 2.0)


@dataclasses.dataclass(frozen=True)
class Case:
    slice: str
    data: int
    tensor: int
    slots_per_replica: int


CASES = (Case("v5e-8", 8, 1, 64), Case("v5e-8", 8, 1, 8), Case("v5e-8", 4, 2, 64), Case("v4-8", 4, 1, 64),
         Case("v4-8", 2, 2, 64), Case("v4-8", 2, 2, 128), Case("v4-16", 8, 1, 64), Case("v6e-8", 4, 2, 64))


def predict(case: Case) -> str:
    tpu = parse_slice(case.slice)
    mesh = make_mesh({"data": case.data, "fsdp": 1, "tensor": case.tensor}, tpu.devices())
    rules = parse_rules(DEFAULT_RULES, mesh)
    slots = case.data * case.slots_per_replica
    model = {"family": "bloom", "dtype": "bfloat16", **bloom_shape("bloom-7b1")}
    start = time.perf_counter()
    lowered = generation_programs(model, mesh, rules, slots=slots, prompt_tokens=PROMPT, max_new_tokens=NEW)
    limit = int(tpu.chip.hbm_gib * 2 ** 30)
    step = compile_and_report(lowered["decode_round"], tpu.chip, limit)[1]
    fill = compile_and_report(lowered["insert"], tpu.chip, limit)[1]
    seconds = time.perf_counter() - start
    if step.error or fill.error:  # refused by the TPU compiler for lack of HBM: no cost analysis
        need = max(step.peak_bytes, fill.peak_bytes) / 2 ** 30
        return (f"| {case.slice}, {case.data} x {case.tensor}, {case.slots_per_replica} | **no** (>= {need:.1f} "
                f"GiB) | - | - | - | - | - | - | - | {seconds:.0f} s |")
    steps = -(-RECORDS * KINDS * STEPS_PER_TEXT // slots)
    prefill = fill.roofline_seconds * -(-RECORDS * KINDS // slots)
    totals = [steps * (step.roofline_seconds + ms / 1e3) + prefill for ms in OVERHEADS_MS]
    fits = "yes" if step.fits and fill.fits else f"**no** ({max(step.peak_bytes, fill.peak_bytes) / 2**30:.1f} GiB)"
    return (f"| {case.slice}, {case.data} x {case.tensor}, {case.slots_per_replica} | {fits} | "
            f"{step.peak_bytes / 2**30:.2f} | {step.bytes_accessed / 1e9:.2f} GB | {step.roofline_seconds * 1e3:.2f} ms "
            f"| {steps:,} | {prefill:.0f} s | {totals[0] / 60:.1f} min | {totals[1] / 60:.1f} min | {seconds:.0f} s |")


def main() -> None:
    print("| slice, mesh (data x tensor), slots per replica | fits | decode round peak GiB/chip | bytes accessed per "
          "chip per step | step bound | steps | prefill bound | total, 31.5 ms overhead | total, 2 ms overhead | "
          "compiled in |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in CASES:
        print(predict(case), flush=True)


if __name__ == "__main__":
    main()
