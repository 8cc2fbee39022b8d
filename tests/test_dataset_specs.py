"""The one dataset-spec parser (teacherlm_jax/data/specs.py): every job reads `name:split` through it."""
from __future__ import annotations

import pytest

from teacherlm_jax.data.specs import DatasetSpec


def test_registry_name_with_and_without_split():
    assert DatasetSpec.parse("creak:dev") == DatasetSpec("creak", "dev", True)
    assert DatasetSpec.parse("creak:dev").name == "creak_dev"
    assert DatasetSpec.parse("creak", "test") == DatasetSpec("creak", "test", False)
    assert DatasetSpec.parse(" creak ").name == "creak"


def test_registry_default_split_is_train_or_the_only_one():
    assert DatasetSpec.parse("creak", default_split=None).split == "train"
    assert DatasetSpec.parse("teacherlm_ecqa", default_split=None).split == "test"
    with pytest.raises(ValueError, match=r"'synthetic' has no train split; name one: \['synthetic:teacher_train'"):
        DatasetSpec.parse("synthetic", default_split=None)


def test_jsonl_paths_are_read_whole_colons_included(tmp_path):
    path = tmp_path / "a:b" / "set.jsonl"
    spec = DatasetSpec.parse(str(path))
    assert (spec.source, spec.split, spec.name, spec.jsonl) == (str(path), "", "set", True)
    with pytest.raises(ValueError, match="set.jsonl: no such file"):
        spec.check()
    path.parent.mkdir()
    path.write_text("")
    assert spec.check() is spec


def test_sources_with_their_own_colons_keep_them():
    assert DatasetSpec.parse("hf:org/set:config", "validation") == DatasetSpec("hf:org/set:config", "validation", False)
    assert DatasetSpec.parse("tfds:mnist").source == "tfds:mnist"
    assert not DatasetSpec.parse("hf:org/set").registered


def test_check_rejects_a_split_the_registry_lacks():
    with pytest.raises(ValueError, match=r"'creak:validation': creak has splits"):
        DatasetSpec.parse("creak:validation").check()
