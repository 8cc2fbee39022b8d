"""Ahead-of-time memory check of a training step: `python -m teacherlm_jax.main --config configs/compile.py[:SIZE]
--workdir DIR`. Compiles the trainer's step for the mesh without allocating it and prints memory per device.

SIZE: a BLOOM size (bloom-560m (default), bloom-1b1, bloom-1b7, bloom-3b, bloom-7b1, bloom (176B)) with
bfloat16 compute, float32 master weights, full remat and seq_len 2048; or `tiny` (the train config's
tiny model, what tests use). Every train key can be overridden, e.g. --config.mesh.tensor=8
--config.batch_size=256 --config.grad_accum_steps=4 --config.model.remat_policy=dots; or take the model
from a checkpoint with --config.model.init_from=DIR (only its config.json is read; hub BLOOM ids need
no download).

Keys added to the train config:
  topology           a TPU slice to compile for, on any host (XLA's TPU compiler, libtpu: pip install -e ".[tpu]"):
                     gcloud's accelerator types (v4-8, v4-16, v5litepod-8 alias v5e-8, v5p-8, v6e-8, v5e-32, ...)
                     or jax's form (v5e:2x4). The mesh applies over its chips (-1 fills); every program of the
                     recipe is compiled (training step, augment engine's insert / decode_round / shrink, eval's
                     scoring and generate) and reported per chip with a roofline bound; device_memory_gib
                     defaults to the chip's HBM. Empty (default): compile the training step for fake_devices.
  fake_devices       N fake CPU devices to compile for (default 8: one v4-8 / v5e-8 / 8-GPU host);
                     0 compiles for this machine's own devices (exact numbers on the target machine).
  device_memory_gib  memory per device to check against (e.g. v5e 16, v4 32, H100 80); 0: no check.
Generation (the augment job's decode engine on the same mesh: weights in config.model.dtype, one KV cache,
one step's logits per chip, checked against v5e 16 GiB and v4 32 GiB; see docs/scaling.md):
  generation_batch_size      decode slots (rows) sharing the KV cache (default 16: configs/augment.py's
                             batch_size x num_samples); split over the mesh's data-parallel axes.
  generation_prompt_tokens   prompt width in tokens (default 512).
  generation_max_new_tokens  new tokens per row (default 512, the augment job's); the cache holds
                             prompt_tokens + max_new_tokens - 1 positions.
  generation_prefix_tokens   tokens of each prompt shared by a unit's rows (a record's question, shared by its
                             kinds), stored once in the engine's prefix pool (default 0: no pool, whole rows).
  generation_rows_per_prefix rows of a unit sharing one prefix (default 3: TeacherLM's kinds, one sample each).
"""
from __future__ import annotations

import ml_collections

from configs import common
from configs import train as train_config
from teacherlm_jax.models.bloom import BLOOM_SHAPES, bloom_shape


VARIANTS = {"": "bloom-560m's training step", "bloom-1b1": "bloom-1b1", "bloom-1b7": "bloom-1b7",
            "bloom-3b": "bloom-3b", "bloom-7b1": "bloom-7b1", "bloom": "bloom (176B)",
            "tiny": "the train config's tiny model (tests)"}


# What each key does beyond the training keys (docs/configs.md is generated from these).
DESCRIPTIONS = {
    **train_config.DESCRIPTIONS,
    "topology": "A TPU slice to compile every program of the recipe for, on any host (libtpu): gcloud's "
                "accelerator types (`v4-8`, `v5litepod-8` / `v5e-8`, `v5p-8`, `v6e-8`, `v5e-32`) or jax's "
                "form (`v5e:2x4`). Empty: the training step for `fake_devices`.",
    "fake_devices": "Compile for N fake CPU devices (a v4-8 / v5e-8 / 8-GPU host by default); 0: this "
                    "machine's own devices. Unused with `topology`.",
    "device_memory_gib": "Memory per device to check against (v5e 16, v4 32, H100 80); exit status 1 when "
                         "a program does not fit. 0: no check, or with `topology` the chip's memory.",
    "generation_batch_size": "Generation sizing (the augment job's decode engine on this mesh): decode slots "
                             "sharing one KV cache, split over the data-parallel axes.",
    "generation_prompt_tokens": "Generation sizing: prompt width in tokens; the KV cache holds prompt + "
                                "new tokens - 1 positions.",
    "generation_max_new_tokens": "Generation sizing: new tokens per row (the augment job's "
                                 "`sampling.max_new_tokens`).",
    "generation_prefix_tokens": "Generation sizing: tokens of each prompt shared by a unit's rows (a record's "
                                "question, shared by its kinds), stored once in the engine's prefix pool; "
                                "rows then hold only their own positions. 0: whole rows, no pool.",
    "generation_rows_per_prefix": "Generation sizing: rows sharing one prefix (3: TeacherLM's kinds, one "
                                  "sample each); the pool holds twice the units of one fill.",
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    size = arg or "bloom-560m"
    if size == "tiny":
        config = train_config.get_config("tiny")
    elif size in BLOOM_SHAPES or size == "bloom-176b":
        config = train_config.get_config()
        config.model = common.model(None, dtype="bfloat16", remat_policy="full", **bloom_shape(size))
        config.data = train_config.data(seq_len=2048)
        config.batch_size = 8
    else:
        raise ValueError(f"configs/compile.py: unknown variant {arg!r}; known: tiny, {', '.join(BLOOM_SHAPES)}")
    config.job = "compile"
    config.topology = ""
    config.fake_devices = 8
    config.device_memory_gib = 0.0
    config.generation_batch_size = 16
    config.generation_prompt_tokens = 512
    config.generation_max_new_tokens = 512
    config.generation_prefix_tokens = 0
    config.generation_rows_per_prefix = 3
    return config
