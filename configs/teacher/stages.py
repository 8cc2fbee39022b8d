"""What the three teacher stages share: a training config over the records source.

Per-stage hyperparameters of TeacherLM are not public (docs/reproducing.md); the defaults here are
our choices for a bloom-560m teacher. The `tiny` variant trains a tiny BLOOM from scratch on the
project's synthetic suite with the byte-level tokenizer, for CPU tests.
"""
from __future__ import annotations

import ml_collections

from configs import common, train

TINY_MODEL = dict(vocab_size=260, hidden_size=64, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2,
                  pad_token_id=3, max_position_embeddings=512)


def parse_variant(arg: str | None, allowed: tuple[str, ...] = (), *, one_of: tuple[str, ...] = ()) -> set[str]:
    """`arg` is comma-separated words out of `tiny`, `allowed` and `one_of` (exactly one of these,
    when `one_of` is given)."""
    words = {w for w in (arg or "").split(",") if w}
    unknown = words - {"tiny", *allowed, *one_of}
    if unknown:
        raise ValueError(f"unknown variant words {sorted(unknown)}; known: {['tiny', *allowed, *one_of]}")
    if one_of and len(words & set(one_of)) != 1:
        raise ValueError(f"the variant needs exactly one of {one_of}; got {arg!r}")
    return words


def teacher_stage(*, fmt: str, datasets: tuple[str, ...], init_from: str | None, tiny: bool,
                  num_train_steps: int = 2000) -> ml_collections.ConfigDict:
    config = train.get_config("tiny" if tiny else None)
    config.data = train.data("records", loss_on="all", datasets=datasets, split="train",
                             format=fmt, style="teacherlm", kind_ratios={}, add_eos=fmt != "answer",
                             skip_invalid=False, eval_fraction=0.02)
    config.num_train_steps = num_train_steps
    config.optimizer = common.optimizer(learning_rate=2e-5, schedule="cosine", warmup_steps=100,
                                        weight_decay=0.01, grad_clip_norm=1.0)
    config.model = common.model(init_from or "bigscience/bloom-560m", dtype="bfloat16", remat_policy="full")
    config.eval_every = 500
    if tiny:
        config.model = common.model(init_from, **TINY_MODEL)
        config.tokenizer = "builtin:bytes"
        config.data.datasets = ("synthetic:teacher_train",)
        config.data.seq_len = 256
        config.data.eval_fraction = 0.05
        config.batch_size = 8
        config.num_train_steps = 40
        config.optimizer = common.optimizer(learning_rate=3e-3, schedule="cosine", warmup_steps=5,
                                            weight_decay=0.01)
        config.log_every = 5
        config.eval_every = 20
        config.eval_steps = 2
        common.checkpointing(config, every=20, keep=2)
    return config
