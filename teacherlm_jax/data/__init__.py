"""Data: one record type from every source, TeacherLM's texts, tokenization and resumable batches.

See registry.py (dataset names), formats.py (texts), tokenize.py (loss masks), pipeline.py (batches).
pipeline.py's names load on first use: it imports grain (and through it orbax), which only training needs,
and every job's start (generation, scoring, the lm-eval backend) imports this package.
"""
import importlib
from typing import Any

from teacherlm_jax.data.formats import (KIND_PROMPTS, KINDS, answered_block, eval_context, finetune_cot_prompt,
                                        question_block, remove_duplicated_block, teacher_prompt)
from teacherlm_jax.data.records import InstructionRecord, LoadReport, Record, SkippedRow
from teacherlm_jax.data.registry import load_instructions, load_records
from teacherlm_jax.data.sources import REGISTRY, default_data_dir
from teacherlm_jax.data.tokenize import Example, encode, num_truncated
from teacherlm_jax.errors import DataError

__all__ = [
    "KINDS", "KIND_PROMPTS", "REGISTRY", "DataError", "Example", "InstructionRecord", "LoadReport",
    "Record", "SkippedRow", "answered_block", "collate", "default_data_dir", "encode", "eval_context",
    "finetune_cot_prompt", "load_instructions", "load_records", "make_batch_iterator", "num_truncated", "question_block",
    "remove_duplicated_block", "teacher_prompt",
]

_LAZY = {"collate": "teacherlm_jax.data.pipeline", "make_batch_iterator": "teacherlm_jax.data.pipeline"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
