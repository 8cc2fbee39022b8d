"""The augment output as a Hugging Face dataset: parquet shards and a dataset card, beside the JSONL parts.

    DIR/augmented/<dataset>/data/train-00000-of-0000N.parquet   every record, in input order
    DIR/augmented/<dataset>/README.md                           the dataset card

`datasets.load_dataset("parquet", data_files=".../data/*.parquet")` reads the shards (and
`load_dataset(".../<dataset>")` too: the card's `configs` name them); student training reads them as it
reads the parts (`data.examples.read_augmented`). A shard row is an output record (schema in
`teacherlm_jax.augment`) less `teacher` and `sampling` (the same for every row: in the card), with a
`quality` column: {kind: flags per sample} (`data.quality`). Columns are typed from the manifest's kinds
and num_samples, so every shard has the same schema.

Written with the summary, once every part exists, from the parts only: a killed and resumed job writes
the same bytes. Each shard is written whole and renamed into place; shards of an earlier write that the
new one does not name are removed. The card is rendered from the summary (one source of truth) and
holds nothing that varies between runs (no throughput).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from etils import epath

from teacherlm_jax.data import KINDS
from teacherlm_jax.data.quality import FILTERS, FLAGS
from teacherlm_jax.paths import workdir_path, write_atomic

DATA = "data"
CARD = "README.md"
ROWS_PER_SHARD = 50_000
_COLUMNS = ("id", "question", "choices", "answer", "subject", "source", "gold", "prompts", "prompt_tokens",
            "new_tokens", "truncated", "skipped", "quality")


def schema(kinds: Sequence[str], num_samples: int) -> pa.Schema:
    """The shards' columns for these kinds; a kind's text and token count are lists when num_samples > 1."""
    text = pa.string() if num_samples == 1 else pa.list_(pa.string())
    count = pa.int64() if num_samples == 1 else pa.list_(pa.int64())
    flags = pa.struct([(f, pa.string() if f == "final_answer" else pa.bool_()) for f in FLAGS])

    def per_kind(value: pa.DataType) -> pa.DataType:
        return pa.struct([(k, value) for k in kinds])

    return pa.schema([("id", pa.string()), ("question", pa.string()), ("choices", pa.list_(pa.string())),
                      ("answer", pa.int64()), ("subject", pa.string()), ("source", pa.string()),
                      ("gold", pa.struct([(k, pa.string()) for k in KINDS])), *[(k, text) for k in kinds],
                      ("prompts", per_kind(pa.string())), ("prompt_tokens", per_kind(pa.int64())),
                      ("new_tokens", per_kind(count)), ("truncated", pa.list_(pa.string())),
                      ("skipped", pa.list_(pa.string())), ("quality", per_kind(pa.list_(flags)))])


def shard_paths(out_dir: epath.Path, rows: int, rows_per_shard: int = ROWS_PER_SHARD) -> list[epath.Path]:
    shards = max(1, -(-rows // rows_per_shard))
    return [workdir_path(out_dir) / DATA / f"train-{i:05d}-of-{shards:05d}.parquet" for i in range(shards)]


def write_dataset(out_dir: str | epath.Path, rows: list[dict[str, Any]], qualities: list[dict[str, list]],
                  summary: dict[str, Any], rows_per_shard: int = ROWS_PER_SHARD) -> list[epath.Path]:
    """The parquet shards of `rows` (with their `qualities`) and the card from `summary`; returns the shards."""
    out_dir = workdir_path(out_dir)
    kinds = summary["kinds"]
    table_schema = schema(kinds, summary["sampling"]["num_samples"])
    paths = shard_paths(out_dir, len(rows), rows_per_shard)
    paths[0].parent.mkdir(exist_ok=True)
    for stale in paths[0].parent.glob("*.parquet*"):
        if stale not in paths:
            stale.unlink()
    for i, path in enumerate(paths):
        chunk = rows[i * rows_per_shard:(i + 1) * rows_per_shard]
        records = [{**{k: row.get(k) for k in (*_COLUMNS, *kinds)}, "quality": quality}
                   for row, quality in zip(chunk, qualities[i * rows_per_shard:(i + 1) * rows_per_shard])]
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(records, schema=table_schema), sink)
        write_atomic(path, sink.getvalue().to_pybytes())
    write_atomic(out_dir / CARD, dataset_card(summary, [p.relative_to(out_dir) for p in paths]))
    return paths


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def dataset_card(summary: dict[str, Any], shards: Sequence[os.PathLike]) -> str:
    """README.md: a YAML header `datasets` reads (license, the shards as split train), then the summary as
    text: source and license, teacher and fingerprint, prompts, sampling, counts, lengths, quality."""
    name, kinds = summary.get("dataset", "augmented"), summary["kinds"]
    license_id = summary["license"] if summary["license"] not in ("unknown", "generated") else "other"
    header = "\n".join(["---", f"license: {license_id}", f"pretty_name: {json.dumps(f'TeacherLM augmentation of {name}')}",
                        "tags: [teacherlm, rationales, chain-of-thought]", "configs:", "- config_name: default",
                        "  data_files:", "  - split: train", f"    path: {DATA}/train-*.parquet", "---", ""])
    teacher, weights = summary["teacher"], summary["teacher"].get("weights") or {}
    quality = summary["quality"]
    flags = ("empty", "cut", "cut_unknown", "degenerate", "final_answer_found", "answer_consistent")
    sections = [
        f"# TeacherLM augmentation of {name}",
        "The teacher's texts (" + ", ".join(f"`{k}`" for k in kinds) + ") for every record of the source, "
        "written by teacherlm_jax's augment job. Generated text: check it before you rely on it.",
        "## Source dataset",
        _table(("source", "split", "records", "available", "max_records", "license"),
               [(summary.get("source"), summary.get("split") or "", summary["records"], summary.get("available"),
                 summary.get("max_records") or "all", summary["license"])]),
        "The license is the source data's; the teacher's texts come from the teacher below.",
        "## Teacher",
        _table(("init_from", "checkpoint", "model_type", "dtype", "fingerprint (sha256)", "by", "files", "bytes"),
               [(teacher.get("init_from"), teacher.get("checkpoint"), teacher.get("model_type"), teacher.get("dtype"),
                 weights.get("sha256"), weights.get("method"), weights.get("files"), weights.get("bytes"))]),
        "## Prompts",
        "The teacher reads `Q: {question} (A) {choice} (B) ... A: The answer is ({gold letter}).` and then the "
        "kind's cue:",
        _table(("kind", "cue"), [(k, f"`{summary['prompts'][k]}`") for k in kinds]),
        f"Prompts over {summary['max_prompt_tokens']} tokens: truncation `{summary['truncation']}` "
        "(left: the last tokens kept; skip: not generated).",
        "## Sampling",
        _table(tuple(summary["sampling"]), [tuple(summary["sampling"].values())]),
        "## Counts and lengths (generated tokens, EOS excluded)",
        _table(("kind", "samples", "avg tokens", "max tokens", "reached max_new_tokens", "avg prompt tokens",
                "truncated", "skipped"),
               [(k, summary["samples"][k], summary["avg_tokens"][k], summary["max_tokens"][k],
                 summary["reached_max_new_tokens"][k], summary["avg_prompt_tokens"][k], summary["truncated"][k],
                 summary["skipped"][k]) for k in kinds]),
        f"{summary['records']} records, {summary['tokens']} generated tokens.",
        "## Quality (texts flagged; see teacherlm_jax/data/quality.py)",
        _table(("kind", "texts", *flags), [(k, quality[k]["texts"], *(quality[k].get(f, "") for f in flags))
                                          for k in kinds]),
        "Texts each training filter (`config.data.filter`) keeps:",
        _table(("kind", *FILTERS), [(k, *(quality[k]["kept_by_filter"][f] for f in FILTERS)) for k in kinds]),
        "## Files and columns",
        "Shards: " + ", ".join(f"`{p}`" for p in shards) + ". Columns: `id, question, choices, answer, subject, "
        "source`, `gold` (the source's own texts), one column per kind (the teacher's text; a list of samples "
        "when num_samples > 1; null when skipped), `prompts`, `prompt_tokens`, `new_tokens`, `truncated`, "
        "`skipped`, `quality` {kind: [{empty, cut, degenerate, final_answer, answer_consistent}] per sample}.",
        "```python\nfrom datasets import load_dataset\n"
        f"dataset = load_dataset(\"parquet\", data_files=\"{DATA}/*.parquet\")[\"train\"]\n```",
    ]
    return header + "\n\n".join(sections) + "\n"
