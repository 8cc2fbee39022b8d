"""One entry point from a dataset name to records.

`name_or_path` resolves, in order:
1. a registry name (`REGISTRY` in sources.py: creak, strategyqa, commonsenseqa, ecqa, gsm8k, mmlu,
   mmlu_2020, teacherlm_creak, teacherlm_ecqa, teacherlm_strategyqa), read from `data_dir` or the
   shared data folder ($TEACHERLM_DATA_DIR, else ../shared/data); `synthetic` (splits
   teacher_train, student_train, student_test) is generated and needs no folder;
2. a path ending `.jsonl`: the generic multiple-choice JSONL (`split` is not used);
3. `tfds:<name>`: TensorFlow Datasets (`data_dir` = the TFDS data dir);
4. `hf:<hub id>[:<config>]`, `hf:<dir>`, or a bare directory written by `save_to_disk`.
`fields` maps record fields to columns for 2-4 (see generic.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from teacherlm_jax.data import external, generic, sources
from teacherlm_jax.data.records import InstructionRecord, LoadReport, Record, collect


def load_records(name_or_path: str, split: str = "train", *, data_dir: str | None = None,
                 skip_invalid: bool = False, fields: Mapping[str, str] | None = None,
                 report: LoadReport | None = None) -> list[Record]:
    """Read every row of a dataset split. A malformed row raises `DataError` (file:line: reason);
    with `skip_invalid=True` it is skipped, logged, and added to `report` (if given)."""
    if name_or_path in sources.REGISTRY:
        if fields:
            raise ValueError(f"fields= applies to JSONL/HF/TFDS data, not to {name_or_path!r}")
        source = sources.REGISTRY[name_or_path]
        if split not in source.splits:
            raise ValueError(f"{name_or_path!r} has splits {source.splits}, not {split!r}")
        root = Path(data_dir) if data_dir else sources.default_data_dir()
        if source.needs_data_dir and not root.is_dir():
            raise FileNotFoundError(f"shared data folder {root} not found: set TEACHERLM_DATA_DIR "
                                    f"or pass data_dir= to read {name_or_path!r}")
        rows = source.read(root, split)
        label = f"{name_or_path}/{split}"
    elif name_or_path.endswith(".jsonl"):
        rows = generic.read_mc_jsonl(name_or_path, fields=fields)
        label = name_or_path
    elif name_or_path.startswith("tfds:"):
        rows = external.read_tfds(name_or_path[5:], split, data_dir=data_dir, fields=fields)
        label = f"{name_or_path}/{split}"
    elif name_or_path.startswith("hf:") or external.is_saved_hf_dataset(name_or_path):
        spec = name_or_path.removeprefix("hf:")
        rows = external.read_hf(spec, split, fields=fields)
        label = f"hf:{spec}/{split}"
    else:
        raise ValueError(f"unknown dataset {name_or_path!r}: not a registry name "
                         f"({sorted(sources.REGISTRY)}), a .jsonl path, 'tfds:<name>', 'hf:<id or dir>' "
                         f"or a save_to_disk directory")
    return collect(rows, label, skip_invalid=skip_invalid, report=report)


def load_instructions(path: str, *, skip_invalid: bool = False,
                      report: LoadReport | None = None) -> list[InstructionRecord]:
    """Read a `{"id", "prompt", "target"}` JSONL file (stage-1 data); errors as `load_records`."""
    return collect(generic.read_instruction_jsonl(path), path, skip_invalid=skip_invalid, report=report)
