"""Accelerator benchmark: decode steps against the bandwidth roofline, augment throughput, training MFU.

    python benchmarks/accelerator.py                       # on the GPU/TPU machine: under 8 minutes
    python benchmarks/accelerator.py --parts decode,train  # some parts only
    python benchmarks/accelerator.py --parts train --train-shapes bloom-1b7,bloom-7b1 --attention-impl einsum
    JAX_PLATFORMS=cpu python benchmarks/accelerator.py --reduced   # tiny shapes: a CPU check in ~1 minute

Runs on `jax.devices()[0]` with random weights (no download) and prints one markdown table per part:
1. decode: one bfloat16 decode step at bloom-560m, bloom-1b7 and bloom-7b1 shapes (vocab 250880), batch
   1 and 16, timed as the augment engine and `generate` run it (`time_decode`: the decode slots' own round
   program, sampling top-k 50, per-row cache columns; (time(1 + n) - time(1)) / n, median of 3), against
   the roofline (bytes of weights + bytes of KV cache) / peak memory bandwidth. The
   bandwidth comes from PEAK_BANDWIDTH by `device_kind`, else from a large on-device copy. Target:
   >= 70% of the roofline at batch 1. A shape that does not fit the device is skipped, with the reason.
2. augment: `teacherlm_jax.augment.augment_records` on CREAK train (../shared/data or
   $TEACHERLM_DATA_DIR; byte-level tokenizer), kinds cot, fundamentals and mistakes, temperature 1,
   top-k 50, stop at EOS, 128 new tokens at most, at 64 and 256 slots, on bloom-560m- and bloom-1b7-shaped
   bfloat16 models whose texts
   end at EOS with a geometric (long-tailed) length: its untied LM head gives EOS a constant logit,
   calibrated on the model's own logits so that EOS has probability ~1/32 per step under top-k 50
   (mean ~31 tokens, ~2% of texts reach 128). Compilation is warmed up on the first records first. The
   host's share of the job's time: 1 - decode steps x the engine's own step / seconds.
3. train: the trainer's own step (`make_train_step`: bfloat16 compute, float32 master weights,
   AdamW; attention by `--attention-impl`, default auto = cuDNN flash attention on a GPU; the loss
   `--loss-chunk` positions at a time) at the `--train-shapes` (default bloom-1b7), the largest batch x
   sequence (2048 first) and remat policy that
   fits the device's memory (XLA's memory analysis of the compiled step), MFU = (6N + 12 L H S) FLOPs
   per token x tokens / step time / the device's bf16 peak (`teacherlm_jax.train.metrics`). Target:
   >= 40% MFU.
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")  # GPUs: as launch/gpu.sh; before jax starts
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from teacherlm_jax.models.bloom import Bloom, BloomConfig  # noqa: E402
from teacherlm_jax.train.metrics import flops_per_token, peak_flops  # noqa: E402
from teacherlm_jax.train.step import LOSS_CHUNK  # noqa: E402
from eos_workload import EOS_PROB, MAX_NEW_TOKENS, eos_probability, solve_eos_logit  # noqa: E402

BLOOM = {"bloom-560m": (1024, 24, 16), "bloom-1b7": (2048, 24, 16), "bloom-7b1": (4096, 30, 32)}
VOCAB = 250880
TINY = dict(vocab_size=512, hidden_size=64, n_layer=2, n_head=4)  # --reduced
# Peak HBM bandwidth, bytes/s, per chip: the first entry whose words all occur in `device_kind`.
PEAK_BANDWIDTH: tuple[tuple[tuple[str, ...], float], ...] = (
    (("H100", "PCIe"), 2.0e12), (("H100",), 3.35e12), (("H200",), 4.8e12), (("A100", "40GB"), 1.555e12),
    (("A100",), 2.0e12), (("L4",), 3.0e11), (("TPU v4",), 1.2e12), (("TPU v5 lite",), 8.19e11),
    (("TPU v5",), 2.76e12), (("TPU v6 lite",), 1.64e12),
)
OPT = dict(learning_rate=1e-5, schedule="constant", warmup_steps=0, end_lr_fraction=1.0, weight_decay=0.0,
           grad_clip_norm=1.0, b1=0.9, b2=0.999, eps=1e-8)
GB = 1e9


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def memory_limit(device: jax.Device) -> int | None:
    """Bytes the device lets jax allocate, or None where it does not say (CPU)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return (stats or {}).get("bytes_limit")


