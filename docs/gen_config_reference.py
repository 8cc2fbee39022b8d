"""Writes docs/configs.md, the configuration reference, from the config files themselves:
`python docs/gen_config_reference.py`.

Each configs/*.py `get_config(variant)` is called and its ConfigDict flattened; every key gets a row
(key, default, effect) and every variant a table of what it changes. The effects live in DESCRIPTIONS
below, one entry per key of each job; tests/test_docs.py fails when docs/configs.md is stale, a key
has no description, or a description names a key no config has.
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

# Config files in reading order, each with the variants documented: the first is the base table,
# the others are shown as changes to it.
FILES: dict[str, tuple[str | None, ...]] = {
    "configs/train.py": (None, "tiny"),
    "configs/eval.py": (None,),
    "configs/augment.py": (None, "tiny"),
    "configs/teacher/stage1_multitask.py": (None, "tiny"),
    "configs/teacher/stage2_personalization.py": (None, "tiny"),
    "configs/teacher/stage3_specialization.py": ("cot", "fundamentals", "mistakes", "cot,tiny", "fundamentals,tiny",
                                                 "mistakes,tiny"),
    "configs/pipeline.py": (None, "tiny"),
    "configs/teacher/pipeline.py": (None, "tiny"),
    "configs/student/finetune.py": ("cot", "text", "manual", "fundamentals", "mistakes", "mixed", "cot,ftcot",
                                    "cot,opt", "cot,tiny"),
    "configs/demo.py": (None, "full", "tiny"),
    "configs/ablation.py": (None, "answer_first", "tiny"),
    "configs/compile.py": (None, "tiny", "bloom-1b1", "bloom-1b7", "bloom-3b", "bloom-7b1", "bloom"),
}

_MODEL = {
    "model.init_from": "Weights to start from: a Hugging Face directory or hub id, or a training run's workdir "
                       "(its `hf_final` export, else its latest checkpoint's parameters). None: a new model, "
                       "its architecture given by the other `model.*` keys.",
    "model.family": "`bloom` or `opt`. None: taken from the checkpoint's `model_type` (needs `init_from`).",
    "model.dtype": "Compute dtype (`float32`, `bfloat16`); logits, softmax and LayerNorm statistics stay float32.",
    "model.param_dtype": "Dtype the parameters are stored (and optimized) in; float32 master weights by default.",
    "model.scan_layers": "Stack the layers on a leading axis and run them with one `lax.scan` (one compiled "
                         "block at any depth); False keeps a Python list. Same numbers and checkpoints either way.",
    "model.remat_policy": "Activation rematerialization per layer: `none`, `full` (recompute the layer in the "
                          "backward pass), `dots`, `dots_no_batch` (save only matmul outputs). Trades compute "
                          "for memory; see docs/troubleshooting.md.",
    "model.attention_impl": "Attention without a KV cache (training, scoring): `einsum` (the reference: scores "
                            "materialized), `xla` (jax.nn.dot_product_attention's XLA path), `cudnn` (cuDNN flash "
                            "attention, GPU, bfloat16/float16) or `auto` (cudnn on a GPU in half precision, else "
                            "einsum; TPU has no fused kernel taking ALiBi). Decoding with a cache is always einsum.",
    "model.vocab_size": "Architecture (new model): embedding rows; at least the tokenizer's size.",
    "model.hidden_size": "Architecture (new model): width.",
    "model.n_layer": "Architecture (new model): number of decoder blocks.",
    "model.n_head": "Architecture (new model): attention heads; must divide hidden_size.",
    "model.pad_token_id": "Architecture (new model): padding token id written to the exported config.json.",
    "model.bos_token_id": "Architecture (new model): beginning-of-sequence token id.",
    "model.eos_token_id": "Architecture (new model): end-of-sequence token id (generation stops at it).",
    "model.max_position_embeddings": "Longest input the model accepts (a guard: ALiBi itself has no limit; "
                                     "BLOOM was trained on 2048).",
}
_OPTIMIZER = {
    "optimizer.learning_rate": "Peak learning rate of AdamW.",
    "optimizer.schedule": "`constant`, `linear` or `cosine`, each after the linear warmup; linear/cosine end at "
                          "`end_lr_fraction * learning_rate` on the last step.",
    "optimizer.warmup_steps": "Steps of linear warmup from 0.",
    "optimizer.end_lr_fraction": "Final learning rate as a fraction of the peak (linear and cosine only).",
    "optimizer.weight_decay": "AdamW decoupled weight decay (not applied to biases and LayerNorm scales).",
    "optimizer.grad_clip_norm": "Clip gradients to this global norm; 0 turns clipping off.",
    "optimizer.b1": "AdamW beta1.",
    "optimizer.b2": "AdamW beta2.",
    "optimizer.eps": "AdamW epsilon.",
}
# Keys every job has (configs/common.py base()).
_COMMON = {
    "job": "Which job runs: a key of `teacherlm_jax.main.JOBS`.",
    "seed": "Seed of parameter initialization, data order and sampling.",
    "distributed.enabled": "Call `jax.distributed.initialize`: None detects multi-process launches (TPU VM, "
                           "SLURM, Open MPI, JAX_COORDINATOR_ADDRESS); True/False force it.",
    "distributed.coordinator_address": "`host:port` of process 0, for clusters jax cannot detect.",
    "distributed.num_processes": "Number of processes, with coordinator_address.",
    "distributed.process_id": "This process's index, with coordinator_address.",
    "mesh.data": "Devices on the `data` mesh axis (pure data parallel: parameters replicated); -1 takes all "
                 "devices the other axes leave.",
    "mesh.fsdp": "Devices on the `fsdp` axis: batch split and parameters/optimizer state sharded on `embed`; "
                 "-1 takes the rest.",
    "mesh.tensor": "Devices on the `tensor` axis: heads, MLP and vocabulary split (tensor parallel); keep it "
                   "within a host.",
    "rules": "Logical axis -> mesh axes rules (`teacherlm_jax.sharding.DEFAULT_RULES`): batch over data+fsdp, "
             "embed over fsdp, heads/mlp/vocab over tensor.",
}
_TRAIN = {
    **_MODEL, **_OPTIMIZER,
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
    "stage": "Teacher stage name (informational: logged and kept with the run).",
    "student": "Student variant (`text`, `manual`, `cot`, ...; informational).",
}
ABLATION = {  # configs/ablation.py's students (the kind students in the rationale-first layout unless answer_first)
    "cot": "Ablation student on the cot teacher's (greedy) texts.",
    "fundamentals": "Ablation student on the fundamentals teacher's texts.",
    "mistakes": "Ablation student on the common-mistakes teacher's texts.",
    "all_kinds": "Ablation student on all three kinds, each its own example, 1:1:1 (TeacherLM's multi-kind student).",
    "finetune_cot_n1": "Fine-tune-CoT student on one sampled chain of thought per question.",
    "finetune_cot_n4": "Fine-tune-CoT student on four sampled chains of thought per question, each its own example.",
}

DESCRIPTIONS: dict[str, dict[str, str]] = {
    "train": _TRAIN,
    "compile": {
        **_TRAIN,
        "fake_devices": "Compile for N fake CPU devices (a v4-8 / v5e-8 / 8-GPU host by default); 0: this "
                        "machine's own devices.",
        "topology": "A TPU slice to compile for on any host (libtpu: `pip install -e \".[tpu]\"`): gcloud's "
                    "accelerator types (v4-8, v5e-8, ...) or jax's form (v5e:2x4); every program of the recipe is "
                    "compiled and reported per chip with a roofline bound. Empty: the training step for "
                    "fake_devices.",
        "device_memory_gib": "Memory per device to check the estimate against (v5e 16, v4 32, H100 80); exit "
                             "status 1 when it does not fit. 0: no check.",
        "generation_batch_size": "Generation sizing (the augment job's decode engine on this mesh): decode slots "
                                 "sharing one KV cache, split over the data-parallel axes.",
        "generation_prompt_tokens": "Generation sizing: prompt width in tokens; the KV cache holds prompt + "
                                    "new tokens - 1 positions.",
        "generation_max_new_tokens": "Generation sizing: new tokens per row (the augment job's "
                                     "`sampling.max_new_tokens`).",
        "generation_prefix_tokens": "Generation sizing: tokens of each prompt shared by a unit's rows (a record's "
                                    "question, shared by its kinds), stored once in the engine's prefix pool; "
                                    "rows then hold only their own positions. 0: whole rows, no pool.",
        "generation_rows_per_prefix": "Generation sizing: rows sharing one prefix (3: TeacherLM's kinds, one "
                                      "sample each); the pool holds twice the units of one fill.",
    },
    "eval": {
        **_MODEL,
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
    },
    "augment": {
        **{key.replace("model.", "teacher."): text for key, text in _MODEL.items()
           if key.removeprefix("model.") in ("init_from", "family", "dtype", "param_dtype", "scan_layers",
                                              "remat_policy", "attention_impl")},
        "teacher.init_from": "Required: the teacher, a Hugging Face directory or hub id, or a training run's "
                             "workdir (e.g. the stage-3 teacher's).",
        "teacher.scan_layers": "Not used for generation: the job loads the teacher with listed layers, whose "
                               "decode layout shares them, so its weights are held once.",
        "tokenizer": "Tokenizer directory or hub id. None: the teacher's own (a run's: the one it trained with).",
        "datasets": "Datasets to augment: registry names (train split), `name:split`, or multiple-choice "
                    "`.jsonl` paths; each goes to WORKDIR/augmented/<name>/.",
        "kinds": "Annotations to write per record: any of `cot`, `fundamentals`, `mistakes`.",
        "sampling.temperature": "Sampling temperature (TeacherLM: 1); 0 is greedy.",
        "sampling.top_k": "Sample among the k most likely tokens (TeacherLM: 50); 0: off.",
        "sampling.top_p": "Nucleus sampling mass; 1.0: off.",
        "sampling.max_new_tokens": "Tokens per annotation (TeacherLM: up to 2048; BLOOM's 2048 positions also "
                                   "hold the prompt).",
        "sampling.num_samples": "Annotations per record and kind (several: Fine-tune-CoT's diverse reasoning).",
        "sampling.stop_at_eos": "End an annotation at the EOS token; False always writes max_new_tokens.",
        "sampling.seed": "Sampling seed; each record's randomness depends on (seed, dataset, id, kind) only, so "
                         "a resumed run writes the same texts.",
        "engine": "`continuous`: a decode slot takes the next prompt as soon as its row ends (EOS or "
                  "max_new_tokens); `static`: batches of prompts decode until their longest row ends. Same texts.",
        "batch_size": "Prompts decoded at once on each process (decode slots: batch_size x num_samples).",
        "chunk_size": "Records per output part file, written once its last row ends: the most a kill can lose; "
                      "a chunk's records go longest first, each record's kinds together (their shared question "
                      "is prefilled once).",
        "max_prompt_tokens": "Longest prompt; 0: the teacher's max_position_embeddings - max_new_tokens.",
        "truncation": "Longer prompts: `left` (keep the last tokens: answer and cue stay) or `skip` (no "
                      "annotation); counted in summary.json.",
        "max_records": "0: every record; N: the first N of each dataset (smoke runs).",
        "data_dir": "Folder of the real datasets. None: $TEACHERLM_DATA_DIR, else ../shared/data.",
        "process_index": "For processes started independently (no jax.distributed): this process's index; "
                         "None: jax's.",
        "process_count": "With process_index: how many processes share the work; None: jax's.",
        "mesh_scope": "`process`: `mesh` over each process's own devices, each process generating its own chunks "
                      "(waits on no other); `global`: one mesh over every process's devices, for a teacher larger "
                      "than a host, every process decoding every chunk together and process 0 writing.",
    },
    "pipeline": {
        "title": "The report's heading.",
        "suite.seed": "Seed of the synthetic reasoning suite (teacherlm_jax/data/synthetic.py).",
        "suite.families": "Question families in the suite.",
        "suite.heldout_families": "Families the teacher never sees (its transfer to them is then measured); "
                                  "(): none.",
        "suite.student_families": "Families the students train and are tested on; (): the held-out families if "
                                  "any, else all.",
        "suite.n_teacher_per_family": "Questions per family the teacher trains on (with gold annotations).",
        "suite.n_train_per_family": "Questions per family the students train on (annotated by the teacher).",
        "suite.n_test_per_family": "Held-out questions per family everyone is evaluated on.",
        "tokenizer.init_from": "One tokenizer for every step (a directory or hub id). None: each step's own "
                               "(its `tokenizer` key, else its model's `init_from`).",
        "tokenizer.vocab_size": "With a `suite` and no teacher.init_from: train a BPE tokenizer of this size on "
                                "the suite (step `tokenizer`) and use it in every step.",
        "teacher.init_from": "Where the first teacher stage starts: a Hugging Face directory or hub id, or a run's "
                             "workdir (its architecture replaces the stage config's sizes). None: a new model.",
        "teacher.stages": "Stages that run, in order, out of `stage1`, `stage2`, `stage3`; each starts from the "
                          "previous one's model. Without stage3 the last stage's teacher writes every kind.",
        "teacher.kinds": "Kinds stage 3 specializes in (one teacher each, `teacher/stage3_<kind>`) and the augment "
                         "steps write; stage 2's kind_ratios default to 1 each.",
        "teacher.evaluate": "Teacher evaluated beside the students: `stage1` / `stage2`, a model (directory, hub "
                            "id, `@step`), or '' for none.",
        "teacher.stage1": "Stage 1 (multi-task: answers), a train config.",
        "teacher.stage2": "Stage 2 (personalization: every kind after its prompt), a train config.",
        "teacher.stage3": "Stage 3 (specialization), a train config run once per kind in teacher.kinds with "
                          "data.format set to the kind.",
        "augment": "The augment job config (its datasets are the students' questions; teacher, kinds and "
                   "tokenizer set per augment step).",
        "student_base": "The model students start from unless their own model.init_from is set: a Hugging Face "
                        "directory or hub id, a run's workdir, or `@teacher/stage1`. None: new models.",
        "compilation_cache": "Keep compiled programs in DIR/jax_cache, so steps of equal shapes and settings (the "
                             "students) compile once.",
        "eval": "The eval job config every model is evaluated with (its tasks are the test sets; model and "
                "mode set per model).",
        **{f"students.{name}.mode": "Evaluation: `loglik` (letter log-likelihood) or `generate` (Fine-tune-CoT "
                                    "generation, answer parsed)."
           for name in ("answers_only", "teacherlm_cot", "teacherlm_mixed", "finetune_cot", *ABLATION)},
        **{f"students.{name}.train": text for name, text in {
            "answers_only": "Student on questions and answers only (TeacherLM's `text` student).",
            "teacherlm_cot": "Student on the teacher prompt + the teacher's chain of thought (TeacherLM layout).",
            "teacherlm_mixed": "Student on every teacher kind, each as its own example.",
            "finetune_cot": "Student on Fine-tune-CoT's layout: rationale, then ` --> X`.",
            **ABLATION,
        }.items()},
        **{f"students.finetune_cot_n{n}.sampling": f"This student's own augment step (`augment/cot-finetune_cot_n{n}`):"
                                                   f" overrides of augment.sampling, here {n} sample(s) per question "
                                                   "at temperature 0.7, each its own example."
           for n in (1, 4)},
        "seeds": "Training seeds: each student trains once per seed (`students/<name>/seed<k>`, its `seed` = k: "
                 "the data order), evaluated per seed; the report gives mean, std and bootstrap intervals "
                 "(docs/ablation.md). Absent: one run per student.",
    },
}
for _job in DESCRIPTIONS:
    for _key, _text in _COMMON.items():
        DESCRIPTIONS[_job].setdefault(_key, _text)


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


def _table(config: ml_collections.ConfigDict) -> list[str]:
    rows = ["| key | default | effect |", "|---|---|---|"]
    descriptions = DESCRIPTIONS.get(config.job, {})
    for key, value in flatten(config):
        rows.append(f"| `{key}` | {fmt(value)} | {descriptions.get(key, '**undocumented**')} |")
    return rows


def _known(configs: dict[str, ml_collections.ConfigDict], value: ml_collections.ConfigDict) -> str | None:
    """The documented config file:variant equal to `value`, if any."""
    return next((name for name, known in configs.items() if known.to_dict() == value.to_dict()), None)


def _diff(base: ml_collections.ConfigDict, variant: ml_collections.ConfigDict,
          configs: dict[str, ml_collections.ConfigDict]) -> list[str]:
    """Rows of the keys `variant` sets differently from `base` (nested job configs equal to a documented
    config are named as that config)."""
    def leaves(config):
        out = {}
        for key, value in flatten(config):
            if is_job(value) and _known(configs, value):
                out[key] = f"= `{_known(configs, value)}`"
            elif is_job(value):
                out.update({f"{key}.{k}": fmt(v) for k, v in flatten(value, expand_jobs=True)})
            else:
                out[key] = fmt(value)
        return out

    old, new = leaves(base), leaves(variant)
    rows = ["| key | value |", "|---|---|"]
    for key in list(old) + [k for k in new if k not in old]:
        if key not in new:
            rows.append(f"| `{key}` | (removed) |")
        elif old.get(key) != new[key]:
            rows.append(f"| `{key}` | {new[key]}{'' if key in old else ' (added)'} |")
    return rows


def _intro(file: str) -> list[str]:
    module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
    doc = inspect.getdoc(module) or ""
    return ["```text", *doc.splitlines(), "```"]


def render() -> str:
    configs = {f"{file}:{v}" if v else file: load(file, v) for file, variants in FILES.items() for v in variants}
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by docs/gen_config_reference.py from configs/*.py; do not edit by hand. -->",
        "",
        "Every job is `python -m teacherlm_jax.main --config configs/FILE.py[:VARIANT] --workdir DIR`, and any "
        "key below can be overridden on the command line: `--config.num_train_steps=100`, "
        "`--config.mesh.fsdp=4`, `--config.model.init_from=bigscience/bloom-560m`, tuples quoted as Python: "
        "`--config.tasks=\"('mmlu','creak')\"`. Keys shown as `None` take a value of their type (a path, a "
        "number) or stay unset. The shared pieces (mesh, rules, model, optimizer, checkpointing, distributed) "
        "come from `configs/common.py`. A key that is not listed is an error: configs are locked.",
        "",
        "Each section gives the file's own documentation, a table of every key with its default and effect, "
        "and what each variant changes. Configs nested in another (the teacher pipeline's stages, the demo's "
        "stages and students) are named by the file they equal, or listed in full.",
        "",
        "Contents: " + ", ".join(f"[`{file}`](#{_anchor(file)})" for file in FILES),
        "",
    ]
    for file, variants in FILES.items():
        base_name = f"{file}:{variants[0]}" if variants[0] else file
        base = configs[base_name]
        lines += [f"## {file}", "", *_intro(file), ""]
        lines += [f"Keys of `{base_name}` (job `{base.job}`):", "", *_table(base), ""]
        for key, sub in nested_jobs(base):
            known = _known({k: v for k, v in configs.items() if not k.startswith(file)}, sub)
            if known:
                lines += [f"`{key}` equals `{known}` (its table is in that file's section).", ""]
            else:
                lines += [f"<details><summary><code>{key}</code>: a <code>{sub.job}</code> config</summary>", "",
                          *_table(sub), "", "</details>", ""]
        for variant in variants[1:]:
            lines += [f"Variant `{file}:{variant}` changes:", "", *_diff(base, configs[f"{file}:{variant}"], configs),
                      ""]
    return "\n".join(lines).rstrip() + "\n"


def _anchor(heading: str) -> str:
    return "".join(c for c in heading.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def main() -> None:
    missing = missing_descriptions()
    if missing:
        sys.exit("keys without a description in docs/gen_config_reference.py:\n  " + "\n  ".join(missing))
    OUT.write_text(render(), encoding="utf-8")
    print("wrote", OUT, file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
