"""Evaluate a model zero-shot on multiple-choice tasks:
`python -m teacherlm_jax.main --config configs/eval.py --workdir DIR --config.model.init_from=CKPT`.

init_from: a Hugging Face directory or hub id, or a training run's workdir (its hf_final export, else its
latest checkpoint; the tokenizer it trained with unless config.tokenizer names one). Tasks (teacherlm_jax/eval/tasks.py): mmlu,
mmlu_2020, mmlu_2020_val, creak, ecqa, strategyqa (TeacherLM's test sets), `<registry name>:<split>`,
or a .jsonl path, e.g. --config.tasks="('mmlu','creak','/path/questions.jsonl')".
Outputs: DIR/eval/<task>/predictions.jsonl, DIR/eval/metrics.json, results.md, accuracy.png.
"""
from __future__ import annotations

import ml_collections

from configs import common


VARIANTS = {"": "bloom-560m on TeacherLM's test sets (mmlu, creak, ecqa, strategyqa); set model.init_from"}


# What each key does (docs/configs.md is generated from these: python docs/gen_config_reference.py).
DESCRIPTIONS = {
    **common.MODEL_KEYS,
    "tokenizer": "Tokenizer directory or hub id. None: the checkpoint's own (init_from's; a run's: the one it "
                 "trained with).",
    "tasks": "Tasks in order: `mmlu`, `mmlu_2020`, `mmlu_2020_val`, `creak`, `ecqa`, `strategyqa` "
             "(TeacherLM's test sets), `<registry name>:<split>` or a `.jsonl` path.",
    "mode": "`loglik`: score each choice's letter after `A: The answer is (`; `generate`: greedy Fine-tune-CoT "
            "generation, answer parsed from the text.",
    "score": "Letter score: `mean` log-prob of its tokens (the paper) or `sum` (lm-eval's acc).",
    "batch_size": "Global rows per forward pass; a multiple of the data-parallel mesh size.",
    "max_examples": "0: every question; N: N evenly spaced questions per task (a smoke run; recorded in the "
                    "metrics).",
    "max_length": "Model positions per input; longer contexts lose their first tokens (counted). 0: the "
                  "model's max_position_embeddings.",
    "max_new_tokens": "Generate mode: tokens per answer.",
    "data_dir": "Folder of the real datasets. None: $TEACHERLM_DATA_DIR, else ../shared/data.",
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg:
        raise ValueError(f"configs/eval.py takes no variant, got {arg!r}; override keys instead")
    config = common.base("eval")
    # family None: taken from the checkpoint (bloom or opt). float32 matches TeacherLM's torch eval;
    # --config.model.dtype=bfloat16 halves memory and time on TPU/GPU.
    config.model = common.model("bigscience/bloom-560m")
    config.model.family = ml_collections.FieldReference(None, field_type=str)
    config.tokenizer = common.optional(None, str)  # None: init_from's tokenizer
    config.tasks = ("mmlu", "creak", "ecqa", "strategyqa")
    config.mode = "loglik"  # loglik: score each choice's letter | generate: Fine-tune-CoT students
    config.score = "mean"  # mean log-prob of the continuation's tokens (the paper) | sum (lm-eval's acc)
    config.batch_size = 8  # global rows per forward pass; a multiple of the data-parallel mesh size
    config.max_examples = 0  # 0: every question; N: N evenly spaced questions per task (smoke runs)
    config.max_length = 0  # model positions per input; 0: the model's max_position_embeddings
    config.max_new_tokens = 256  # generate mode only
    config.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: $TEACHERLM_DATA_DIR or ../shared/data
    return config