def out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def measured_bandwidth(nbytes: int) -> float:
    """Bytes/s an on-device `x + 1` over `nbytes` moves (each byte read once and written once); best of 3."""
    x = jnp.ones(nbytes // 4, jnp.float32)
    add = jax.jit(lambda a: a + 1)
    add(x).block_until_ready()
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        add(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


def peak_bandwidth(device: jax.Device, measured: float) -> tuple[float, str]:
    kind = device.device_kind
    for words, bandwidth in PEAK_BANDWIDTH:
        if all(w in kind for w in words):
            return bandwidth, "spec sheet"
    return measured, "measured copy"


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _fill(key: jax.Array, shape: tuple[int, ...], dtype: Any, kind: str) -> jax.Array:
    if kind != "normal":
        return (jnp.ones if kind == "ones" else jnp.zeros)(shape, dtype)
    return jax.random.normal(key, shape, dtype) * jnp.asarray(0.02, dtype)


def random_bloom(config: BloomConfig, seed: int = 0) -> Bloom:
    """A Bloom with random weights made on device: shapes from `nnx.eval_shape`, then one small fill
    program per distinct shape (N(0, 0.02) matrices, unit LayerNorm scales, zero biases)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Bloom(config, rngs=nnx.Rngs(0))))
    key = jax.random.key(seed)

    def fill(i: int, path: Any, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        name = jax.tree_util.keystr(path)
        kind = "zeros" if "'bias'" in name else "ones" if ("layernorm" in name or "ln_f" in name) else "normal"
        return _fill(jax.random.fold_in(key, i), leaf.shape, leaf.dtype, kind)

    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    filled = [fill(i, path, leaf) for i, (path, leaf) in enumerate(leaves)]
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, filled))


def bloom_config(shape: dict[str, int], **run: Any) -> BloomConfig:
    return BloomConfig(**shape, dtype="bfloat16", param_dtype="bfloat16", **run)


def nbytes(tree: Any) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------- decode
def time_decode(model: Bloom, batch: int, context: int, steps: int) -> float:
    """Seconds per decode step of the engine's own round program (`DecodeSlots.run`: sampling at temperature 1,
    top-k 50, per-row cache columns and keys, finished rows masked; no EOS, so every row runs): `batch` rows
    whose prompts fill half of `context` cache columns, (time(1 + n) - time(1)) / n, median of 3."""
    from teacherlm_jax.generation import DecodeSlots, RowSeeds, Sampler

    width = context // 2
    slots = DecodeSlots(model, size=batch, prompt_width=width, max_new_tokens=context - width + 1,
                        sampler=Sampler(1.0, 50), eos_ids=np.array([], np.int32), pad_id=0)
    ids = np.full((batch, width), 5, np.int32)

    def timed(n: int) -> float:
        slots.reset()
        slots.insert(ids, np.ones_like(ids), np.arange(batch)[:, None], RowSeeds.of(range(batch), [0] * batch,
                                                                                      [0] * batch))
        jax.block_until_ready(slots.state)
        start = time.perf_counter()
        slots.run(n).result()
        return time.perf_counter() - start

    timed(1 + steps)  # compiles
    return statistics.median((timed(1 + steps) - timed(1)) / steps for _ in range(3))


def decode_part(shapes: dict[str, dict[str, int]], batches: Sequence[int], context: int, steps: int,
                bandwidth: float, limit: int | None, judge: bool = True) -> str:
    rows = []
    for name, shape in shapes.items():
        config = bloom_config(shape, scan_layers=False)
        abstract = nnx.eval_shape(lambda: Bloom(config, rngs=nnx.Rngs(0)))  # shapes only, and init_cache
        weights = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(abstract)))
        cache_per_row = 2 * config.n_layer * context * config.hidden_size * 2  # keys + values, bfloat16
        fits = [b for b in batches if limit is None or weights + b * cache_per_row <= 0.9 * limit]
        for b in sorted(set(batches) - set(fits)):
            need = weights + b * cache_per_row
            rows.append([name, b, context, f"{weights / GB:.2f}", f"{b * cache_per_row / GB:.3f}", "skipped",
                         f"{1e3 * need / bandwidth:.3f}", f"needs {need / GB:.1f} of {limit / GB:.1f} GB", "-"])
        if not fits:
            continue
        try:
            decoder = random_bloom(config).for_decoding()  # listed layers: the decode layout shares them
            for b in fits:
                cache = abstract.init_cache(b, context)
                cache_bytes = nbytes((cache.key, cache.value))
                step = time_decode(decoder, b, context, steps)
                bound = (weights + cache_bytes) / bandwidth
                target = ("met" if bound / step >= 0.7 else "not met") if b == 1 and judge else "-"
                rows.append([name, b, context, f"{weights / GB:.2f}", f"{cache_bytes / GB:.3f}", f"{1e3 * step:.3f}",
                             f"{1e3 * bound:.3f}", f"{100 * bound / step:.1f}%", target])
                del cache
        except Exception as e:  # noqa: BLE001 -- an out-of-memory shape is skipped, anything else raised
            if not out_of_memory(e):
                raise
            rows.append([name, "-", context, f"{weights / GB:.2f}", "-", "skipped", "-", "out of device memory", "-"])
        decoder = None
        gc.collect()
    return table(["shape", "batch", "KV slots", "weights GB", "KV cache GB", "ms/step", "roofline ms",
                  "% of roofline", "target >= 70% (batch 1)"], rows)


# --------------------------------------------------------------------------------------------- augment
def eos_logit(model: Bloom, prompts: np.ndarray, eos: int, top_k: int = 50) -> tuple[float, float]:
    """(c, p): the constant EOS logit that gives EOS probability EOS_PROB per step under temperature 1 and
    top-k, averaged over the model's own next-token logits at every position of `prompts` [rows, len];
    p: that probability for c as stored (bfloat16)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def others(state, ids):  # the k largest logits other than EOS at every position
        logits = nnx.merge(graphdef, state)(ids).reshape(-1, model.config.vocab_size)
        return jax.lax.top_k(logits.at[:, eos].set(-jnp.inf), top_k)[0]

    top = np.asarray(others(state, jnp.asarray(prompts)), np.float64)
    c = float(jnp.asarray(solve_eos_logit(top, EOS_PROB), jnp.bfloat16))  # as stored
    return c, eos_probability(top, c)


def eos_ending_model(shape: dict[str, int], eos: int, prompts: np.ndarray) -> tuple[Bloom, float, float]:
    """A random bfloat16 Bloom (untied head) whose EOS logit is a constant c: ln_f's channel 0 is fixed
    to 1 (scale 0, bias 1) and only that channel feeds EOS's column of the head (weight c), while the
    other columns ignore it. Returns (model, c, p(EOS) per step)."""
    model = random_bloom(bloom_config(shape, tie_word_embeddings=False, eos_token_id=eos))
    model.ln_f.weight[0] = 0.0
    model.ln_f.bias[0] = 1.0
    model.lm_head[0, :] = 0.0
    model.lm_head[:, eos] = 0.0
    c, p = eos_logit(model, prompts, eos)
    model.lm_head[0, eos] = c
    return model, c, p


def text_lengths(out_dir: Path) -> list[int]:
    """New tokens of every generated text in the part files (empty if their format has changed)."""
    lengths = []
    for part in sorted(out_dir.glob("part-*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            for n in (json.loads(line).get("new_tokens") or {}).values():
                lengths += n if isinstance(n, list) else [] if n is None else [n]
    return lengths


def augment_part(shapes: dict[str, dict[str, int]], slot_counts: Sequence[int], split: str, num_records: int,
                 warmup: bool) -> str:
    """The augment job's `augment_records` for each shape and slot count; the host's share of the job is
    1 - (decode steps x the engine's own step at that slot count) / the job's seconds (tail steps on fewer
    slots cost less, so this share is a lower bound)."""
    from teacherlm_jax.augment import Settings, augment_records
    from teacherlm_jax.generation.sampler import Sampling
    from teacherlm_jax.data import KINDS, load_records, teacher_prompt
    from teacherlm_jax.tokenizers import byte_tokenizer

    tokenizer = byte_tokenizer()
    records = load_records("creak", split)
    records = records[:num_records] if num_records else records
    ids = tokenizer([teacher_prompt(r, "cot") for r in records[:8]])["input_ids"]
    width = min(len(x) for x in ids)
    rows, notes = [], []
    for name, shape in shapes.items():
        model, c, p = eos_ending_model(shape, tokenizer.eos_token_id, np.array([x[-width:] for x in ids], np.int32))
        decoder = model.for_decoding()
        notes.append(f"{name}: EOS logit {c:.3f}, p(EOS) = {p:.4f} per step (target {EOS_PROB:.4f})")
        for batch in slot_counts:
            settings = Settings(kinds=KINDS, sampling=Sampling(temperature=1.0, top_k=50,
                                                               max_new_tokens=MAX_NEW_TOKENS),
                                batch_size=batch, chunk_size=max(len(records), 1))
            with tempfile.TemporaryDirectory() as tmp:
                if warmup:  # compiles the engine's programs
                    augment_records(decoder, tokenizer, records[:batch], Path(tmp) / "warmup", settings,
                                    dataset="creak")
                start = time.perf_counter()
                stats = augment_records(decoder, tokenizer, records, Path(tmp) / "run", settings, dataset="creak")
                wall = time.perf_counter() - start
                lengths = text_lengths(Path(tmp) / "run")
            seconds = stats.get("seconds") or wall
            engine = stats.get("engine") or {}
            step = time_decode(decoder, batch, engine.get("prompt_width", 256) + MAX_NEW_TOKENS - 1, 16)
            device = engine.get("decode_steps", 0) * step
            texts = stats["records"] * len(KINDS)
            rows.append([name, f"{stats['records']} x {len(KINDS)}", batch, stats["tokens"],
                         f"{stats['tokens'] / max(texts, 1):.1f}",
                         f"{100 * np.mean(np.array(lengths) < MAX_NEW_TOKENS):.1f}%" if lengths else "n/a",
                         max(lengths) if lengths else "n/a", f"{seconds:.2f}", f"{stats['tokens'] / seconds:.1f}",
                         f"{stats['records'] / seconds:.3f}", engine.get("rounds", "n/a"),
                         engine.get("decode_steps", "n/a"), f"{1e3 * step:.2f}",
                         f"{100 * max(0.0, 1 - device / seconds):.0f}%"])
    notes.append(f"{'after a warm-up run on as many records as slots' if warmup else 'compilation included'}; "
                 f"CREAK {split}")
    return "; ".join(notes) + "\n\n" + table(
        ["model", "records x kinds", "batch slots", "generated tokens", "mean tokens/text", "ended at EOS",
         "longest", "seconds", "tokens/s", "records/s", "rounds", "decode steps", "engine step ms", "host share"],
        rows)


# ----------------------------------------------------------------------------------------------- train
def train_part(shape: dict[str, int], plans: Sequence[tuple[int, int, str]], iters: int, peak: float | None,
               limit: int | None, attention: str, loss_chunk: int) -> str:
    from teacherlm_jax.sharding import DEFAULT_RULES, batch_sharding, make_mesh, param_shardings, parse_rules
    from teacherlm_jax.init_from import resolve
    from teacherlm_jax.train.optim import decay_mask, make_optimizer
    from teacherlm_jax.train.step import BATCH_KEYS, init_train_state, make_train_step, state_shardings

    header = ["shape", "params", "batch x seq", "remat", "attention", "loss_chunk", "step s", "tokens/s",
              "model TFLOP/s", "peak TFLOP/s", "MFU",
              "target >= 40%"]
    name = next((k for k, v in BLOOM.items() if (shape["hidden_size"], shape["n_layer"]) == v[:2]), "tiny")
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    rules = parse_rules(DEFAULT_RULES, mesh)
    spec = dict(family="bloom", **shape, dtype="bfloat16", param_dtype="float32", scan_layers=True,
                attention_impl=attention)
    abstract = resolve({**spec, "remat_policy": "full"}).abstract()
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    size = f"{num_params / 1e9:.2f}B" if num_params >= 1e8 else f"{num_params / 1e6:.2f}M"
    if limit is not None and 16 * num_params > 0.9 * limit:
        return table(header, [[name, size, "-", "-", attention, str(loss_chunk), "skipped", "-", "-", "-",
                               f"train state {16 * num_params / GB:.1f} GB > {limit / GB:.1f} GB", "-"]])
    tx, schedule = make_optimizer(OPT, 1000, decay_mask(abstract))
    params = resolve(spec).load_params(abstract, mesh, rules)
    shardings = state_shardings(param_shardings(abstract, mesh, rules), jax.eval_shape(tx.init, params), mesh)
    state = init_train_state(params, tx, shardings)
    h, layers, vocab = shape["hidden_size"], shape["n_layer"], shape["vocab_size"]
    saved = {"none": 16, "dots": 12, "dots_no_batch": 9, "full": 2}  # rough bf16 activations per layer, x seq x h
    chosen, reasons = None, []
    for rows, seq, remat in plans:
        loss_rows = rows * (min(seq, loss_chunk) if loss_chunk else seq)  # positions the loss holds at once
        estimate = 16 * num_params + 3 * vocab * 4 * loss_rows + rows * seq * layers * h * 2 * saved[remat]
        if limit is not None and estimate > 0.9 * limit:
            reasons.append(f"{rows}x{seq} {remat}: ~{estimate / GB:.0f} GB estimated")
            continue
        graphdef = nnx.split(resolve({**spec, "remat_policy": remat}).abstract(), nnx.Param)[0]
        step = make_train_step(graphdef, tx, schedule, mesh, rules, shardings, loss_chunk=loss_chunk)
        ids = np.random.RandomState(0).randint(0, vocab, (rows, seq)).astype(np.int32)
        batch = {k: jax.device_put(ids if k == "input_ids" else np.ones_like(ids), batch_sharding(mesh, rules))
                 for k in BATCH_KEYS}
        compiled = step.lower(state, batch).compile()
        memory = compiled.memory_analysis()
        if limit is not None and memory is not None:
            need = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
                    + memory.temp_size_in_bytes)
            if need > 0.95 * limit:
                reasons.append(f"{rows}x{seq} {remat}: {need / GB:.0f} GB compiled")
                continue
        chosen = (rows, seq, remat, compiled, batch)
        break
    if chosen is None:
        return table(header, [[name, size, "-", "-", attention, str(loss_chunk), "skipped", "-", "-", "-",
                               "no plan fits: " + "; ".join(reasons), "-"]])
    rows, seq, remat, compiled, batch = chosen
    state, metrics = compiled(state, batch)
    float(metrics["loss"])  # first run (allocation, autotuning) left out

    def one() -> None:
        nonlocal state
        state, out = compiled(state, batch)
        float(out["loss"])  # waits for the step

    start = time.perf_counter()
    for _ in range(iters):
        one()
    seconds = (time.perf_counter() - start) / iters
    tokens = rows * seq
    achieved = tokens * flops_per_token(num_params, layers, h, seq) / seconds
    mfu = achieved / peak if peak else None
    return table(header, [[name, size, f"{rows} x {seq}", remat, attention, str(loss_chunk), f"{seconds:.4f}",
                           f"{tokens / seconds:,.0f}", f"{achieved / 1e12:.3f}",
                           f"{peak / 1e12:.0f}" if peak else "n/a", f"{100 * mfu:.1f}%" if mfu else "n/a",
                           ("met" if mfu >= 0.4 else "not met") if mfu else "-"]])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reduced", action="store_true", help="tiny shapes, few steps and records (CPU check)")
    parser.add_argument("--parts", default="decode,augment,train", help="comma-separated: decode, augment, train")
    parser.add_argument("--train-shapes", default="bloom-1b7", help=f"comma-separated, of {sorted(BLOOM)}")
    parser.add_argument("--attention-impl", default="auto", help="train: model.attention_impl (auto: cudnn on a GPU)")
    parser.add_argument("--loss-chunk", type=int, default=None, help="train: config.loss_chunk (default: the "
                        "trainer's; 0: the logits of all positions at once)")
    parser.add_argument("--records", type=int, default=None,
                        help="CREAK records for augment (default: all 10,174 of train; 6 of dev with --reduced)")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - {"decode", "augment", "train"})
    if unknown:
        parser.error(f"--parts: unknown {unknown}")
    train_shapes = [s.strip() for s in args.train_shapes.split(",") if s.strip()]
    if sorted(set(train_shapes) - set(BLOOM)):
        parser.error(f"--train-shapes: unknown {sorted(set(train_shapes) - set(BLOOM))}; known {sorted(BLOOM)}")
    loss_chunk = LOSS_CHUNK if args.loss_chunk is None else args.loss_chunk
    device = jax.devices()[0]
    limit = memory_limit(device)
    measured = measured_bandwidth(2 ** 26 if args.reduced else 2 ** 30 if device.platform != "cpu" else 2 ** 28)
    bandwidth, source = peak_bandwidth(device, measured)
    peak = peak_flops(device)
    memory = "n/a" if limit is None else f"{limit / GB:.1f} GB"
    if source != "measured copy":
        source += f"; measured copy {measured / GB:,.0f} GB/s"
    print(f"# Accelerator benchmark: {device.device_kind} ({device.platform}) x {jax.device_count()}, jax "
          f"{jax.__version__}; memory {memory}; peak bandwidth {bandwidth / GB:,.0f} GB/s ({source}); peak bf16 "
          f"{'n/a' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}{'; REDUCED shapes' if args.reduced else ''}\n",
          flush=True)
    bloom = {k: dict(vocab_size=VOCAB, hidden_size=h, n_layer=n, n_head=nh) for k, (h, n, nh) in BLOOM.items()}
    steps: dict[str, Callable[[], str]] = {
        "decode": lambda: decode_part({"tiny": TINY} if args.reduced else bloom, (1, 4) if args.reduced else (1, 16),
                                      256 if args.reduced else 512, 64, bandwidth, limit, not args.reduced),
        "augment": lambda: augment_part({"tiny": TINY} if args.reduced else
                                        {k: bloom[k] for k in ("bloom-560m", "bloom-1b7")},
                                        (8,) if args.reduced else (64, 256), "dev" if args.reduced else "train",
                                        6 if args.records is None and args.reduced else args.records or 0,
                                        warmup=not args.reduced),
        "train": lambda: "\n\n".join(
            train_part(TINY if args.reduced else bloom[name],
                       [(2, 128, "full")] if args.reduced else
                       [(8, 2048, "dots_no_batch"), (8, 2048, "full"), (4, 2048, "full"),
                        (2, 2048, "full"), (1, 2048, "full"), (1, 1024, "full"), (1, 512, "full")],
                       2 if args.reduced else 5, peak, limit, args.attention_impl, loss_chunk)
            for name in (["tiny"] if args.reduced else train_shapes)),
    }
    titles = {"decode": "Decode step against the memory-bandwidth roofline (bfloat16; target >= 70% at batch 1)",
              "augment": "Augment engine on TeacherLM's workload (3 kinds, temperature 1, top-k 50, EOS, 128 new "
                         "tokens at most)",
              "train": "Training step MFU (bfloat16 compute, float32 master weights, AdamW; target >= 40%)"}
    for part in parts:
        start = time.perf_counter()
        body = steps[part]()
        print(f"## {part}: {titles[part]}\n\n{body}\n\n({part}: {time.perf_counter() - start:.0f} s)\n", flush=True)


if __name__ == "__main__":
    main()
