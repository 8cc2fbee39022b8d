"""Train (or fine-tune) a causal LM: `python -m teacherlm_jax.main --config configs/train.py[:VARIANT] --workdir DIR`.

Variants:
  (none)  bloom-560m from the hub, constant LR 6e-6 (TeacherLM's student recipe), bfloat16 compute.
  tiny    a tiny BLOOM from scratch on a synthetic dataset: about a minute on one CPU; what tests use.
Any key can be overridden: --config.num_train_steps=20 --config.mesh.fsdp=2 --config.model.init_from=DIR
"""
from __future__ import annotations

import ml_collections

from configs import common


def data(source: str = "synthetic_lm", *, seq_len: int | None = None, loss_on: str = "all", vocab: int | None = None,
         filter: str = "none", decontaminate: tuple[str, ...] = (),  # noqa: A002 (`filter`: the issue's key)
         **kwargs) -> ml_collections.ConfigDict:
    """Training data; `teacherlm_jax.train.data.make_train_data` reads this section.

    synthetic_lm: arithmetic token progressions (learnable, so loss falls), `vocab` symbols,
    rows of random length in [seq_len/2, seq_len] right-padded; loss_on = all | target (second half).
    records: `seq_len` None (unset) takes the longest tokenized training example, rounded up to a multiple of 8,
    at most the model's max_position_embeddings (teacherlm_jax/data/training.py); set, longer examples are cut.
    records: `filter` = none | clean | answer_consistent | clean_answer_consistent picks the teacher's
    texts (augment output) trained on (teacherlm_jax/data/quality.py); drops are counted in data_report.json.
    records: `fields` maps record fields to columns of .jsonl, `hf:` and `tfds:` datasets named otherwise, e.g.
    {"question": "query", "choices": "options", "answer": "label"} (teacherlm_jax/data/generic.py).
    records: `decontaminate` names evaluation sets (as the eval job's config.tasks) whose n-gram overlap with the
    training examples the run reports in decontamination.json/.md (teacherlm_jax/data/decontamination.py).
    """
    return ml_collections.ConfigDict(dict(source=source, seq_len=common.optional(seq_len, int), loss_on=loss_on,
                                          vocab=common.optional(vocab, int), filter=filter,
                                          decontaminate=tuple(decontaminate), fields={}, **kwargs))


# Variant (after `:`) -> what it is; "" is the file alone. Listed by `--help`; tests build each.
VARIANTS = {"": "bloom-560m from the hub, constant LR 6e-6 (TeacherLM's student recipe), bfloat16 compute",
            "tiny": "a tiny BLOOM from scratch on a synthetic dataset: about a minute on one CPU (tests)"}


