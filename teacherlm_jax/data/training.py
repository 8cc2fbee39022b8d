"""Training batches from datasets, for teacher stages and students: `config.data.source = "records"`.

    config.data.datasets     names the registry knows (`creak`, `creak:dev`), generic `.jsonl` files,
                             augment output directories (`WORKDIR/augmented/<dataset>`), or with
                             format "instruction", instruction `.jsonl` files
    config.data.split        split for names without one ("train")
    config.data.format       answer | cot | fundamentals | mistakes | mixed | instruction
    config.data.style        teacherlm | finetune_cot (see data/examples.py)
    config.data.kind_ratios  per-kind repeat ratios for format "mixed" (stage 2)
    config.data.filter       none | clean | answer_consistent | clean_answer_consistent: which of the
                             teacher's texts (augment output) are trained on (data/quality.py)
    config.data.decontaminate  evaluation sets to measure the training texts' n-gram overlap with
                             (data/decontamination.py)
    config.data.seq_len      tokens per row; unset (None): the longest tokenized training example, rounded
                             up to a multiple of 8, at most the model's max_position_embeddings
    config.data.fields       {record field: column} for .jsonl / `hf:` / `tfds:` datasets with other column names
    config.data.loss_on (all | target), add_eos, skip_invalid, eval_fraction

Augment output (its JSONL parts or parquet shards): a kind the augment job skipped for a record gives no
example of it (counted and logged per dataset); a truncated kind is used as written (see data/examples.py).
Texts failing `config.data.filter` are dropped, counted per reason, logged, and written with the example
counts to the run's `data_report.json` (`report` below).

Examples are tokenized once, truncated to the LAST `seq_len` tokens (counted and logged), and split
into train/eval streams by a hash of their id when `eval_fraction > 0`, so the split does not move
when datasets are reordered.
"""
from __future__ import annotations

import hashlib
import logging

import ml_collections

from teacherlm_jax.data.decontamination import REPORT as DECONTAMINATION
from teacherlm_jax.data.decontamination import contamination, eval_records
from teacherlm_jax.data.examples import (FORMATS, STYLES, TextPair, annotated, build_pairs, filter_texts,
                                        is_augmented, read_augmented, skipped_kinds)
from teacherlm_jax.data.formats import KINDS
from teacherlm_jax.data.padding import pad_token_id
from teacherlm_jax.data.quality import REASONS, check_filter
from teacherlm_jax.data.pipeline import make_batch_iterator
from teacherlm_jax.data.records import LoadReport
from teacherlm_jax.data.registry import load_instructions, load_records
from teacherlm_jax.data.specs import DatasetSpec
from teacherlm_jax.data.tokenize import Example, encode, num_truncated
from teacherlm_jax.errors import ConfigError

log = logging.getLogger(__name__)


def load_pairs(data: ml_collections.ConfigDict, report: LoadReport | None = None,
               datasets_report: dict | None = None) -> list[TextPair]:
    """The (prompt, target) texts `config.data` describes, in dataset order; `datasets_report` (if given)
    receives per dataset its records, examples, skipped kinds and filter counts."""
    return [pair for pairs in pairs_by_dataset(data, report, datasets_report).values() for pair in pairs]


