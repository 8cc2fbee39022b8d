"""The docs match the code: docs/configs.md is what docs/gen_config_reference.py writes from configs/*.py,
every config key is described, every `--config configs/X.py[:v] --config.key=...` command in the docs
names a real variant and real keys, and relative links resolve."""
from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import ml_collections
import pytest

from teacherlm_jax.cli import config_files
from teacherlm_jax.config_checks import dotted_keys, has_key

ROOT = Path(__file__).resolve().parents[1]
# Docs whose commands, keys, config files and links are checked: all of them.
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.fixture(scope="module")
def generator():
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("gen_config_reference", ROOT / "docs" / "gen_config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_is_current(generator):
    assert (ROOT / "docs" / "configs.md").read_text(encoding="utf-8") == generator.render(), \
        "docs/configs.md is stale: run python docs/gen_config_reference.py"


def test_every_key_described_and_no_stale_description(generator):
    assert generator.missing_descriptions() == [], "describe these keys in their configs/ file's DESCRIPTIONS"
    assert generator.unused_descriptions() == [], "these described keys no longer exist in any config"


def test_every_config_file_documented(generator):
    files = {str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.py")
             if "def get_config" in p.read_text(encoding="utf-8")}
    assert files == set(generator.FILES)


def test_descriptions_sit_in_configs_and_each_is_written_once(generator):
    from configs import common, eval as eval_configs

    assert generator.DESCRIPTIONS["eval"]["score"] == eval_configs.DESCRIPTIONS["score"]
    assert generator.DESCRIPTIONS["train"]["model.dtype"] == common.MODEL_KEYS["model.dtype"]
    text = (ROOT / "docs" / "configs.md").read_text(encoding="utf-8")
    effects = {effect for keys in generator.DESCRIPTIONS.values() for effect in keys.values()}
    assert [effect for effect in effects if text.count(f"| {effect} |") > 1] == []
    # The shared blocks are written once: after its block, mesh.data has a row only where a config changes it.
    rows = [line for line in text.splitlines() if line.startswith("| `mesh.data` |")]
    assert rows[0].startswith("| `mesh.data` | `1` |") and all(" | `1` | " not in row for row in rows[1:])
    # A reference a person reads: a few hundred lines, a variant's few changes in one sentence.
    assert len(text.splitlines()) < 600
    assert "`configs/student/finetune.py:mistakes` (job `train`) is `configs/student/finetune.py:cot` with " \
           "`data.format` `'mistakes'`." in text


def test_undescribed_key_is_reported(generator, monkeypatch):
    descriptions = {job: dict(keys) for job, keys in generator.DESCRIPTIONS.items()}
    del descriptions["eval"]["score"]
    monkeypatch.setattr(generator, "DESCRIPTIONS", descriptions)
    assert "configs/eval.py: eval:score" in generator.missing_descriptions()


def test_ci_runs_the_readmes_full_test_command_and_the_readme_gives_the_fast_one():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    full = [line for line in readme.splitlines() if "python -m pytest" in line and "not slow" not in line]
    assert len(full) == 1 and (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == full[0]
    assert 'python -m pytest -q -n 2 -m "not slow" tests' in readme


def _commands(text: str) -> list[list[str]]:
    """[config spec, *shell words after it] for every `--config configs/X.py[:v]` in the text (backslash
    continuations joined; a command ends at the line's end, a backtick or the next config)."""
    text = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for match in re.finditer(r"--config[ =](configs/[\w/]+\.py(?::[\w,.-]+)?)([^`\n]*?)(?=--config[ =]configs/|`|\n|$)",
                             text):
        try:
            words = shlex.split(match.group(2))
        except ValueError:  # an unbalanced quote in prose: plain words are enough to find the keys
            words = match.group(2).split()
        commands.append([match.group(1), *words])
    return commands


def _has_key(config: ml_collections.ConfigDict, key: str) -> bool:
    return has_key(config, key)


def _load(spec: str) -> ml_collections.ConfigDict:
    file, _, variant = spec.partition(":")
    sys.path.insert(0, str(ROOT))
    module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
    return module.get_config(variant or None)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_doc_commands_name_real_configs_and_keys(doc):
    commands = _commands(doc.read_text(encoding="utf-8"))
    if doc.name in ("getting_started.md", "reproducing.md"):
        assert len(commands) >= 8, f"{doc.name}: expected the job commands, found {len(commands)}"
    for command in commands:
        spec, words = command[0], command[1:]
        if re.search(r"[A-Z]", spec):
            continue  # a placeholder: configs/FILE.py, :VARIANT, :SIZE
        config = _load(spec)
        for word in words:
            key = re.match(r"--config\.([\w.]+)=", word)
            if key:
                assert _has_key(config, key.group(1)), f"{doc.name}: {spec} has no key {key.group(1)!r}"


def test_command_parser_sees_overrides():
    commands = _commands("```bash\npython -m teacherlm_jax.main --config configs/eval.py --workdir d \\\n"
                         "    --config.model.init_from=x --config.tasks=\"('mmlu',)\"\n```")
    assert commands == [["configs/eval.py", "--workdir", "d", "--config.model.init_from=x", "--config.tasks=('mmlu',)"]]
    assert not _has_key(_load("configs/eval.py"), "model.nope")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{doc.relative_to(ROOT)}: link {target} points nowhere"


@pytest.fixture(scope="module")
def every_key() -> set[str]:
    """The keys of every variant of every config file."""
    keys = set()
    for path, (_, variants) in config_files().items():
        for variant in variants:
            keys.update(dotted_keys(_load(f"{path}:{variant}" if variant else path)))
    return keys


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_named_config_file_and_override_key_exists(doc, every_key):
    """A `--config.X` in prose (outside a command that names its config) is a key of some config; a
    `configs/...py` named anywhere is a file (a placeholder such as configs/X.py aside)."""
    text = doc.read_text(encoding="utf-8")
    for path in set(re.findall(r"\bconfigs/[\w/]+\.py", text)):
        if not re.search(r"/[A-Z]+\.py$", path):
            assert (ROOT / path).is_file(), f"{doc.name}: {path} does not exist"
    for key in set(re.findall(r"--config\.([a-z_][\w.]*[\w])", text)):
        if not set(key.split(".")) & {"key", "step"}:  # placeholders: --config.key=value, --config.<step>.<key>
            assert key in every_key, f"{doc.name}: --config.{key} is a key of no config"


def test_an_unknown_key_in_prose_is_caught(every_key):
    assert "students.finetune_cot.train.optimizer.learning_rate" in every_key
    assert "students.finetune_cot.train.learning_rate" not in every_key
