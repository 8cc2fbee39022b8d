"""Training tokens/s: teacherlm_jax's train step against a transformers+torch AdamW loop.

    python benchmarks/train_step.py                          # bloom-560m shape, float32, batch 2 x 64
    python benchmarks/train_step.py --shape tiny --batch 8 --length 128 --iters 20
    python benchmarks/train_step.py --dtype bfloat16         # on a GPU/TPU: also prints MFU
    python benchmarks/train_step.py --skip-torch --loss-chunk 0   # the loss over all positions at once

Both sides start from the same random BloomForCausalLM and take the same steps: full-sequence
next-token loss, global-norm clipping at 1.0, AdamW (lr 1e-5, no weight decay), one batch. Ours is
the engine's jitted step (`teacherlm_jax.train.step`) on one device, its loss `--loss-chunk` positions at a
time, attention by `--attention-impl`. Prints a markdown row for docs/performance.md ("Training step") with
the step's peak memory from XLA's analysis of the compiled step (`teacherlm_jax.compile.programs.peak_bytes`).
"""
from __future__ import annotations

import argparse
import gc
import platform
import tempfile
import time

import jax
import numpy as np
import torch
from flax import nnx
from transformers import BloomConfig, BloomForCausalLM

import teacherlm_jax as tl
from teacherlm_jax.compile.job import human_bytes
from teacherlm_jax.compile.programs import peak_bytes
from teacherlm_jax.sharding import DEFAULT_RULES, make_mesh, param_shardings, parse_rules
from teacherlm_jax.train.metrics import flops_per_token, peak_flops
from teacherlm_jax.train.optim import decay_mask, make_optimizer
from teacherlm_jax.train.step import LOSS_CHUNK, init_train_state, make_train_step, state_shardings

SHAPES = {
    "bloom-560m": dict(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16),
    "tiny": dict(vocab_size=4096, hidden_size=256, n_layer=4, n_head=8),
}
OPT = dict(learning_rate=1e-5, schedule="constant", warmup_steps=0, end_lr_fraction=1.0, weight_decay=0.0,
           grad_clip_norm=1.0, b1=0.9, b2=0.999, eps=1e-8)


def timed(step, iters: int) -> tuple[float, list[float]]:
    """Seconds per step after one warm-up step (compilation for jax), and the losses."""
    losses = [step()]
    start = time.perf_counter()
    losses += [step() for _ in range(iters)]
    return (time.perf_counter() - start) / iters, losses


def torch_seconds(reference: BloomForCausalLM, ids: np.ndarray, iters: int) -> tuple[float, list[float]]:
    reference.train()
    optimizer = torch.optim.AdamW(reference.parameters(), lr=OPT["learning_rate"], betas=(OPT["b1"], OPT["b2"]),
                                  eps=OPT["eps"], weight_decay=0.0)
    ids_t = torch.as_tensor(ids)
    mask_t = torch.ones_like(ids_t)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = reference(input_ids=ids_t, attention_mask=mask_t, labels=ids_t).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), OPT["grad_clip_norm"])
        optimizer.step()
        return float(loss)

    return timed(step, iters)


def jax_seconds(directory: str, ids: np.ndarray, iters: int, dtype: str, remat: str, loss_chunk: int,
                attention: str) -> tuple[float, list[float], int, int]:
    """(seconds per step, losses, parameter count, peak bytes of the compiled step)."""
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    rules = parse_rules(DEFAULT_RULES, mesh)
    model = tl.from_pretrained(directory, dtype=dtype, remat_policy=remat, attention_impl=attention, mesh=mesh,
                               rules=rules)
    graphdef, state = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(state)
    num_params = sum(x.size for x in jax.tree.leaves(params))
    tx, schedule = make_optimizer(OPT, 1000, decay_mask(model))
    shardings = state_shardings(param_shardings(model, mesh, rules), jax.eval_shape(tx.init, params), mesh)
    del model, state
    train_step = make_train_step(graphdef, tx, schedule, mesh, rules, shardings, loss_chunk=loss_chunk)
    train_state = init_train_state(params, tx, shardings)
    batch = {"input_ids": ids.astype(np.int32), "attention_mask": np.ones_like(ids, np.int32),
             "loss_mask": np.ones_like(ids, np.int32)}
    peak = peak_bytes(train_step.lower(train_state, batch).compile())[0]
    box = [train_state]

    def step() -> float:
        box[0], metrics = train_step(box[0], batch)
        return float(metrics["loss"])  # waits for the step

    seconds, losses = timed(step, iters)
    return seconds, losses, num_params, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bloom-560m")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="teacherlm_jax compute dtype (torch always runs float32)")
    parser.add_argument("--remat", default="none", help="teacherlm_jax remat_policy")
    parser.add_argument("--loss-chunk", type=int, default=LOSS_CHUNK,
                        help="teacherlm_jax config.loss_chunk: positions per chunk of the loss (0: all at once)")
    parser.add_argument("--attention-impl", default="auto", help="teacherlm_jax model.attention_impl")
    parser.add_argument("--skip-torch", action="store_true", help="only time teacherlm_jax (e.g. on a TPU)")
    args = parser.parse_args()

    shape = SHAPES[args.shape]
    torch.manual_seed(0)
    ids = np.random.RandomState(0).randint(0, shape["vocab_size"], (args.batch, args.length))
    tokens = args.batch * args.length
    with tempfile.TemporaryDirectory() as directory:
        reference = BloomForCausalLM(BloomConfig(**shape))
        reference.save_pretrained(directory)
        torch_s = torch_losses = None
        if not args.skip_torch:
            torch_s, torch_losses = torch_seconds(reference, ids, args.iters)
        del reference
        gc.collect()  # one model's weights and optimizer state in memory at a time
        jax_s, jax_losses, num_params, peak_memory = jax_seconds(directory, ids, args.iters, args.dtype, args.remat,
                                                          args.loss_chunk, args.attention_impl)

    device = jax.devices()[0]
    peak = peak_flops(device)
    flops = tokens * flops_per_token(num_params, shape["n_layer"], shape["hidden_size"], args.length)
    mfu = f"{flops / jax_s / peak:.1%}" if peak else "n/a"
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"jax {jax.__version__} on {device.device_kind}, torch {torch.__version__}")
    print(f"first losses: jax {jax_losses[:3]}, torch {torch_losses[:3] if torch_losses else 'skipped'}")
    print("| shape | batch x len | dtype | loss_chunk | teacherlm_jax tok/s | transformers+torch tok/s | ratio | MFU | "
          "peak memory (XLA) |")
    print("|---|---|---|---|---|---|---|---|---|")
    torch_col = f"{tokens / torch_s:,.0f}" if torch_s else "-"
    ratio = f"{torch_s / jax_s:.2f}x" if torch_s else "-"
    print(f"| {args.shape} | {args.batch} x {args.length} | {args.dtype} | {args.loss_chunk} | {tokens / jax_s:,.0f} | "
          f"{torch_col} | {ratio} | {mfu} | {human_bytes(peak_memory)} |")


if __name__ == "__main__":
    main()
