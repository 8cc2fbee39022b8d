"""The teacher pipeline job (`config.job = "teacher_pipeline"`): stage 1 -> 2 -> 3 (one per kind).

Each stage trains in WORKDIR/<stage> with the training engine, which resumes a stopped stage from
its checkpoint; a stage whose export is complete (WORKDIR/<stage>/COMPLETE, written after the
Hugging Face export) is skipped, so rerunning the same command after any stop continues the work.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import ml_collections

from teacherlm_jax.errors import ConfigError
from teacherlm_jax.init_from import HF_EXPORT
from teacherlm_jax.train.loop import train

log = logging.getLogger(__name__)
COMPLETE = "COMPLETE"


def stage_export(workdir: Path, stage: str) -> Path:
    return workdir / stage / HF_EXPORT


def is_complete(workdir: Path, stage: str) -> bool:
    return (workdir / stage / COMPLETE).is_file() and (stage_export(workdir, stage) / "config.json").is_file()


def stage_config(config: ml_collections.ConfigDict, stage: str, workdir: Path) -> ml_collections.ConfigDict:
    """The stage's config, its `init_from` set to the previous stage's export."""
    stage_cfg = ml_collections.ConfigDict(config.stages[stage].to_dict())
    previous = dict(config.get("previous") or {}).get(stage)
    if previous is not None:
        if previous not in config.stages:
            raise ConfigError(f"config.previous.{stage}={previous!r} is not a stage of config.stages")
        stage_cfg.model.init_from = str(stage_export(workdir, previous))
    stage_cfg.export_hf = True
    return stage_cfg


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Trains every stage of `config.stages` in order (each after the stage it starts from)."""
    workdir = Path(workdir)
    stages = list(config.stages.keys())
    for stage in stages:
        previous = dict(config.get("previous") or {}).get(stage)
        if previous is not None and stages.index(previous) > stages.index(stage):
            raise ConfigError(f"config.previous.{stage}={previous!r} comes after {stage!r} in config.stages")
    for stage in stages:
        if is_complete(workdir, stage):
            log.info("stage %s: complete in %s, skipped", stage, workdir / stage)
            continue
        log.info("stage %s: training in %s", stage, workdir / stage)
        export = train(stage_config(config, stage, workdir), workdir / stage)
        if export is None:  # a preemption notice stopped it after a checkpoint
            raise SystemExit(143)
        if jax.process_index() == 0:
            (workdir / stage / COMPLETE).write_text(json.dumps({"export": str(export)}) + "\n")
    log.info("teacher pipeline done: %s", {s: str(stage_export(workdir, s)) for s in stages})