# What each key does (docs/configs.md is generated from these: python docs/gen_config_reference.py).
DESCRIPTIONS = {
    **common.MODEL_KEYS, **common.OPTIMIZER_KEYS,
    "tokenizer": "Tokenizer directory or hub id (`builtin:bytes`: the byte-level tokenizer). None: "
                 "model.init_from's (a run's: the one it trained with); a new model then has none, which only "
                 "the synthetic_lm source allows.",
    "data.source": "`synthetic_lm` (arithmetic token progressions, no tokenizer) or `records` (datasets through "
                   "TeacherLM's text formats).",
    "data.seq_len": "Tokens per row; longer examples keep their last seq_len tokens (counted and logged); at most "
                    "the model's max_position_embeddings. None (records only): the longest tokenized training "
                    "example rounded up to a multiple of 8, at most max_position_embeddings (longer examples cut).",
    "data.loss_on": "`all` tokens (TeacherLM) or only the `target` (the completion; Fine-tune-CoT).",
    "data.vocab": "synthetic_lm: number of symbols (token ids 1..vocab); at most model.vocab_size - 1.",
    "data.datasets": "records: registry names (`creak`, `creak:dev`), generic multiple-choice `.jsonl` files, "
                     "augment output directories (`AUGMENT_WORKDIR/augmented/<dataset>`), `synthetic:<split>`; "
                     "instruction `.jsonl` with format `instruction`.",
    "data.split": "records: split for dataset names given without one.",
    "data.format": "records: what is taught: `answer`, `cot`, `fundamentals`, `mistakes`, `mixed` (every kind "
                   "as its own example) or `instruction` (prompt/target JSONL).",
    "data.style": "records: text layout: `teacherlm` (teacher prompt + continuation) or `finetune_cot` "
                  "(`{question} (A) .. ###` + ` <rationale> --> X`).",
    "data.kind_ratios": "records, format `mixed`: how often each kind's examples are repeated relative to the "
                        "others ({} : once each).",
    "data.add_eos": "records: append the EOS token to the target, so a generating model learns to stop.",
    "data.filter": "records: which of the teacher's texts (augment output) are trained on: `none`, `clean` (not "
                   "empty, not cut at max_new_tokens, not degenerate), `answer_consistent` (chains of thought whose "
                   "final answer is the gold one; Fine-tune-CoT) or `clean_answer_consistent`; drops per reason "
                   "are logged and written to WORKDIR/data_report.json (teacherlm_jax/data/quality.py).",
    "data.decontaminate": "records: evaluation sets (named as the eval job's `tasks`) whose word 13- and 8-gram "
                          "overlap with the training examples the run writes to WORKDIR/decontamination.json/.md.",
    "data.fields": "records: {record field: column} for `.jsonl`, `hf:` and `tfds:` datasets whose columns are "
                   "named otherwise (e.g. `{'question': 'query', 'answer': 'label'}`); {}: the fields' own names.",
    "data.skip_invalid": "records: skip malformed rows (counted and logged) instead of stopping at the first.",
    "data.eval_fraction": "records: fraction of examples held out for eval_every (chosen by a hash of the id, "
                          "stable when datasets are reordered).",
    "batch_size": "Global batch in rows, over all processes and devices; divisible by the data-parallel size "
                  "x grad_accum_steps.",
    "grad_accum_steps": "Microbatches per optimizer step (a scan), to fit a large batch in less memory.",
    "loss_chunk": "Sequence positions whose logits the loss computes at once: the step holds ~3 float32 "
                  "[rows, loss_chunk, vocab] arrays, never the whole [rows, seq_len, vocab] logits; the gradient "
                  "is made chunk by chunk in the forward pass (no extra head pass). 0, or rows no longer than it: all "
                  "positions at once.",
    "num_train_steps": "Optimizer steps in total (a resumed run continues to this number).",
    "log_every": "Write loss, learning rate, gradient norm and throughput to metrics.jsonl/TensorBoard every N "
                 "steps.",
    "eval_every": "Held-out loss every N steps and at the end, on eval_steps batches; 0: never.",
    "eval_steps": "Batches per held-out evaluation.",
    "checkpoint_every": "Save an Orbax checkpoint every N steps (and at the end, and on SIGTERM).",
    "keep_checkpoints": "Checkpoints kept; older ones are deleted.",
    "async_checkpoints": "Save in a background thread while training continues.",
    "export_hf": "Write WORKDIR/hf_final (safetensors + config + tokenizer) at the end: what later stages, "
                 "augment and eval load.",
    "plot": "Draw WORKDIR/loss_curve.png at the end.",
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base("train")
    config.model = common.model("bigscience/bloom-560m", dtype="bfloat16")
    config.tokenizer = common.optional(None, str)  # None: config.model.init_from's tokenizer
    config.data = data(seq_len=2048, vocab=1024)  # a runnable placeholder until real datasets are wired in
    config.batch_size = 64  # global, over all processes and devices
    config.grad_accum_steps = 1  # microbatches per step (a scan): batch_size must divide evenly
    # Sequence positions whose logits the loss computes at once (teacherlm_jax/train/step.py): the step never
    # holds [rows, seq_len, vocab] float32 logits, only ~3 arrays of [rows, loss_chunk, vocab]; 0 (or rows no longer
    # than loss_chunk): all at once.
    config.loss_chunk = 256
    config.num_train_steps = 1000
    config.optimizer = common.optimizer(learning_rate=6e-6, schedule="constant", grad_clip_norm=1.0)
    config.log_every = 10
    config.eval_every = 0  # 0: no eval; else every N steps and at the end, on `eval_steps` batches
    config.eval_steps = 8
    common.checkpointing(config, every=200, keep=3)
    config.export_hf = True  # write WORKDIR/hf_final (save_pretrained) at the end, for later stages
    config.plot = True  # WORKDIR/loss_curve.png at the end

    if arg == "tiny":
        config.model = common.model(None, vocab_size=64, hidden_size=32, n_layer=2, n_head=4, pad_token_id=0)
        config.data = data(seq_len=32, vocab=61)
        config.batch_size = 8
        config.num_train_steps = 200
        config.optimizer = common.optimizer(learning_rate=3e-3, schedule="cosine", warmup_steps=10,
                                            weight_decay=0.01)
        config.log_every = 10
        config.eval_every = 100
        config.eval_steps = 2
        common.checkpointing(config, every=50, keep=2)
    elif arg:
        raise ValueError(f"configs/train.py: unknown variant {arg!r}; known: tiny")
    return config
