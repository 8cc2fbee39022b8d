"""The augment job against transformers `generate`: whole-process wall time, same prompts, same tokens.

    python benchmarks/augment.py                                      # 32 CREAK records x 48 tokens, batch 16
    python benchmarks/augment.py --records 8 --new-tokens 8 --batch 4   # a quick check

A random BloomForCausalLM of bloom-560m's shape (vocab 250880, hidden 1024, 24 layers, 16 heads,
float32) and a byte-level tokenizer are saved once. Each contender then runs in its own subprocess,
timed from start to exit (imports, loading, compiling included), on TeacherLM's CoT prompt for the
first `--records` questions of CREAK dev (../shared/data), greedy, exactly `--new-tokens` new tokens:
  augment    python -m teacherlm_jax.main --config configs/augment.py (kinds cot, temperature 0,
             stop_at_eos False, batch_size --batch);
  hf-1       transformers `generate` one prompt at a time: TeacherLM's own recipe;
  hf-batch   transformers `generate` on batches of --batch left-padded prompts.
Then, in this process, one decode step of our model at --batch rows (as `generate` runs it: the
decode layout in a while loop over a 256 + new-token KV cache) against the weight-streaming bound:
bytes of weights / memory bandwidth, measured as the bytes a numpy copy of a 1 GiB array moves (read +
write) per second.
Prints a markdown table for docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "bloom-560m": dict(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16),
    "tiny": dict(vocab_size=4096, hidden_size=256, n_layer=4, n_head=8),
}


def hf_worker(checkpoint: str, prompts_file: str, batch: int, new_tokens: int) -> None:
    """transformers `generate`, greedy, exactly `new_tokens` per prompt; torch and transformers only."""
    import torch
    from transformers import AutoTokenizer, BloomForCausalLM

    prompts = json.loads(Path(prompts_file).read_text())
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, padding_side="left")
    model = BloomForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    generated = 0
    with torch.inference_mode():
        for start in range(0, len(prompts), batch):
            inputs = tokenizer(prompts[start:start + batch], return_tensors="pt", padding=True)
            out = model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 pad_token_id=tokenizer.pad_token_id)
            generated += out[:, inputs["input_ids"].shape[1]:].numel()
    assert generated == len(prompts) * new_tokens, generated


def timed_subprocess(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"})
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]}... failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return seconds


def save_checkpoint(directory: Path, shape: str) -> None:
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    from teacherlm_jax.data.byte_tokenizer import byte_tokenizer  # any text, 260 tokens

    torch.manual_seed(0)
    BloomForCausalLM(BloomConfig(**SHAPES[shape])).save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)


def memory_bandwidth(gib: float = 1.0) -> float:
    """Bytes per second a numpy copy moves (each byte read once and written once); best of 3."""
    import numpy as np

    src = np.ones(int(gib * 2**30) // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def decode_step(checkpoint: str, batch: int, context: int, extra_steps: int = 4) -> tuple[float, int]:
    """(seconds per decode step at `batch` rows with a `context`-slot KV cache, bytes of weights).

    Steps run as `generate` runs them: the model's decode layout (`for_decoding`) in a
    `lax.while_loop` that carries the (donated) cache and feeds back the argmax; a call of
    1 + `extra_steps` steps minus a call of 1 step, over `extra_steps`, median of 3. CREAK's CoT
    prompts are 100-250 byte-level tokens, so the job's caches hold 256 + new tokens.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import teacherlm_jax as tl

    model = tl.from_pretrained(checkpoint)
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
    cache = model.init_cache(batch, context)
    graphdef, state = nnx.split(model.for_decoding())
    del model  # the stacked blocks; the decode layout holds its own copy

    def steps(state, cache, token, mask, n):
        def body(carry):
            i, cache, token = carry
            logits, cache = nnx.merge(graphdef, state)(token[:, None], mask, cache=cache)
            return i + 1, cache, jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        return jax.lax.while_loop(lambda c: c[0] < n, body, (jnp.int32(0), cache, token))[1:]

    steps = jax.jit(steps, donate_argnums=1)
    mask = jnp.ones((batch, context), jnp.int32)
    token = jnp.full((batch,), 5, jnp.int32)
    cache, token = jax.block_until_ready(steps(state, cache, token, mask, 1))  # compiles

    def timed(n: int) -> float:
        nonlocal cache, token
        start = time.perf_counter()
        cache, token = jax.block_until_ready(steps(state, cache, token, mask, n))
        return time.perf_counter() - start

    per_step = [(timed(1 + extra_steps) - timed(1)) / extra_steps for _ in range(3)]
    return float(np.median(per_step)), weight_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bloom-560m")
    parser.add_argument("--records", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--worker", choices=["hf"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        hf_worker(args.checkpoint, args.prompts, args.batch, args.new_tokens)
        return

    from teacherlm_jax.data import load_records, teacher_prompt

    records = load_records("creak", "dev")[:args.records]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_checkpoint(tmp / "model", args.shape)
        prompts = tmp / "prompts.json"
        prompts.write_text(json.dumps([teacher_prompt(r, "cot") for r in records]))
        hf = [sys.executable, __file__, "--worker", "hf", "--checkpoint", str(tmp / "model"), "--prompts",
              str(prompts), "--new-tokens", str(args.new_tokens)]
        augment = [sys.executable, "-m", "teacherlm_jax.main", "--config", "configs/augment.py", "--workdir",
                   str(tmp / "run"), f"--config.teacher.init_from={tmp / 'model'}", "--config.datasets=('creak:dev',)",
                   "--config.kinds=('cot',)", f"--config.max_records={args.records}",
                   f"--config.chunk_size={args.records}", f"--config.batch_size={args.batch}",
                   "--config.sampling.temperature=0.0", "--config.sampling.stop_at_eos=False",
                   f"--config.sampling.max_new_tokens={args.new_tokens}"]
        wall = {"augment": timed_subprocess(augment),
                "hf-batch": timed_subprocess([*hf, "--batch", str(args.batch)]),
                "hf-1": timed_subprocess([*hf, "--batch", "1"])}
        summary = json.loads((tmp / "run" / "augmented" / "creak_dev" / "summary.json").read_text())
        assert summary["tokens"] == args.records * args.new_tokens, summary["tokens"]
        step_s, weight_bytes = decode_step(str(tmp / "model"), args.batch, 256 + args.new_tokens)
    bandwidth = memory_bandwidth()
    tokens = args.records * args.new_tokens

    load = os.getloadavg()
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {args.shape}, float32, {args.records} CREAK dev CoT prompts "
          f"(byte-level tokens, mean {summary['avg_prompt_tokens']['cot']:.0f}) x {args.new_tokens} new tokens, "
          f"greedy, batch {args.batch}\n")
    print("| run | wall s (whole process) | records/s | tokens/s | augment's speedup |")
    print("|---|---|---|---|---|")
    for name, label in (("augment", "augment job (teacherlm_jax)"), ("hf-batch", f"transformers generate, batch {args.batch}"),
                        ("hf-1", "transformers generate, batch 1 (TeacherLM's recipe)")):
        s = wall[name]
        print(f"| {label} | {s:.1f} | {args.records / s:.3f} | {tokens / s:.1f} | {s / wall['augment']:.2f}x |")
    print(f"\naugment job inside: {summary['throughput']['seconds']:.1f} s generating "
          f"({summary['throughput']['compiled_programs']} compiled programs included)")
    print(f"decode step at batch {args.batch}: {1e3 * step_s:.1f} ms; weights {weight_bytes / 1e9:.2f} GB / "
          f"{bandwidth / 1e9:.1f} GB/s (numpy copy) = {1e3 * weight_bytes / bandwidth:.1f} ms bound; step at "
          f"{100 * weight_bytes / bandwidth / step_s:.0f}% of the bound")


if __name__ == "__main__":
    main()
