"""BLOOM's training step and generation compiled for rented TPU slices by XLA's TPU compiler, on this host:
the TPU tables of docs/scaling.md (compiler figures and roofline bounds, not measurements).

    python benchmarks/tpu_compile.py                                   # bloom-560m, -1b7, -7b1 on v5e-8, v4-8, v6e-8
    python benchmarks/tpu_compile.py --sizes bloom-560m --slices v5e-8 --out /tmp/tpu.md

Each cell is the compile job (`configs/compile.py:SIZE --config.topology=SLICE`, FSDP over every chip,
its default batch 8 x 2048, 16 decode slots of 512 + 512 tokens) in a process of its own, timed whole.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 2 ** 30


def compile_cell(size: str, tpu: str, workdir: Path) -> tuple[dict, float]:
    """(compile_report.json, wall seconds of the whole job) of one size on one slice (it exits 1 when a
    program does not fit, and still reports)."""
    command = [sys.executable, "-m", "teacherlm_jax.main", "--config", f"configs/compile.py:{size}",
               "--workdir", str(workdir), f"--config.topology={tpu}", "--config.mesh.fsdp=-1", "--config.mesh.data=1"]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    report = workdir / "compile_report.json"
    if not report.exists():
        raise RuntimeError(f"{size} on {tpu}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(report.read_text()), seconds


def rows(size: str, tpu: str, summary: dict, seconds: float) -> list[str]:
    """Markdown rows: one per program."""
    out = []
    for name, p in summary["programs"].items():
        bound = p["roofline_seconds"]
        if p["error"]:  # refused by the TPU compiler for lack of HBM: no cost analysis
            out.append(f"| {size} | {tpu} | {name} | >= {p['peak_bytes'] / GIB:.2f} | NO | - | - | - | "
                       f"{p['compile_seconds']:.0f} |")
            continue
        cost = ("- | - | -" if bound is None else  # its cost variants refused at one row a chip
                f"{p['flops'] / 1e12:.3g} | {p['bytes_accessed'] / GIB:.2f} | {bound * 1e3:.3g}")
        out.append(f"| {size} | {tpu} | {name} | {p['peak_bytes'] / GIB:.2f} | {'yes' if p['fits'] else 'NO'} | "
                   f"{cost} | {p['compile_seconds']:.0f} |")
    c = summary["ceilings"]
    train = (f"train {c['train_tokens_per_s']:,.0f} tok/s, MFU <= {100 * c['train_mfu']:.0f}%"
             if c["train_tokens_per_s"] else "train: no bound")
    decode = f"decode {c['decode_tokens_per_s']:,.0f} tok/s" if c["decode_tokens_per_s"] else "decode: no bound"
    out.append(f"| {size} | {tpu} | *ceilings* | | | {train} | {decode} | | job {seconds:.0f} s |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="bloom-560m,bloom-1b7,bloom-7b1")
    parser.add_argument("--slices", default="v5e-8,v4-8,v6e-8")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    lines = ["| model | slice | program | peak GiB/chip | fits | TFLOP | GiB accessed | bound ms | compile s |",
             "|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            for tpu in args.slices.split(","):
                summary, seconds = compile_cell(size, tpu, Path(tmp) / f"{size}-{tpu}")
                lines += rows(size, tpu, summary, seconds)
                print("\n".join(lines[-len(summary["programs"]) - 1:]), flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
