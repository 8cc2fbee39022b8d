"""The engine's host overhead on CPU, where a small model's step costs what a large one's does on an accelerator.

    python benchmarks/engine_overhead.py                    # this tree against ce4bea3, one run each
    python benchmarks/engine_overhead.py --refill-fractions 0.0625,0.125,0.25,0.5 --baseline none   # a sweep
    python benchmarks/engine_overhead.py --prefix-pool both --baseline none   # with and without the prefix pool

A random BloomForCausalLM of hidden 256, 4 layers, 8 heads and 4096 tokens (float32; a 64-row decode step
takes ~11 ms on the 2-core VM, as bloom-560m's takes a few ms on a GPU) with a byte-level tokenizer, its
EOS logit calibrated for probability 1/32 per step under top-k 50 (benchmarks/eos_workload.py): TeacherLM's
workload, `--records` CREAK train records x three kinds, temperature 1, top-k 50, rows ending at EOS with
geometric lengths (mean ~32), max_new_tokens 128, batch_size 64, each kind's prompt sharing its record's
prefix, prompts made by the augment job's own `make_chunk`.

Each contender runs in its own process: the workload once to fill a compilation cache of its own, then
again, timed (generation only: tokens / seconds of `Engine.generate`), with every program loaded from that
cache or already compiled. The baseline is the engine at commit `--baseline` (default ce4bea3, before the
generation package), checked out into a git worktree and run with the same script. In the same process as
this tree's engine, the bare-step bound: the decode step `generate` and the engine run (`DecodeSlots.run`),
64 rows of the workload's prompts at the job's cache width, no EOS, (time(1 + n) - time(1)) / n per step,
median of 3; bound = 64 rows / step. The bound leaves out the prefill, which is real work (the prompts are
~190 byte-level tokens, the texts ~32). Prints a markdown table for docs/performance.md.

With `--job`, each contender also runs the workload as users do, `python -m teacherlm_jax.main --config
configs/augment.py` (default chunk size, `--records` CREAK train records, batch_size 64, max_new_tokens 128),
twice with one persistent compilation cache: the second run is timed whole (wall seconds of the process) and
its summary.json gives the generation's seconds and, where the tree reports them, its programs and the
seconds spent obtaining them (trace, lower, cache read, compile).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SLOTS = 64
MAX_NEW_TOKENS = 128


def worker(checkpoint: str, records: int, fractions: list[float], bound: bool, pools: list[bool]) -> None:
    """Runs in the tree on PYTHONPATH; prints one JSON line per run."""
    import numpy as np

    from teacherlm_jax import from_pretrained
    from teacherlm_jax.augment import Settings
    from teacherlm_jax.augment.chunks import make_chunk
    from teacherlm_jax.data import load_records
    from teacherlm_jax.tokenizers import load_tokenizer
    try:
        from teacherlm_jax.generation import Sampling
        from teacherlm_jax.generation.scheduler import Engine, prompt_width
    except ImportError:  # a baseline tree from before the generation package (ce4bea3): their old homes
        from teacherlm_jax.augment import Sampling
        from teacherlm_jax.augment.engine import Engine, prompt_width

    tokenizer = load_tokenizer(checkpoint)
    model = from_pretrained(checkpoint, scan_layers=False).for_decoding()
    sampling = Sampling(temperature=1.0, top_k=50, max_new_tokens=MAX_NEW_TOKENS)
    settings = Settings(sampling=sampling, batch_size=SLOTS, chunk_size=records)
    limit = settings.prompt_limit(model.config.max_position_embeddings)
    chunk = make_chunk(tokenizer, "creak", 0, load_records("creak", "train")[:records], settings, limit)
    width = prompt_width((p for _, p in chunk.work), MAX_NEW_TOKENS, model.config.max_position_embeddings)

    def run(fraction: float | None, pool: bool | None) -> dict:
        kwargs = {} if fraction is None else {"refill_fraction": fraction}
        kwargs.update({} if pool is None else {"prefix_pool": pool})  # None: the tree's engine as it is
        engine = Engine(model, batch_size=SLOTS, width=width, sampling=sampling, eos_id=tokenizer.eos_token_id,
                        pad_id=tokenizer.pad_token_id, refill=True, **kwargs)
        start = time.perf_counter()
        tokens = sum(len(s) for _, samples in engine.generate(chunk.work) for s in samples)
        seconds = time.perf_counter() - start
        return {"refill_fraction": fraction, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                **{k: v for k, v in engine.stats().items() if k != "engine"}}

    for fraction in fractions or [None]:
        for pool in pools or [None]:
            run(fraction, pool)  # fills the compilation cache (and this process's): the timed run compiles nothing
            print(json.dumps(run(fraction, pool)), flush=True)
    if bound:  # the engine's own round program at the job's cache width, every row running (no EOS)
        from teacherlm_jax.data.padding import left_pad
        from teacherlm_jax.generation import DecodeSlots, RowSeeds, Sampler

        slots = DecodeSlots(model, size=SLOTS, prompt_width=width, max_new_tokens=MAX_NEW_TOKENS,
                            sampler=Sampler(1.0, 50), eos_ids=np.array([], np.int32), pad_id=tokenizer.pad_token_id)
        ids, mask = left_pad([p.ids for _, p in chunk.work[:SLOTS]], width, tokenizer.pad_token_id)
        seeds = RowSeeds.of(range(SLOTS), [0] * SLOTS, [0] * SLOTS)

        def steps(n: int) -> float:
            slots.reset()
            slots.insert(ids, mask, np.arange(SLOTS)[:, None], seeds)
            slots.run(0).result()  # the prefill, outside the timing
            return _timed(lambda: slots.run(n).result())

        steps(1), steps(65)
        seconds = statistics.median((steps(65) - steps(1)) / 64 for _ in range(3))
        print(json.dumps({"bare_step_ms": 1000 * seconds, "bound_tokens_per_s": SLOTS / seconds}), flush=True)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def contender_env(tree: Path, cache: Path) -> dict[str, str]:
    """A contender's environment: its tree first on the path, the CPU backend, its own persistent cache."""
    data = os.environ.get("TEACHERLM_DATA_DIR", str(REPO.parent / "shared" / "data"))  # the baseline's tree is elsewhere
    return {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{Path(__file__).parent}", "JAX_PLATFORMS": "cpu",
            "TEACHERLM_DATA_DIR": data,
            "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def contender(tree: Path, checkpoint: Path, cache: Path, records: int, fractions: list[float], bound: bool,
              pools: str = "") -> list:
    env = contender_env(tree, cache)
    cmd = [sys.executable, __file__, "--worker", "--checkpoint", str(checkpoint), "--records", str(records),
           "--refill-fractions", ",".join(map(str, fractions))] + (["--bound"] if bound else []) + (
              ["--prefix-pool", pools] if pools else [])
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{tree} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def job_run(tree: Path, checkpoint: Path, cache: Path, records: int, workdir: Path) -> dict:
    """One augment job on the workload, timed whole, with its summary.json's throughput."""
    command = [sys.executable, "-m", "teacherlm_jax.main", "--config", "configs/augment.py", "--workdir", str(workdir),
               f"--config.teacher.init_from={checkpoint}", "--config.datasets=('creak',)",
               f"--config.max_records={records}", f"--config.batch_size={SLOTS}",
               f"--config.sampling.max_new_tokens={MAX_NEW_TOKENS}"]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=tree, env=contender_env(tree, cache), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{tree}: the augment job failed:\n{proc.stderr[-4000:]}")
    throughput = json.loads((workdir / "augmented" / "creak" / "summary.json").read_text())["throughput"]
    return {"job_seconds": seconds, "seconds": throughput["seconds"],
            "tokens": sum(run["tokens"] for run in throughput["runs"]), **{
                key: throughput[key] for key in ("compiled_programs", "program_seconds") if key in throughput}}


