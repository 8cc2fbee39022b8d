"""Training batches from datasets, for teacher stages and students: `config.data.source = "records"`.

    config.data.datasets     names the registry knows (`creak`, `creak:dev`), generic `.jsonl` files,
                             augment output directories (`WORKDIR/augmented/<dataset>`), or with
                             format "instruction", instruction `.jsonl` files
    config.data.split        split for names without one ("train")
    config.data.format       answer | cot | fundamentals | mistakes | mixed | instruction
    config.data.style        teacherlm | finetune_cot (see data/examples.py)
    config.data.kind_ratios  per-kind repeat ratios for format "mixed" (stage 2)
    config.data.seq_len, loss_on (all | target), add_eos, skip_invalid, eval_fraction

Augment output: a kind the augment job skipped for a record gives no example of it (counted and logged
per dataset); a truncated kind is used as written (see data/examples.py).

Examples are tokenized once, truncated to the LAST `seq_len` tokens (counted and logged), and split
into train/eval streams by a hash of their id when `eval_fraction > 0`, so the split does not move
when datasets are reordered.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import ml_collections

from teacherlm_jax.data.examples import (FORMATS, STYLES, TextPair, annotated, build_pairs, read_augmented,
                                        skipped_kinds)
from teacherlm_jax.data.pipeline import make_batch_iterator
from teacherlm_jax.data.records import LoadReport
from teacherlm_jax.data.registry import load_instructions, load_records
from teacherlm_jax.data.sources import REGISTRY
from teacherlm_jax.data.tokenize import Example, encode, num_truncated

log = logging.getLogger(__name__)


class DataConfigError(ValueError):
    """A `config.data` key with a value that cannot work; the message names the key."""


def load_pairs(data: ml_collections.ConfigDict, report: LoadReport | None = None) -> list[TextPair]:
    """The (prompt, target) texts `config.data` describes, in dataset order."""
    fmt, style = data.format, data.get("style", "teacherlm")
    if fmt not in (*FORMATS, "instruction"):
        raise DataConfigError(f"config.data.format={fmt!r}; expected one of {(*FORMATS, 'instruction')}")
    if style not in STYLES:
        raise DataConfigError(f"config.data.style={style!r}; expected one of {STYLES}")
    datasets = tuple(data.datasets)
    if not datasets:
        raise DataConfigError("config.data.datasets is empty")
    skip = bool(data.get("skip_invalid", False))
    pairs: list[TextPair] = []
    for spec in datasets:
        if fmt == "instruction":
            pairs += [TextPair(r.id, r.prompt, r.target)
                      for r in load_instructions(spec, skip_invalid=skip, report=report)]
            continue
        if Path(spec).is_dir() and list(Path(spec).glob("*.jsonl")):
            items = read_augmented(spec)
            for kind, count in skipped_kinds(items, fmt).items():
                log.warning("%s: %d of %d records have no %r text (the augment job skipped it: prompt longer "
                            "than max_prompt_tokens, truncation='skip'); they give no %r example", spec, count,
                            len(items), kind, kind)
        else:
            name, sep, split = spec.rpartition(":")
            if not sep or name not in REGISTRY:  # `hf:...` / `tfds:...` / paths carry their own colons
                name, split = spec, ""
            records = load_records(name, split or data.get("split", "train"), skip_invalid=skip, report=report)
            items = [annotated(r) for r in records]
        ratios = dict(data.get("kind_ratios") or {})
        pairs += build_pairs(items, fmt, style, ratios=ratios, seed=int(data.get("seed", 0)))
    return pairs


def in_eval_split(example_id: str, fraction: float) -> bool:
    digest = hashlib.sha256(example_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def tokenize_pairs(pairs: list[TextPair], tokenizer, data: ml_collections.ConfigDict) -> list[Example]:
    loss_on = data.get("loss_on", "all")
    if loss_on not in ("all", "target"):
        raise DataConfigError(f"config.data.loss_on={loss_on!r}; expected 'all' or 'target'")
    examples = [encode(tokenizer, p.prompt, p.target, max_length=data.seq_len, loss_on=loss_on,
                       add_eos=bool(data.get("add_eos", False)), id=p.id) for p in pairs]
    cut = num_truncated(examples)
    if cut:
        log.warning("%d of %d examples were longer than config.data.seq_len=%d; kept their last %d tokens",
                    cut, len(examples), data.seq_len, data.seq_len)
    return examples


def make_records_iterator(config: ml_collections.ConfigDict, tokenizer, process_index: int, process_count: int,
                          *, split: str = "train"):
    """This process's resumable batch iterator over `config.data` (split "train" or "eval")."""
    data = config.data
    if tokenizer is None:
        raise DataConfigError("config.tokenizer: the records source needs a tokenizer (a checkpoint directory)")
    fraction = float(data.get("eval_fraction", 0.0))
    if split == "eval" and not fraction:
        raise DataConfigError("config.eval_every > 0 needs config.data.eval_fraction > 0 (held-out examples)")
    pairs = [p for p in load_pairs(data) if in_eval_split(p.id, fraction) == (split == "eval")]
    if not pairs:
        raise DataConfigError(f"config.data: no {split} examples (datasets={tuple(data.datasets)}, "
                              f"eval_fraction={fraction})")
    examples = tokenize_pairs(pairs, tokenizer, data)
    log.info("%s data: %d examples from %s (format %s, style %s)", split, len(examples), tuple(data.datasets),
             data.format, data.get("style", "teacherlm"))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return make_batch_iterator(examples, batch_size=config.batch_size, seq_len=data.seq_len, pad_id=pad_id,
                               seed=config.seed + (0 if split == "train" else 1), shuffle=split == "train",
                               num_epochs=None, process_index=process_index, process_count=process_count)
