"""Writes docs/configs.md, the configuration reference, from the config files themselves:
`python docs/gen_config_reference.py`.

Each configs/*.py `get_config(variant)` is called and its ConfigDict flattened. The shared blocks (every job's
keys, a model, the optimizer, a student) are shown once; a job's base file lists its own keys with default and
effect; every other file, variant and nested config shows only what it changes: changes without an effect to
write that share a parent key in one row (`model.*`), a variant of a few such changes in one sentence. The
effects live beside the keys in configs/ (each file's DESCRIPTIONS, configs/common.py's blocks);
tests/test_docs.py fails when docs/configs.md is stale, a key has no description, or a description names a key
no config has.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_collections

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "configs.md"
if str(ROOT) not in sys.path:  # configs/ imports from the repository root, as main does
    sys.path.insert(0, str(ROOT))

# Config files in reading order, each with the variants documented: the first is the base table,
# the others are shown as changes to it.
FILES: dict[str, tuple[str | None, ...]] = {
    "configs/train.py": (None, "tiny"),
    "configs/eval.py": (None,),
    "configs/augment.py": (None, "tiny"),
    "configs/teacher/stage1_multitask.py": (None, "tiny"),
    "configs/teacher/stage2_personalization.py": (None, "tiny"),
    "configs/teacher/stage3_specialization.py": ("cot", "fundamentals", "mistakes", "cot,tiny"),
    "configs/student/finetune.py": ("cot", "text", "manual", "fundamentals", "mistakes", "mixed", "cot,ftcot",
                                    "cot,opt", "cot,tiny"),
    "configs/pipeline.py": (None, "tiny"),
    "configs/teacher/pipeline.py": (None, "tiny"),
    "configs/demo.py": (None, "full", "tiny"),
    "configs/ablation.py": (None, "answer_first", "tiny"),
    "configs/compile.py": (None, "tiny", "bloom-1b1", "bloom-1b7", "bloom-3b", "bloom-7b1", "bloom"),
}


# Where each job's key descriptions live: beside the keys, in the config module that defines them (a dict
# DESCRIPTIONS), over configs/common.py's COMMON_KEYS.
JOB_MODULES = {"train": ("configs.train",), "eval": ("configs.eval",), "augment": ("configs.augment",),
               "pipeline": ("configs.pipeline", "configs.ablation"), "compile": ("configs.compile",)}


def _descriptions() -> dict[str, dict[str, str]]:
    common = importlib.import_module("configs.common")
    out = {}
    for job, modules in JOB_MODULES.items():
        out[job] = dict(common.COMMON_KEYS)
        for name in modules:
            out[job].update(importlib.import_module(name).DESCRIPTIONS)
    return out


DESCRIPTIONS = _descriptions()


def load(file: str, variant: str | None) -> ml_collections.ConfigDict:
    module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
    return module.get_config(variant)


def is_job(value: Any) -> bool:
    return isinstance(value, ml_collections.ConfigDict) and "job" in value


def flatten(config: ml_collections.ConfigDict, *, expand_jobs: bool = False, _prefix: str = "",
            _root: str = "", _job: str | None = None) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every field. A nested job config is one value unless `expand_jobs`;
    a dict whose key has a description (e.g. data.kind_ratios) is one value."""
    job = _job or config.get("job")
    for key, value in config.items():
        path = f"{_prefix}{key}"
        if is_job(value) and expand_jobs:
            yield from flatten(value, expand_jobs=True, _prefix=f"{path}.", _root=f"{path}.", _job=value.job)
        elif isinstance(value, ml_collections.ConfigDict) and not is_job(value) \
                and path[len(_root):] not in DESCRIPTIONS.get(job, {}):
            yield from flatten(value, expand_jobs=expand_jobs, _prefix=f"{path}.", _root=_root, _job=job)
        else:
            yield path, value


def fmt(value: Any) -> str:
    if is_job(value):
        return f"(a `{value.job}` config)"
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    text = repr(value).replace("|", "\\|")
    return f"`{text}`"


def nested_jobs(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, ml_collections.ConfigDict]]:
    for key, value in config.items():
        if is_job(value):
            yield f"{prefix}{key}", value
        elif isinstance(value, ml_collections.ConfigDict):
            yield from nested_jobs(value, f"{prefix}{key}.")


def missing_descriptions() -> list[str]:
    """Keys of a documented config (nested job configs included) that have no description."""
    missing = []
    for file, variants in FILES.items():
        for variant in variants:
            missing += [f"{file}:{variant or ''} {job}:{key}" for job, key, _ in _described_keys(load(file, variant))
                        if key not in DESCRIPTIONS.get(job, {})]
    return sorted(set(missing))


