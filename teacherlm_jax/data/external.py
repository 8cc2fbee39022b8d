"""Hugging Face `datasets` and TensorFlow Datasets readers (rows mapped as in generic.py).

- `hf:<hub id>[:<config>]` -> `datasets.load_dataset(id, config, split=split)`; `hf:<local dir>` or a
  bare local directory written by `save_to_disk` -> `datasets.load_from_disk` (a `DatasetDict` is
  indexed by `split`; a single saved `Dataset` is used whatever `split` says).
- `tfds:<name>` -> `tfds.data_source(name, split=split, data_dir=data_dir, download=False)`. This
  needs no TensorFlow, but only reads datasets already prepared in the `array_record` file format
  (`builder.download_and_prepare(file_format="array_record")`); others raise an error saying so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from teacherlm_jax.data.generic import check_fields, record_from_row
from teacherlm_jax.data.records import Row
from teacherlm_jax.errors import DataError


def is_saved_hf_dataset(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / f).is_file() for f in ("dataset_dict.json", "state.json"))


def _rows(table: Sequence[Mapping[str, Any]], where: str, split: str, source: str,
          fields: Mapping[str, str] | None, columns: Sequence[str]) -> Iterator[Row]:
    full = check_fields(fields)
    missing = [full[k] for k in ("question", "choices", "answer") if full[k] not in columns]
    if missing:
        raise DataError(where, f"columns {missing} not in the dataset's columns {list(columns)}; "
                               f"pass fields={{record field: column}}")
    for i in range(len(table)):
        yield f"{where}[{i}]", (lambda i=i: record_from_row(
            table[i], full, source=source, default_id=f"{split}-{i}"))


def read_hf(spec: str, split: str, *, fields: Mapping[str, str] | None = None) -> Iterator[Row]:
    """`spec` is a local `save_to_disk` directory or `<hub id>[:<config>]`."""
    import datasets  # heavy import, only when used

    if is_saved_hf_dataset(spec):
        ds = datasets.load_from_disk(spec)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(spec, f"split {split!r} not in {list(ds)}")
            ds = ds[split]
        source = Path(spec).name
    else:
        hub_id, _, config = spec.partition(":")
        ds = datasets.load_dataset(hub_id, config or None, split=split)
        source = hub_id.rsplit("/", 1)[-1]
    return _rows(ds, f"hf:{spec}/{split}", split, source, fields, ds.column_names)


def read_tfds(name: str, split: str, *, data_dir: str | None,
              fields: Mapping[str, str] | None = None) -> Iterator[Row]:
    import tensorflow_datasets as tfds  # heavy import, only when used

    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except (NotImplementedError, ValueError, AssertionError) as e:
        first_line = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"tfds:{name}/{split}",
                        f"cannot open as a TFDS data source ({first_line}); it must already be "
                        f"prepared under data_dir={data_dir!r} in the array_record file format, "
                        f"which TFDS reads without TensorFlow") from e
    columns = list(source.dataset_info.features.keys())
    return _rows(source, f"tfds:{name}/{split}", split, name.split("/")[0], fields, columns)
