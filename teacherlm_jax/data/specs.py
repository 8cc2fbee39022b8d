"""Dataset specs: the one reader of the strings configs name datasets by (`creak`, `creak:dev`, a path).

Rules, in order:
1. a spec ending `.jsonl` is a generic JSONL file, read whole: it has no split (`split == ""`), and every
   character is part of the path, colons included;
2. `<registry name>:<split>` names a split of a registered dataset (registry names hold no colon);
3. anything else is a source as a whole, `default_split` its split: a registry name alone, or a source that
   carries its own colons (`hf:<hub id>[:<config>]`, `tfds:<name>`, a `save_to_disk` directory), which
   `load_records` reads.

`default_split=None` asks for a registered dataset's default split: `train`, else its only split.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from teacherlm_jax.data.sources import REGISTRY
from teacherlm_jax.paths import workdir_path


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    source: str  # a registry name, or what load_records reads as a whole (a .jsonl path, `hf:...`, `tfds:...`)
    split: str  # "" for a JSONL file
    split_named: bool  # the spec named the split (`creak:dev`) rather than taking the default

    @classmethod
    def parse(cls, spec: str, default_split: str | None = "train") -> DatasetSpec:
        """The spec's source and split (see the module docstring); ValueError for a registered dataset
        without a train split when `default_split` is None and it has several."""
        spec = spec.strip()
        if spec.endswith(".jsonl"):
            return cls(spec, "", False)
        name, sep, split = spec.partition(":")
        if sep and name in REGISTRY:
            return cls(name, split, True)
        if default_split is None and spec in REGISTRY:
            splits = REGISTRY[spec].splits
            if "train" not in splits and len(splits) > 1:
                raise ValueError(f"{spec!r} has no train split; name one: {[f'{spec}:{s}' for s in splits]}")
            default_split = "train" if "train" in splits else splits[0]
        return cls(spec, default_split or "train", False)

    @property
    def registered(self) -> bool:
        return self.source in REGISTRY

    @property
    def jsonl(self) -> bool:
        return self.source.endswith(".jsonl")

    @property
    def name(self) -> str:
        """A file- and key-safe name: a JSONL file's stem; `creak`, or `creak_dev` when the split was named."""
        if self.jsonl:
            return Path(self.source).stem
        return f"{self.source}_{self.split}" if self.split_named else self.source

    def check(self) -> DatasetSpec:
        """Itself, once a registered split exists and a JSONL file is there; ValueError naming the spec if not."""
        if self.jsonl and not workdir_path(self.source).is_file():  # a local path or a URL
            raise ValueError(f"{self.source}: no such file")
        if self.registered and self.split not in REGISTRY[self.source].splits:
            spec = f"{self.source}:{self.split}" if self.split_named else self.source
            raise ValueError(f"{spec!r}: {self.source} has splits {REGISTRY[self.source].splits}")
        return self
