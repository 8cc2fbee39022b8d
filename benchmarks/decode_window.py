"""Would attending over the filled cache columns only pay? A decode step's attention, whole cache against a window.

    python benchmarks/decode_window.py

The engine's slots right-align every prompt at column P - 1 (teacherlm_jax/generation/slots.py), so at any
step the columns a live row can read lie between the start of the longest live prompt and the column of
the oldest live row: a round could attend over that window only. Two measurements on the workload of
benchmarks/engine_overhead.py (384 CREAK train records x 3 kinds, byte-level prompts made by the augment
job's `make_chunk`, 64 slots, max_new_tokens 128):

1. How wide the window is: the continuous schedule simulated with the job's prompt lengths (units of three
   kinds, a round ends once 1/8 of the slots are free, texts of geometric length, p(EOS) = 1/32 a step, cut
   at 128; a round's window also holds its own steps, so it ends ROUND_STEPS past the oldest row), in
   multiples of 32 columns, averaged over decode steps.
2. What a window costs: the decode step's attention (`attention.attend`, einsum, as the step runs it) over the
   four layers of that benchmark's model (64 rows, 8 heads of 32), on the whole cache and on a window of
   the mean width taken by a static slice and by a dynamic one. Median of 15 calls after a warm-up.
Prints a markdown table for docs/performance.md.
"""
from __future__ import annotations

import os
import platform
import random
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

SLOTS, HEADS, HEAD_DIM, LAYERS = 64, 8, 32, 4
MAX_NEW_TOKENS, EOS_PROB, KINDS = 128, 1 / 32, 3
REFILL_ROWS = SLOTS // 8  # the engine's REFILL_FRACTION
ROUND_STEPS = 8  # steps a window must leave room for (rounds of the benchmark last ~5 steps)
GRAIN = 32


def prompt_lengths(records: int = 384) -> list[int]:
    from teacherlm_jax.augment import Settings
    from teacherlm_jax.generation.sampler import Sampling
    from teacherlm_jax.augment.chunks import make_chunk
    from teacherlm_jax.data import load_records
    from teacherlm_jax.tokenizers import byte_tokenizer

    settings = Settings(sampling=Sampling(temperature=1.0, top_k=50, max_new_tokens=MAX_NEW_TOKENS),
                        batch_size=SLOTS, chunk_size=records)
    chunk = make_chunk(byte_tokenizer(), "creak", 0, load_records("creak", "train")[:records], settings, 4096)
    return [len(p.ids) for _, p in chunk.work]


def mean_window(lengths: list[int], seed: int = 0) -> tuple[float, int]:
    """(mean window in columns over decode steps, the cache's columns L)."""
    rng = random.Random(seed)
    width = max(lengths)
    columns = width + MAX_NEW_TOKENS - 1
    waiting, live, free = list(range(len(lengths))), {}, list(range(SLOTS))  # live: slot -> [prompt, steps, length]
    windows = []
    while waiting or live:
        while waiting and len(free) >= KINDS and (len(free) >= REFILL_ROWS or not live):
            for _ in range(KINDS):
                n = 1
                while rng.random() > EOS_PROB and n < MAX_NEW_TOKENS:
                    n += 1
                live[free.pop(0)] = [lengths[waiting.pop(0)], 0, n]
        while live:
            need = max(p for p, _, _ in live.values()) + max(s for _, s, _ in live.values()) + ROUND_STEPS
            windows.append(min(columns, -(-need // GRAIN) * GRAIN))
            for slot, row in list(live.items()):
                row[1] += 1
                if row[1] == row[2]:
                    del live[slot]
                    free.append(slot)
            if waiting and len(free) >= REFILL_ROWS:
                break
    return statistics.mean(windows), columns


def attention_ms(columns: int, window: int, dynamic: bool) -> float:
    from teacherlm_jax.models.attention import attend

    rng = np.random.default_rng(0)
    caches = [jnp.asarray(rng.standard_normal((SLOTS, HEADS, columns, HEAD_DIM), np.float32))
              for _ in range(2 * LAYERS)]
    q = jnp.asarray(rng.standard_normal((SLOTS, 1, HEADS, HEAD_DIM), np.float32))
    start = columns - window

    def step(q, caches, start):
        out = 0.0
        for layer in range(LAYERS):
            k, v = caches[2 * layer], caches[2 * layer + 1]
            if window < columns:
                cut = ((lambda x: jax.lax.dynamic_slice_in_dim(x, start, window, axis=2)) if dynamic
                       else (lambda x: x[:, :, columns - window:]))
                k, v = cut(k), cut(v)
            allowed = jnp.ones((SLOTS, 1, 1, k.shape[2]), bool)
            out = out + attend(q, k, v, allowed, None, jnp.float32)
        return out

    fn = jax.jit(step)
    fn(q, caches, start).block_until_ready()
    times = []
    for _ in range(15):
        begin = time.perf_counter()
        fn(q, caches, start).block_until_ready()
        times.append(time.perf_counter() - begin)
    return 1000 * statistics.median(times)


def main() -> None:
    window, columns = mean_window(prompt_lengths())
    window = int(-(-window // GRAIN) * GRAIN)
    rows = [("whole cache", columns, attention_ms(columns, columns, False)),
            ("window, static slice", window, attention_ms(columns, window, False)),
            ("window, dynamic slice", window, attention_ms(columns, window, True))]
    load = os.getloadavg()
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.2f}; "
          f"jax {jax.__version__} ({jax.default_backend()}); {SLOTS} rows, {LAYERS} layers x {HEADS} heads x "
          f"{HEAD_DIM}, float32. Simulated mean window: {window} of {columns} columns.\n")
    print("| attention over | columns | ms per step (4 layers) | vs whole cache |\n|---|---|---|---|")
    for name, width, ms in rows:
        print(f"| {name} | {width} | {ms:.1f} | {rows[0][2] / ms:.2f}x |")


if __name__ == "__main__":
    main()
