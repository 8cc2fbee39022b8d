"""The config a run used, written to its workdir instead of the console (hundreds of lines there would bury
the first progress line).

`write_config(config, workdir)` writes WORKDIR/config.json (process 0; local or gs://, through
`teacherlm_jax.paths`). A rerun with the same config leaves the file alone; a rerun with a different one
(a resume with other overrides) keeps the earlier file as `config.<UTC time of the rerun>.json` before writing
its own, so a workdir shows every config that wrote to it. Every job calls it once its checks passed (a refused
run writes nothing); a job that runs others as library calls (a pipeline's steps, each in its own sub-workdir)
calls it for each of them.
"""
from __future__ import annotations

import datetime
import logging
import os

import jax
import ml_collections
from etils import epath

from teacherlm_jax.paths import read_text, workdir_path, write_atomic

log = logging.getLogger(__name__)
CONFIG_FILE = "config.json"


def config_json(config: ml_collections.ConfigDict) -> str:
    """`config` as indented JSON, keys sorted (values JSON cannot hold, such as tuples, as lists)."""
    return config.to_json_best_effort(indent=2, sort_keys=True) + "\n"


def write_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> epath.Path:
    """WORKDIR/config.json (process 0 writes; every process gets the path); see the module docstring."""
    path = workdir_path(workdir) / CONFIG_FILE
    # A single process is process 0 without asking jax, which would start its devices: the compile job picks
    # fake ones after this.
    if jax.distributed.is_initialized() and jax.process_index() != 0:
        return path
    text = config_json(config)
    log.info("its full config: %s", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        earlier = read_text(path)
        if earlier == text:
            return path
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        write_atomic(path.with_name(f"config.{stamp}.json"), earlier)
    write_atomic(path, text)
    return path
