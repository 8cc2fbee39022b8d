"""Every config key whose default is None can be set from the command line, and arrives typed.

ml_collections refuses `--config.KEY=VALUE` for a field holding a plain None (it has no type); such
defaults must be typed placeholders (`configs.common.optional`). Each config file and documented variant
(docs/gen_config_reference.py FILES) is parsed the way `teacherlm_jax.main` parses it.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

ROOT = Path(__file__).resolve().parents[1]
# A command-line value per field type, and what it must parse to.
SAMPLES = {str: ("x", "x"), int: ("7", 7), float: ("0.5", 0.5), bool: ("true", True), tuple: ("('a',)", ("a",))}


def _documented_files() -> dict[str, tuple[str | None, ...]]:
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("gen_config_reference", ROOT / "docs" / "gen_config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FILES


FILES = _documented_files()


def none_fields(config: ml_collections.ConfigDict, prefix: str = ""):
    """(dotted key, field type or None when untyped) of every field whose value is None."""
    for key in config.keys():
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            yield from none_fields(value, f"{prefix}{key}.")
        elif value is None:
            ref = config._fields[key]  # a plain None, or a FieldReference (placeholder) holding None
            yield f"{prefix}{key}", ref.get_type() if isinstance(ref, ml_collections.FieldReference) else None


def parse(spec: str, overrides: list[str]) -> ml_collections.ConfigDict:
    """The config as `teacherlm_jax.main --config SPEC OVERRIDES...` reads it."""
    argv = ["main", f"--config={spec}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def test_every_config_file_is_listed():
    with_get_config = {str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.py")
                       if re.search(r"^def get_config\(", p.read_text(), re.M)}
    assert with_get_config == set(FILES)


@pytest.mark.parametrize("spec", [f"{file}:{v}" if v else file for file, variants in FILES.items() for v in variants])
def test_none_defaults_are_overridable_and_typed(spec):
    file, _, variant = spec.partition(":")
    fields = list(none_fields(parse(str(ROOT / file) + (f":{variant}" if variant else ""), [])))
    assert fields, f"{spec}: no None default to check"
    untyped = [key for key, field_type in fields if field_type is None]
    assert not untyped, f"{spec}: None defaults without a type cannot be overridden: {untyped}"
    overrides = {key: SAMPLES[field_type] for key, field_type in fields}
    config = parse(str(ROOT / file) + (f":{variant}" if variant else ""),
                   [f"--config.{key}={text}" for key, (text, _) in overrides.items()])
    for key, (_, expected) in overrides.items():
        value = config
        for part in key.split("."):
            value = value[part]
        assert value == expected and type(value) is type(expected), f"{spec}: {key}={value!r}"
