"""The augment engine's decode round compiled for a TPU slice by XLA's TPU compiler, on this host: bytes
accessed per step and chip and per generated token (docs/scaling.md, "The decode round's bytes on TPU").

    python benchmarks/tpu_decode.py                                    # bloom-560m, v5e-8, the rows of the table
    python benchmarks/tpu_decode.py --cases "data:256:192:512" --slice v5e:1x1

A case is MESH:SLOTS:PREFIX:NEW: MESH `data` (the augment job's mesh: weights whole on each chip, rows split
over every chip) or `fsdp` (the compile job's), SLOTS decode slots of the whole slice, PREFIX > 0 for the
prefix pool with units of three rows sharing that many of the 256 prompt tokens, NEW new tokens a row.
Compiler figures, not measurements. The table's "before" rows come from this script at commit 2d498ed.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT_TOKENS = 256
GIB = 2 ** 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="bloom-560m", help="a configs/compile.py variant")
    parser.add_argument("--slice", default="v5e-8")
    parser.add_argument("--cases", default="data:256:0:512,data:256:192:512,data:256:0:64")
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(REPO))
    from configs import compile as compile_config
    from teacherlm_jax.compile.programs import compile_and_report, generation_programs
    from teacherlm_jax.compile.topology import parse_slice
    from teacherlm_jax.sharding import mesh_from_config

    tpu = parse_slice(args.slice)
    print(f"| {args.size} on {args.slice}: mesh | slots | prefix pool | new tokens | GB accessed / step / chip "
          f"| MiB / generated token | temporaries GiB | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        mesh_name, slots, prefix, new = case.split(":")
        slots, prefix, new = int(slots), int(prefix), int(new)
        config = compile_config.get_config(args.size)
        config.mesh.update({"data": -1, "fsdp": 1} if mesh_name == "data" else {"data": 1, "fsdp": -1})
        mesh, rules = mesh_from_config(config, tpu.devices())
        programs = generation_programs(config.model.to_dict(), mesh, rules, slots=slots, prompt_tokens=PROMPT_TOKENS,
                                       max_new_tokens=new, prefix_tokens=prefix, rows_per_prefix=3)
        compiled, report = compile_and_report(programs["decode_round"], tpu.chip, None)
        temporaries = compiled.memory_analysis().temp_size_in_bytes / GIB
        pool = f"units of 3, {prefix} shared" if prefix else "no"
        print(f"| {mesh_name} | {slots} | {pool} | {new} | {report.bytes_accessed / 1e9:.2f} | "
              f"{report.bytes_accessed / slots / 2 ** 20:.1f} | {temporaries:.2f} | {report.compile_seconds:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