def job_contender(tree: Path, checkpoint: Path, cache: Path, records: int, workdir: Path) -> dict:
    """The job's second run with one persistent cache (the first fills it)."""
    job_run(tree, checkpoint, cache, records, workdir / "first")
    return job_run(tree, checkpoint, cache, records, workdir / "second")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=384)
    parser.add_argument("--refill-fractions", default="", help="this tree's engine at these fractions (default: its own)")
    parser.add_argument("--baseline", default="ce4bea3", help="a commit to run side by side, or none")
    parser.add_argument("--prefix-pool", default="", choices=["", "on", "off", "both"],
                        help="this tree's engine with its prefix pool, without, or both (default: the engine's own)")
    parser.add_argument("--job", action="store_true", help="also time each contender's augment job end to end")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--bound", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    fractions = [float(f) for f in args.refill_fractions.split(",") if f]
    if args.worker:
        pools = {"": [], "on": [True], "off": [False], "both": [True, False]}[args.prefix_pool]
        worker(args.checkpoint, args.records, fractions, args.bound, pools)
        return

    from augment import save_checkpoint  # benchmarks/augment.py: the calibrated teacher

    from teacherlm_jax.data import load_records, teacher_prompt

    records = load_records("creak", "train")[:args.records]
    texts = [teacher_prompt(r, kind) for kind in ("cot", "fundamentals", "mistakes") for r in records]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        note = save_checkpoint(tmp / "model", "tiny", "teacherlm", texts)
        results = {"this tree": contender(REPO, tmp / "model", tmp / "cache-new", args.records, fractions, True,
                                          args.prefix_pool)}
        jobs = {"this tree": job_contender(REPO, tmp / "model", tmp / "cache-new", args.records, tmp / "job-new")
                } if args.job else {}
        if args.baseline != "none":
            tree = tmp / "baseline"
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.baseline], cwd=REPO, check=True,
                           capture_output=True)
            name = f"engine at {args.baseline}"
            try:
                results[name] = contender(tree, tmp / "model", tmp / "cache-old", args.records, [], False)
                if args.job:
                    jobs[name] = job_contender(tree, tmp / "model", tmp / "cache-old", args.records, tmp / "job-old")
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=True)

    bound = next(r for r in results["this tree"] if "bound_tokens_per_s" in r)
    load = os.getloadavg()
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}; {args.records} CREAK train records x 3 kinds, {SLOTS} slots, temperature 1, "
          f"top-k 50, max_new_tokens {MAX_NEW_TOKENS}. {note}. Bare step at {SLOTS} rows: "
          f"{bound['bare_step_ms']:.2f} ms, bound {bound['bound_tokens_per_s']:.0f} tokens/s.\n")
    runs = [(name, r) for name, rs in results.items() for r in rs if "tokens" in r]
    base = next((r for name, r in runs if name != "this tree"), None)
    print("| engine | refill fraction | prefix pool | tokens | s | tokens/s | of the bound | vs baseline | rounds "
          "| decode steps | slot occupancy | programs | program s (trace, lower, cache read, compile) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in runs:
        versus = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        phases = r.get("program_seconds")
        phases = ", ".join(f"{phases[k]:.1f}" for k in ("trace", "lower", "cache_read", "compile")) if phases else "-"
        print(f"| {name} | {r['refill_fraction'] or 'default'} | {r.get('prefix_pool', '-')} | {r['tokens']} | "
              f"{r['seconds']:.1f} | {r['tokens_per_s']:.0f} | "
              f"{100 * r['tokens_per_s'] / bound['bound_tokens_per_s']:.0f}% | {versus} | {r.get('rounds', '-')} | "
              f"{r['decode_steps']} | {r['slot_occupancy']:.2f} | {r.get('compiled_programs', '-')} | {phases} |")

    if jobs:
        print_jobs(jobs, bound["bound_tokens_per_s"])


def print_jobs(jobs: dict[str, dict], bound: float) -> None:
    """The end-to-end table: each contender's timed second job."""
    base = next((r for name, r in jobs.items() if name != "this tree"), None)
    print("\n| augment job | wall s | generation s | tokens | tokens/s | of the bound | vs baseline | programs "
          "| program s (trace, lower, cache read, compile) | programs / generation |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in jobs.items():
        rate = r["tokens"] / r["seconds"]
        versus = f"{rate / (base['tokens'] / base['seconds']):.2f}x" if base else "-"
        phases = r.get("program_seconds")
        # jax reads the persistent cache inside its compile phase: cache_read is part of compile
        spent = f"{sum(t for k, t in phases.items() if k != 'cache_read') / r['seconds']:.0%}" if phases else "-"
        phases = ", ".join(f"{phases[k]:.1f}" for k in ("trace", "lower", "cache_read", "compile")) if phases else "-"
        print(f"| {name} | {r['job_seconds']:.1f} | {r['seconds']:.1f} | {r['tokens']} | {rate:.0f} | "
              f"{100 * rate / bound:.0f}% | {versus} | {r.get('compiled_programs', '-')} | {phases} | {spent} |")


if __name__ == "__main__":
    main()