def pairs_by_dataset(data: ml_collections.ConfigDict, report: LoadReport | None = None,
                     datasets_report: dict | None = None) -> dict[str, list[TextPair]]:
    """`load_pairs`, per entry of config.data.datasets."""
    fmt, style = data.format, data.get("style", "teacherlm")
    try:
        name = check_filter(data.get("filter", "none"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if fmt not in (*FORMATS, "instruction"):
        raise ConfigError(f"config.data.format={fmt!r}; expected one of {(*FORMATS, 'instruction')}")
    if style not in STYLES:
        raise ConfigError(f"config.data.style={style!r}; expected one of {STYLES}")
    datasets = tuple(data.datasets)
    if not datasets:
        raise ConfigError("config.data.datasets is empty")
    skip = bool(data.get("skip_invalid", False))
    pairs: dict[str, list[TextPair]] = {}
    kinds_found: set[str] = set()
    for spec in datasets:
        if fmt == "instruction":
            pairs.setdefault(spec, []).extend(TextPair(r.id, r.prompt, r.target)
                                              for r in load_instructions(spec, skip_invalid=skip, report=report))
            continue
        entry: dict = {}
        if is_augmented(spec):
            items = read_augmented(spec)
            entry["skipped_kinds"] = skipped_kinds(items, fmt)
            for kind, count in entry["skipped_kinds"].items():
                log.warning("%s: %d of %d records have no %r text (the augment job skipped it: prompt longer "
                            "than max_prompt_tokens, truncation='skip'); they give no %r example", spec, count,
                            len(items), kind, kind)
            items, counts = filter_texts(items, name, KINDS if fmt == "mixed" else (fmt,) if fmt in KINDS else ())
            entry["filter"] = {"name": name, **{k: counts[k] for k in ("texts", "kept", "dropped", "cut_unknown")},
                               "dropped_by_reason": {k: counts[k] for k in REASONS if counts[k]}}
            if name != "none":
                log.info("%s: filter %r kept %d of %d teacher texts; dropped %d (%s); %d of unknown cut kept",
                         spec, name, counts["kept"], counts["texts"], counts["dropped"],
                         ", ".join(f"{k}: {counts[k]}" for k in REASONS if counts[k]) or "none",
                         counts["cut_unknown"])
        else:
            dataset = DatasetSpec.parse(spec, data.get("split", "train"))
            records = load_records(dataset.source, dataset.split, skip_invalid=skip, report=report,
                                   fields=None if dataset.registered else dict(data.get("fields") or {}) or None)
            items = [annotated(r) for r in records]
            if name != "none":
                log.info("%s: not augment output; config.data.filter=%r applies to the teacher's texts only, "
                         "this dataset's own texts are used as they are", spec, name)
        ratios = dict(data.get("kind_ratios") or {})
        kinds_found.update(k for item in items for k in item.annotations)
        built = build_pairs(items, fmt, style, ratios=ratios, seed=int(data.get("seed", 0)))
        pairs.setdefault(spec, []).extend(built)
        if datasets_report is not None:
            datasets_report[spec] = {"records": len(items), "examples": len(built), **entry}
    if fmt == "mixed":
        absent = [k for k, ratio in dict(data.get("kind_ratios") or {}).items() if float(ratio) > 0 and k not in kinds_found]
        if absent:  # personalization would quietly teach the other kinds only
            raise ConfigError(f"config.data.kind_ratios asks for {absent}, but no record of config.data.datasets="
                                  f"{datasets} has such a text: add a dataset with them (JSONL with "
                                  f"{'/'.join(absent)} fields) or set their ratio to 0")
    return pairs


def decontamination_report(train: dict[str, list[TextPair]], eval_sets: tuple[str, ...]) -> dict:
    """The n-gram overlap of the training examples with `config.data.decontaminate`'s evaluation sets."""
    if isinstance(eval_sets, str):
        raise ConfigError(f"config.data.decontaminate={eval_sets!r}; expected a tuple of evaluation sets")
    try:
        evals = {spec: eval_records(spec) for spec in eval_sets}
    except ValueError as e:
        raise ConfigError(str(e)) from None
    report = contamination(train, evals)
    for spec, by_n in report["eval_sets"].items():
        log.info("decontamination: %s: %s", spec, ", ".join(
            f"{r['contaminated']} of {r['checked']} items share a {n}-gram with the training examples"
            for n, r in by_n.items()))
    return report


def in_eval_split(example_id: str, fraction: float) -> bool:
    digest = hashlib.sha256(example_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


SEQ_LEN_MULTIPLE = 8  # a derived seq_len is rounded up to this: few distinct shapes, little padding


def derive_seq_len(lengths: list[int], max_positions: int) -> int:
    """The row length for examples of `lengths` tokens: the longest rounded up to a multiple of
    SEQ_LEN_MULTIPLE, at most the model's `max_positions`."""
    longest = max(lengths)
    return min(-(-longest // SEQ_LEN_MULTIPLE) * SEQ_LEN_MULTIPLE, max_positions)


def tokenize_pairs(pairs: list[TextPair], tokenizer, data: ml_collections.ConfigDict,
                   max_positions: int | None = None) -> tuple[list[Example], int]:
    """(examples, seq_len): with config.data.seq_len set, examples keep their last seq_len tokens; unset, the
    seq_len is derived from the tokenized examples (`derive_seq_len`), and only examples over the model's
    `max_positions` are cut. Cuts are counted and logged."""
    loss_on = data.get("loss_on", "all")
    if loss_on not in ("all", "target"):
        raise ConfigError(f"config.data.loss_on={loss_on!r}; expected 'all' or 'target'")
    limit = data.seq_len or max_positions
    if not limit:
        raise ConfigError("config.data.seq_len is unset, so it is derived from the data, which needs the "
                          "model's max_position_embeddings (max_positions) to cap it; set config.data.seq_len")
    examples = [encode(tokenizer, p.prompt, p.target, max_length=limit, loss_on=loss_on,
                       add_eos=bool(data.get("add_eos", False)), id=p.id) for p in pairs]
    seq_len = data.seq_len or derive_seq_len([len(e.input_ids) for e in examples], limit)
    cut = num_truncated(examples)
    if cut:
        why = "config.data.seq_len" if data.seq_len else "the model's max_position_embeddings"
        log.warning("%d of %d examples were longer than %s=%d; kept their last %d tokens",
                    cut, len(examples), why, limit, limit)
    return examples, seq_len


class RecordBatches:
    """The records source's batch iterator (`teacherlm_jax.train.data.BatchIterator`) and its `seq_len`."""

    def __init__(self, batches, seq_len: int):
        self.batches, self.seq_len = batches, seq_len

    def __iter__(self) -> RecordBatches:
        return self

    def __next__(self) -> dict:
        return next(self.batches)

    def get_state(self) -> dict:
        return self.batches.get_state()

    def set_state(self, state: dict) -> None:
        self.batches.set_state(state)


def make_records_iterator(config: ml_collections.ConfigDict, tokenizer, process_index: int, process_count: int,
                          *, split: str = "train", report: dict | None = None,
                          max_positions: int | None = None) -> RecordBatches:
    """This process's resumable batch iterator over `config.data` (split "train" or "eval"); `report` (if
    given) receives what was read: per dataset records, examples and filter counts, this split's examples
    and its seq_len (derived from the data, capped at `max_positions`, when config.data.seq_len is unset)."""
    data = config.data
    if tokenizer is None:
        raise ConfigError("config.tokenizer is required: the records source needs a tokenizer, and config.model "
                          "has none (a new model, or a run that saved none); set config.tokenizer")
    fraction = float(data.get("eval_fraction", 0.0))
    if split == "eval" and not fraction:
        raise ConfigError("config.eval_every > 0 needs config.data.eval_fraction > 0 (held-out examples)")
    datasets: dict = {}
    by_dataset = {spec: [p for p in pairs if in_eval_split(p.id, fraction) == (split == "eval")]
                  for spec, pairs in pairs_by_dataset(data, datasets_report=datasets).items()}
    pairs = [p for spec_pairs in by_dataset.values() for p in spec_pairs]
    if report is not None:
        report.update(filter=data.get("filter", "none"), datasets=datasets, examples={split: len(pairs)})
        if split == "train" and data.get("decontaminate"):
            report[DECONTAMINATION] = decontamination_report(by_dataset, tuple(data.decontaminate))
    if not pairs:
        raise ConfigError(f"config.data: no {split} examples (datasets={tuple(data.datasets)}, "
                              f"eval_fraction={fraction}, filter={data.get('filter', 'none')!r})")
    examples, seq_len = tokenize_pairs(pairs, tokenizer, data, max_positions)
    longest = max(len(e.input_ids) + e.truncated for e in examples)
    log.info("%s data: %d examples from %s (format %s, style %s); longest %d tokens, seq_len %d (%s)", split,
             len(examples), tuple(data.datasets), data.format, data.get("style", "teacherlm"), longest, seq_len,
             "config.data.seq_len" if data.seq_len else f"the longest rounded up to a multiple of {SEQ_LEN_MULTIPLE}"
             f", at most max_position_embeddings={max_positions}")
    if report is not None:
        report.update(seq_len=seq_len, longest_example=longest, truncated_examples=num_truncated(examples))
    return RecordBatches(make_batch_iterator(
        examples, batch_size=config.batch_size, seq_len=seq_len, pad_id=pad_token_id(tokenizer),
        seed=config.seed + (0 if split == "train" else 1), shuffle=split == "train", num_epochs=None,
        process_index=process_index, process_count=process_count), seq_len)
