"""Augment datasets with a teacher's texts: `python -m teacherlm_jax.main --config configs/augment.py[:tiny]
--workdir DIR --config.teacher.init_from=TEACHER`.

TEACHER: a Hugging Face directory or hub id, or a training run's workdir (its hf_final export, else its
latest checkpoint; the tokenizer it trained with unless config.tokenizer names one), e.g. the stage-3 teacher. Output: DIR/augmented/<dataset>/
(see teacherlm_jax/augment/__init__.py). Rerun the same command after any stop to resume.

Variants:
  (none)  TeacherLM's settings: sampling at temperature 1, top-k 50, every kind, whole datasets.
  tiny    a CPU smoke run: 16 records, 16 new tokens, batch 4, chunks of 4 (set the teacher and datasets).
Examples: --config.datasets="('creak', 'strategyqa:dev', '/data/questions.jsonl')" --config.kinds="('cot',)"
--config.sampling.temperature=0 (greedy) --config.sampling.num_samples=4 (Fine-tune-CoT's diverse reasoning).
"""
from __future__ import annotations

import ml_collections

from configs import common


def sampling(temperature: float = 1.0, top_k: int = 50, top_p: float = 1.0, max_new_tokens: int = 512,
             num_samples: int = 1, stop_at_eos: bool = True, seed: int = 0) -> ml_collections.ConfigDict:
    """TeacherLM sampled with transformers `generate` (temperature 1, top-k 50, up to 2048 new tokens;
    512 here since BLOOM's 2048 positions hold the prompt too). temperature 0 is greedy."""
    return ml_collections.ConfigDict(dict(temperature=temperature, top_k=top_k, top_p=top_p,
                                          max_new_tokens=max_new_tokens, num_samples=num_samples,
                                          stop_at_eos=stop_at_eos, seed=seed))


VARIANTS = {"": "TeacherLM's settings: sampling at temperature 1, top-k 50, every kind, whole datasets",
            "tiny": "a CPU smoke run: 16 records, 16 new tokens, batch 4 (set the teacher and datasets)"}


# What each key does (docs/configs.md is generated from these: python docs/gen_config_reference.py).
DESCRIPTIONS = {
    **{key.replace("model.", "teacher."): text for key, text in common.MODEL_KEYS.items()
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
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base("augment")
    config.teacher = common.model(None, family=None)  # family None: the checkpoint's model_type
    config.teacher.init_from = ml_collections.FieldReference(None, field_type=str)  # required
    config.tokenizer = common.optional(None, str)  # None: init_from's tokenizer
    # Registry names (default split train), `name:split`, or generic multiple-choice .jsonl paths.
    config.datasets = ("creak", "strategyqa", "ecqa")
    config.kinds = ("cot", "fundamentals", "mistakes")
    config.sampling = sampling()
    # continuous: a slot takes the next prompt as soon as its row ends | static: a batch decodes until its longest
    # row ends (the same texts either way)
    config.engine = "continuous"
    config.batch_size = 16  # prompts decoded at once on each process (decode slots: batch_size * num_samples)
    config.chunk_size = 256  # records per part file: the most a kill can lose; sorting by length is per chunk
    config.max_prompt_tokens = 0  # 0: the teacher's max_position_embeddings - sampling.max_new_tokens
    config.truncation = "left"  # longer prompts: left (keep the last tokens) | skip; counted in summary.json
    config.max_records = 0  # 0: every record; N: the first N of each dataset (smoke runs)
    config.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: $TEACHERLM_DATA_DIR or ../shared/data
    # Processes started independently (no jax.distributed) say who they are; None: jax's process index/count.
    config.process_index = ml_collections.FieldReference(None, field_type=int)
    config.process_count = ml_collections.FieldReference(None, field_type=int)
    config.mesh = common.mesh(data=-1, fsdp=1)  # over each process's local devices; generation is data parallel
    # "process": each process its own chunks on its own devices; "global": one mesh over every process's devices
    # (a teacher larger than a host's memory), every process decoding every chunk together, process 0 writing.
    config.mesh_scope = "process"

    if arg == "tiny":
        config.datasets = ("creak",)
        config.sampling = sampling(max_new_tokens=16)
        config.batch_size = 4
        config.chunk_size = 4
        config.max_records = 16
    elif arg:
        raise ValueError(f"configs/augment.py: unknown variant {arg!r}; known: tiny")
    return config
