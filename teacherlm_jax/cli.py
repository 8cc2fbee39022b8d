"""What `python -m teacherlm_jax.main` shows a person: `--help` (jobs, config files and their variants),
`--dry_run` (the resolved config and, for a pipeline, what each step would do, and with `config.topology` each
step's fit and least time on that TPU slice), and errors a person can fix
as a few lines instead of a traceback.

A configuration, data or checkpoint error (bad override keys and values, a missing config file, a refused
config, a malformed row) prints `error: <message>` naming the key, file:line or path, with the keys a
misspelled one most likely meant, and exits with status 2; so does a fault of the machine (a full disk, a
cloud store that keeps failing: `errors.fault_message`), whose tracebacks, Orbax's threads' included, are
left out (`fault_reports`). `--verbose` or TEACHERLM_VERBOSE=1 shows the tracebacks as well. Any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import ml_collections
from absl import app, flags

from teacherlm_jax.config_checks import has_key, unknown_key_message
from teacherlm_jax.errors import CheckpointError, ConfigError, DataError, StorageError, fault_message
from teacherlm_jax.fault_reports import quiet_exit_after_fault, quiet_fault_reports
from teacherlm_jax.paths import StorageUnreachable
from teacherlm_jax.workdir_lock import WorkdirLocked

USER_ERRORS = (ConfigError, DataError, CheckpointError, WorkdirLocked, NotADirectoryError, StorageUnreachable,
               StorageError, app.UsageError)
HELP_FLAGS = ("--help", "-h", "--helpfull", "--helpshort", "-?")
USAGE = ("usage: python -m teacherlm_jax.main --config FILE[:VARIANT] --workdir DIR [--config.KEY=VALUE ...] "
         "[--dry_run] [--verbose]")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def verbose(argv: list[str]) -> bool:
    """Whether to show tracebacks of errors a person can fix: `--verbose` or TEACHERLM_VERBOSE=1."""
    return os.environ.get("TEACHERLM_VERBOSE", "") not in ("", "0") or "--verbose" in argv


def fail(message: str) -> NoReturn:
    print(f"error: {message}\n(--verbose or TEACHERLM_VERBOSE=1 shows the traceback)", file=sys.stderr)
    sys.exit(2)


def config_files(root: Path = CONFIGS) -> dict[str, tuple[str, dict[str, str]]]:
    """{path relative to the repository: (first docstring line, VARIANTS)} of every config file with a
    `get_config`, read without importing it (a broken config still lists)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        if "get_config" not in names:
            continue
        variants: dict[str, str] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "VARIANTS" for t in node.targets):
                variants = ast.literal_eval(node.value)
        first = ((ast.get_docstring(tree) or "").strip().splitlines() or [""])[0]
        found[str(path.relative_to(root.parent))] = (first.split(": `")[0].rstrip(":."), variants)
    return found


def help_text(jobs: Mapping[str, str]) -> str:
    """The `--help` page: usage, flags, jobs and config files with one line per variant."""
    lines = [USAGE, "",
             "  --config FILE[:VARIANT]  a config file below (VARIANT: one of its variants)",
             "  --workdir DIR            a folder or gs:// URL for the run's outputs",
             "  --config.KEY=VALUE       override any key, e.g. --config.num_train_steps=100",
             "  --dry_run                print the resolved config (a pipeline: each step's run / reuse / rerun "
             "and why; with --config.topology=SLICE, whether each step fits that TPU slice and its least "
             "chip-hours); run nothing",
             "  --verbose                tracebacks for configuration, data and checkpoint errors too "
             "(or TEACHERLM_VERBOSE=1)", "", "jobs (the config's `job` key):"]
    lines += [f"  {name:<10} {about}" for name, about in jobs.items()]
    lines += ["", "config files (FILE, then :VARIANT):"]
    for path, (about, variants) in config_files().items():
        lines.append(f"  {path:<40} {about}")
        for variant, what in variants.items():
            lines.append(f"    {':' + variant if variant else '(no variant)':<38} {what}")
    return "\n".join(lines)


def _config_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The config a `--config FILE[:VARIANT]` names, loaded as ml_collections does."""
    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_teacherlm_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def _overrides(argv: list[str]) -> list[str]:
    keys = []
    for arg in argv:
        if arg.startswith("--config.") or arg.startswith("--noconfig."):
            keys.append(arg.split("=", 1)[0].split("config.", 1)[1])
    return keys


def _parse_error(argv: list[str], spec: str, error: Exception) -> str:
    """What went wrong while parsing the flags, naming the flag: an override of a key the config lacks (with
    the keys it most likely meant), a value of the wrong type, a config file that fails to load."""
    try:
        config = load_config(spec)
    except Exception as e:  # noqa: BLE001 (the file's own error is the message)
        return f"--config={spec}: {type(e).__name__}: {e}"
    unknown = [key for key in _overrides(argv) if not has_key(config, key)]
    if unknown:
        return "\n".join(unknown_key_message(config, key) for key in unknown)
    return str(error)


def parse_flags(argv: list[str], jobs: Mapping[str, str]) -> list[str]:
    """absl's flag parsing, with `--help` listing `jobs` ({name: one line}) and the configs (exit 0), and a
    parse error as one message (exit 2)."""
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print(help_text(jobs))
        sys.exit(0)
    spec = _config_arg(argv)
    if spec is not None and not Path(spec.partition(":")[0]).is_file():
        known = list(config_files())
        hint = difflib.get_close_matches(spec.partition(":")[0], known, n=1, cutoff=0.85)
        fail(f"--config={spec}: no such file" + (f"; did you mean {hint[0]}?" if hint else "")
             + f" (config files: {', '.join(known)}; --help lists their variants)")
    try:
        return flags.FLAGS(argv)
    except Exception as e:
        if verbose(argv):
            raise
        fail(str(e) if spec is None else _parse_error(argv, spec, e))


def guard(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """`main` with the errors a person can fix, and machine faults, turned into one message and exit status 2
    (unless verbose); any other exception passes with its traceback."""
    def guarded(argv: list[str]) -> Any:
        quiet = not verbose(sys.argv)
        if quiet:
            quiet_fault_reports()
        try:
            return main(argv)
        except USER_ERRORS as e:
            if not quiet:
                raise
            fail(str(e))
        except Exception as e:
            message = fault_message(e)
            if message is None or not quiet:
                raise
            quiet_exit_after_fault()
            fail(message)

    return guarded


def run(main: Callable[[list[str]], Any], jobs: Mapping[str, str]) -> None:
    """`app.run(main)` with `parse_flags` and `guard`."""
    app.run(guard(main), flags_parser=lambda argv: parse_flags(argv, jobs))


def dry_run(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The resolved config and, for a pipeline, each step with what a run would do and why (with
    `config.topology`, also each step's programs compiled for that TPU slice: `pipeline.tpu_plan`)."""
    from teacherlm_jax.run_config import config_json

    text = config_json(config)
    if config.job == "pipeline":
        from teacherlm_jax.paths import workdir_path
        from teacherlm_jax.pipeline.job import make_plan

        plan = make_plan(config, workdir_path(workdir))
        text += f"\nsteps in {workdir} (step, job, action, why):\n{plan.describe()}"
        if config.get("topology"):
            from teacherlm_jax.pipeline.tpu_plan import tpu_plan_text

            text += "\n\n" + tpu_plan_text(config)
    return text
