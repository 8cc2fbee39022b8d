"""Forward tokens/s: teacherlm_jax against transformers+torch, same weights, same shapes, one process.

    python benchmarks/forward.py                      # bloom-560m shape, float32, batch 8 x 128
    python benchmarks/forward.py --shape tiny --iters 20

Both sides get the same random BloomForCausalLM (saved once, loaded by each). Prints a markdown row
for docs/performance.md.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from transformers import BloomConfig, BloomForCausalLM

import teacherlm_jax as tl

SHAPES = {
    "bloom-560m": dict(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16),
    "tiny": dict(vocab_size=4096, hidden_size=256, n_layer=4, n_head=8),
}


def timed(fn, iters: int) -> float:
    fn()  # warm-up (compilation for jax)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bloom-560m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    reference = BloomForCausalLM(BloomConfig(**SHAPES[args.shape])).eval()
    ids = np.random.RandomState(0).randint(0, SHAPES[args.shape]["vocab_size"], (args.batch, args.length))
    mask = np.ones_like(ids)
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        model = tl.from_pretrained(directory)

    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, mask))
    ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
    jax_s = timed(lambda: forward(state, ids_j, mask_j).block_until_ready(), args.iters)

    ids_t, mask_t = torch.as_tensor(ids), torch.as_tensor(mask)

    def torch_forward():
        with torch.inference_mode():
            reference(input_ids=ids_t, attention_mask=mask_t)

    torch_s = timed(torch_forward, args.iters)

    # Same numbers, not just the same speed.
    with torch.inference_mode():
        expected = reference(input_ids=ids_t[:1, :16], attention_mask=mask_t[:1, :16]).logits.numpy()
    got = np.asarray(forward(state, ids_j[:1, :16], mask_j[:1, :16]))
    max_diff = float(np.abs(got - expected).max())

    tokens = args.batch * args.length
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}")
    print("| shape | batch x len | teacherlm_jax tok/s | transformers+torch tok/s | ratio | max logit diff |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.shape} | {args.batch} x {args.length} | {tokens / jax_s:,.0f} | {tokens / torch_s:,.0f} | "
          f"{torch_s / jax_s:.2f}x | {max_diff:.1e} |")


if __name__ == "__main__":
    main()