def unused_descriptions() -> list[str]:
    """Described keys that no documented config has (renamed or removed keys)."""
    used = {(job, key) for file, variants in FILES.items() for variant in variants
            for job, key, _ in _described_keys(load(file, variant))}
    used_anywhere = {key for _, key in used}
    return sorted(f"{job}:{key}" for job, keys in DESCRIPTIONS.items() for key in keys
                  if key not in used_anywhere)


def _described_keys(config: ml_collections.ConfigDict) -> Iterator[tuple[str, str, Any]]:
    for key, value in flatten(config):
        yield config.job, key, value
    for _, sub in nested_jobs(config):
        yield from _described_keys(sub)


BASE_FILES = {"train": "configs/train.py", "eval": "configs/eval.py", "augment": "configs/augment.py",
              "pipeline": "configs/pipeline.py", "compile": "configs/compile.py"}


def _shared_blocks() -> list[tuple[str, str, dict[str, Any], dict[str, str]]]:
    """(title, note, {key: default}, {key: effect}) of the blocks every config shares, shown once."""
    common = importlib.import_module("configs.common")
    pipeline = importlib.import_module("configs.pipeline")
    base = dict(flatten(common.base("JOB")))
    base["job"] = "(the job's name)"
    model = {f"model.{k}": v for k, v in flatten(common.model())}
    model.update({k: "(architecture of a new model)" for k in common.MODEL_KEYS if k not in model})
    optimizer = {f"optimizer.{k}": v for k, v in flatten(common.optimizer())}
    student = {"students.<name>.train": "(a `train` config)", "students.<name>.mode": "`'loglik'`"}
    return [
        ("Every job", "`configs/common.py: base`", base, common.COMMON_KEYS),
        ("A model", "`configs/common.py: model`; the augment job's `teacher.*` has the same keys", model,
         common.MODEL_KEYS),
        ("The optimizer", "`configs/common.py: optimizer`", optimizer, common.OPTIMIZER_KEYS),
        ("A student", "a pipeline's `students.<name>`: its training config (diffed below against "
         "`configs/train.py`) and how its evaluation scores it; optionally `sampling`, overrides of "
         "`augment.sampling` for its own augment step", student,
         {"students.<name>.train": "Its training run, a train config.",
          "students.<name>.mode": pipeline.STUDENT_MODE}),
    ]


def _shared_defaults() -> dict[str, str]:
    """{key: formatted default} of every shared key (model keys also under `teacher.`)."""
    out = {}
    for _, _, defaults, _ in _shared_blocks():
        for key, value in defaults.items():
            text = value if isinstance(value, str) and value.startswith("(") else fmt(value)
            out[key] = text
            if key.startswith("model."):
                out["teacher." + key.removeprefix("model.")] = text
    return out


def _rows(config: ml_collections.ConfigDict) -> tuple[dict[str, str], dict[str, ml_collections.ConfigDict]]:
    """({key: formatted value} of the leaves, {key: nested job config})."""
    leaves, jobs = {}, {}
    for key, value in flatten(config):
        if is_job(value):
            jobs[key] = value
        else:
            leaves[key] = fmt(value)
    return leaves, jobs


def _known(configs: dict[str, ml_collections.ConfigDict], value: ml_collections.ConfigDict) -> str | None:
    """The documented config file:variant equal to `value`, if any."""
    return next((name for name, known in configs.items() if known.to_dict() == value.to_dict()), None)


def _diff(base: ml_collections.ConfigDict, new: ml_collections.ConfigDict, configs: dict[str, ml_collections.ConfigDict],
          prefix: str = "") -> list[str]:
    """(key, value, effect) of what `new` sets differently from `base` (the effect for keys `base` lacks); a
    nested job config is compared with the same key's in `base`, or else named as the documented config it
    equals, or else compared with its job's base file."""
    old_leaves, old_jobs = _rows(base)
    new_leaves, new_jobs = _rows(new)
    effects = DESCRIPTIONS.get(new.job, {})
    rows = []
    for key in [*old_leaves, *(k for k in new_leaves if k not in old_leaves)]:
        if key not in new_leaves:
            rows.append((prefix + key, "(removed)", ""))
        elif old_leaves.get(key) != new_leaves[key]:
            rows.append((prefix + key, new_leaves[key], "" if key in old_leaves else effects.get(key, "")))
    for key in [k for k in old_jobs if k not in new_jobs]:
        rows.append((prefix + key, "(removed)", ""))
    for key, sub in new_jobs.items():
        if key in old_jobs:
            rows += _diff(old_jobs[key], sub, configs, f"{prefix}{key}.")
            continue
        known = _known(configs, sub)
        closest = known or _closest(configs, sub)
        what = f"= `{known}`" if known else f"a `{sub.job}` config: `{closest}` with the rows below"
        rows.append((prefix + key, what, effects.get(key, "")))
        if not known:
            rows += _diff(configs[closest], sub, configs, f"{prefix}{key}.")
    return rows


