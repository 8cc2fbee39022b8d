"""What a training run writes about itself beside its checkpoints, so that it resumes safely and other jobs can
`init_from` it (teacherlm_jax/init_from.py reads them): its architecture (model_config.json) and the tokenizer
it trained with (tokenizer/).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
from flax import nnx

from teacherlm_jax.errors import ConfigError
from teacherlm_jax.init_from import MODEL_CONFIG, TOKENIZER
from teacherlm_jax.paths import local_dir, read_text, workdir_path, write_atomic

log = logging.getLogger(__name__)


def check_resumable(model: nnx.Module, workdir: str | os.PathLike) -> None:
    """Refuses to resume `workdir` with another architecture, naming the fields that differ, before a
    restore would fail on a parameter's shape deep inside Orbax."""
    path = workdir_path(workdir) / MODEL_CONFIG
    if not path.is_file():  # a run from before model configs were written: the restore checks shapes
        log.warning("%s is missing: cannot check config.model against the checkpoints in %s", path, workdir)
        return
    saved, ours = json.loads(read_text(path)), json.loads(json.dumps(model.config.to_hf_dict()))  # as saved
    diffs = [f"{k}: workdir {saved.get(k, '(unset)')!r}, config {ours.get(k, '(unset)')!r}"
             for k in sorted(set(saved) | set(ours)) if saved.get(k) != ours.get(k)]
    if diffs:
        raise ConfigError(f"config.model differs from the model of the run in {workdir} ({path}):\n  "
                          + "\n  ".join(diffs) + "\nresume with the run's model settings, or train this model in "
                          "another workdir")


def write_model_config(model: nnx.Module, workdir: str | os.PathLike) -> None:
    """Records the architecture in a run's workdir so that other runs can `init_from` it."""
    write_atomic(workdir_path(workdir) / MODEL_CONFIG, json.dumps(model.config.to_hf_dict(), indent=2) + "\n")


def save_tokenizer(tokenizer: Any, workdir: str | os.PathLike) -> None:
    """Saves the run's tokenizer once (process 0) as WORKDIR/tokenizer/: `init_from` = this run then loads it."""
    out = workdir_path(workdir) / TOKENIZER
    if jax.process_index() != 0 or (out / "tokenizer_config.json").is_file():
        return
    with local_dir(out) as local:
        tokenizer.save_pretrained(str(local))
