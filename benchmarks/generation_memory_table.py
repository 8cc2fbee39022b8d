"""Generation memory per chip of a BLOOM teacher (the augment job's decode engine): the table in docs/scaling.md.

    python benchmarks/generation_memory_table.py                        # bloom-7b1, bfloat16 (seconds)
    python benchmarks/generation_memory_table.py --size bloom-3b --batch 16 32 --tensor 1 2 --dtype float32

Each row is `teacherlm_jax.compile.generation_memory.generation_memory`, what the compile job reports, on an
abstract mesh of the row's shape (no devices, no compilation): weights in the compute dtype, the KV
cache of `batch` slots of prompt + new - 1 positions, one step's float32 logits. Two layouts per tensor
size: one model replica on `tensor` chips holding every slot (data=1), and an 8-chip host (v5e-8, or
four v4 chips x 2 TensorCores) with data = 8 / tensor replicas, each chip holding batch / data slots.
"""
from __future__ import annotations

import argparse

from jax.sharding import AbstractMesh, AxisType

from teacherlm_jax.models.bloom import bloom_shape
from teacherlm_jax.compile.generation_memory import CHIPS, GIB, generation_memory
from teacherlm_jax.sharding import DEFAULT_RULES, MESH_AXES, parse_rules


def row(model: dict, batch: int, data: int, tensor: int, prompt: int, new: int) -> str:
    mesh = AbstractMesh((data, 1, tensor), MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    gen = generation_memory(model, mesh, parse_rules(DEFAULT_RULES, mesh), batch, prompt, new)
    mem = {k: v / GIB for k, v in gen["bytes_per_chip"].items()}
    verdicts = [f"{'yes' if v['fits'] else 'no'} ({v['headroom_bytes'] / GIB:+.2f})" for v in gen["chips"].values()]
    return (f"| {batch} | {data} x 1 x {tensor} | {data * tensor} | {gen['slots_per_chip']} | {mem['weights']:.2f} | "
            f"{mem['kv_cache']:.2f} | {mem['logits']:.3f} | {mem['total']:.2f} | " + " | ".join(verdicts) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="bloom-7b1", help="a BLOOM size (default bloom-7b1)")
    parser.add_argument("--dtype", default="bfloat16", help="compute dtype, the weights' too (configs/compile.py's)")
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64], help="decode slots")
    parser.add_argument("--tensor", type=int, nargs="+", default=[1, 2, 4], help="tensor-parallel sizes")
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens")
    parser.add_argument("--new", type=int, default=512, help="new tokens")
    args = parser.parse_args()
    model = dict(family="bloom", dtype=args.dtype, **bloom_shape(args.size))
    chips = " | ".join(f"fits {name} ({gib:g} GiB), headroom" for name, gib in CHIPS.items())
    print(f"{args.size}, {model['dtype']}, prompt {args.prompt} + {args.new} new tokens; GiB per chip\n")
    print(f"| batch (slots) | mesh (data x fsdp x tensor) | chips | slots / chip | weights | KV cache | logits | "
          f"total | {chips} |")
    print("|---" * (8 + len(CHIPS)) + "|")
    for batch in args.batch:
        for tensor in args.tensor:
            for data in sorted({1, max(1, 8 // tensor)}):
                print(row(model, batch, data, tensor, args.prompt, args.new))


if __name__ == "__main__":
    main()