def _closest(configs: dict[str, ml_collections.ConfigDict], config: ml_collections.ConfigDict) -> str:
    """The config of `config`'s job documented before it that it differs least from (its job's base file on a
    tie); `configs` holds the configs documented before it, in order."""
    same_job = [BASE_FILES[config.job], *(name for name, known in configs.items() if known.job == config.job)]
    return min(same_job, key=lambda name: len(_diff(configs[name], config, configs)))


# A variant whose changes are at most this many rows, none with an effect to write, is one sentence.
INLINE_ROWS = 3
DIFF_HEADER = ["| key | value | effect (of a key the base lacks) |", "|---|---|---|"]


def _compact(rows: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Rows that differ in one key segment only (not the last), with the same value and effect, as one row
    naming the segment's values in braces: `students.{answers_only,finetune_cot}.train.batch_size`."""
    for position in range(max((key.count(".") for key, _, _ in rows), default=0)):
        groups: dict[tuple, list[int]] = {}
        for index, (key, value, effect) in enumerate(rows):
            parts = key.split(".")
            if position < len(parts) - 1:
                groups.setdefault((len(parts), *parts[:position], "*", *parts[position + 1:], value, effect),
                                  []).append(index)
        merged, out = set(), []
        for index, (key, value, effect) in enumerate(rows):
            if index in merged:
                continue
            parts = key.split(".")
            group = groups.get((len(parts), *parts[:position], "*", *parts[position + 1:], value, effect)) \
                if position < len(parts) - 1 else None
            if group and len(group) > 1:
                names = [rows[i][0].split(".")[position] for i in group]
                parts[position] = "{" + ",".join(names) + "}"
                merged.update(group)
                out.append((".".join(parts), value, effect))
            else:
                out.append((key, value, effect))
        rows = out
    return rows


# Effects already written in this document: each is written once, where its key first appears.
_WRITTEN: set[str] = set()


def _once(effect: str) -> str:
    if effect in _WRITTEN:
        return ""
    _WRITTEN.add(effect)
    return effect


def _by_parent(rows: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Rows without an effect of their own that share a parent key, as one row listing `name value` pairs:
    `teacher.stage1.model` | `n_head` `4`, `n_layer` `2`."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for key, value, effect in rows:
        parent, _, name = key.rpartition(".")
        if parent and not effect:
            groups.setdefault(parent, []).append((name, value))
    out, shown = [], set()
    for key, value, effect in rows:
        parent, _, name = key.rpartition(".")
        if not parent or effect or len(groups[parent]) == 1:
            out.append((key, value, effect))
        elif parent not in shown:
            shown.add(parent)
            out.append((parent + ".*", ", ".join(f"`{n}` {v}" for n, v in groups[parent]), ""))
    return out


def _table_rows(rows: list[tuple[str, str, str]]) -> list[str]:
    rows = [(key, value, "" if effect in _WRITTEN else effect) for key, value, effect in _compact(rows)]
    return [f"| `{key}` | {value} | {_once(effect)} |" for key, value, effect in _by_parent(rows)]


def _base_table(config: ml_collections.ConfigDict, configs: dict[str, ml_collections.ConfigDict]) -> list[str]:
    """A job's base file: every key but the shared ones left at their shared default."""
    shared = _shared_defaults()
    effects = DESCRIPTIONS.get(config.job, {})
    # Keys an earlier base file (another job's) holds with the same default and effect are not repeated.
    earlier = {name: dict(flatten(configs[name])) for name in BASE_FILES.values() if name in configs}
    rows = ["| key | default | effect |", "|---|---|---|"]
    nested, repeated = [], {}
    for key, value in flatten(config):
        if key == "job" or shared.get(key) == fmt(value):
            continue
        same = [name for name, keys in earlier.items() if key in keys and fmt(keys[key]) == fmt(value)
                and DESCRIPTIONS[configs[name].job].get(key) == effects.get(key)]
        if same and not is_job(value):
            repeated.setdefault(same[0], []).append(key)
            continue
        if is_job(value):
            known = _known(configs, value)
            rows.append(f"| `{key}` | {f'= `{known}`' if known else f'(a `{value.job}` config, below)'} | "
                        f"{_once(effects.get(key, ''))} |")
            if not known:
                nested.append((key, value))
        else:
            rows.append(f"| `{key}` | {fmt(value)} | {_once(effects.get(key, '**undocumented**'))} |")
    for name, keys in repeated.items():
        listed = ", ".join(f"`{key}`" for key in keys) if len(keys) <= 6 else f"{len(keys)} more keys"
        rows += ["", f"As in `{name}` (same default and effect): {listed}."]
    if nested:
        rows += ["", "The configs nested in it, each as its changes against the documented config it is closest to:",
                 "", *DIFF_HEADER]
        nested_rows = []
        for key, value in nested:
            closest = _closest(configs, value)
            nested_rows += [(key, f"`{closest}` with:", ""), *_diff(configs[closest], value, configs, f"{key}.")]
        rows += _table_rows(nested_rows)
    return rows


def _intro(file: str) -> list[str]:
    """The first paragraph of the file's documentation."""
    module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
    doc = (inspect.getdoc(module) or "").split("\n\n")[0]
    return [" ".join(line.strip() for line in doc.splitlines())]


def render() -> str:
    configs = {f"{file}:{v}" if v else file: load(file, v) for file, variants in FILES.items() for v in variants}
    _WRITTEN.clear()
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by docs/gen_config_reference.py from configs/*.py; do not edit by hand. -->",
        "",
        "Every job is `python -m teacherlm_jax.main --config configs/FILE.py[:VARIANT] --workdir DIR`, and any "
        "key below can be overridden on the command line: `--config.num_train_steps=100`, "
        "`--config.mesh.fsdp=4`, `--config.model.init_from=bigscience/bloom-560m`, tuples quoted as Python: "
        "`--config.tasks=\"('mmlu','creak')\"`. Keys shown as `None` take a value of their type (a path, a "
        "number) or stay unset. A key that is not listed is an error: configs are locked. Each key's effect is "
        "written beside it in `configs/` (`DESCRIPTIONS` of its file; `configs/common.py` for the shared blocks).",
        "",
        "The shared blocks come first, once. Then each job's base file lists its own keys (and a shared key only "
        "where it differs from the block's default); every other file and variant shows only what it changes "
        "against its base. A config nested in another (a pipeline's stages, students, augmentation and "
        "evaluation) is named by the documented file it equals, or shown as its changes against its job's base file. "
        "Changes under one parent key share a row (`model.*`: `n_head` `4`, `n_layer` `2`), and a variant of a few "
        "changes is one sentence.",
        "",
        "Contents: [shared blocks](#shared-blocks), " + ", ".join(f"[`{file}`](#{_anchor(file)})" for file in FILES),
        "",
        "## Shared blocks",
        "",
    ]
    for title, note, defaults, effects in _shared_blocks():
        lines += [f"### {title}", "", f"{note}.", "", "| key | default | effect |", "|---|---|---|"]
        for key, value in defaults.items():
            text = value if isinstance(value, str) and value.startswith("(") else fmt(value)
            lines.append(f"| `{key}` | {text} | {_once(effects[key])} |")
        lines.append("")
    names = list(configs)
    for file, variants in FILES.items():
        lines += [f"## {file}", "", *_intro(file), ""]
        for variant in variants:
            name = f"{file}:{variant}" if variant else file
            config = configs[name]
            before = {k: configs[k] for k in names[:names.index(name)]}
            if BASE_FILES[config.job] == name:
                lines += [f"Keys of `{name}` (job `{config.job}`):", "", *_base_table(config, before), ""]
                continue
            closest = _closest(before, config)
            rows = _table_rows(_diff(configs[closest], config, before))
            if len(rows) <= INLINE_ROWS and all(row.endswith("|  |") for row in rows):  # no effect to write
                changes = "; ".join(row.removeprefix("| ").removesuffix(" |  |").replace(" | ", " ") for row in rows)
                lines += [f"`{name}` (job `{config.job}`) is `{closest}` with {changes}.", ""]
            else:
                lines += [f"`{name}` (job `{config.job}`) is `{closest}` with:", "", *DIFF_HEADER, *rows, ""]
    return "\n".join(lines).rstrip() + "\n"


def _anchor(heading: str) -> str:
    return "".join(c for c in heading.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def main() -> None:
    missing = missing_descriptions()
    if missing:
        sys.exit("keys without a description (DESCRIPTIONS in their configs/ file):\n  " + "\n  ".join(missing))
    OUT.write_text(render(), encoding="utf-8")
    print("wrote", OUT, file=sys.stderr)


if __name__ == "__main__":
    main()
