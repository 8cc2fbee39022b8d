"""Config pieces shared by every job: mesh and sharding rules, model, optimizer, checkpointing.

Job configs (`configs/train.py`, ...) start from these and override what they need, e.g.
`config.mesh = common.mesh(fsdp=-1)` or `config.model = common.model(init_from="bigscience/bloom-560m")`.
"""
from __future__ import annotations

import ml_collections

from teacherlm_jax.sharding import DEFAULT_RULES


def mesh(data: int = 1, fsdp: int = -1, tensor: int = 1) -> ml_collections.ConfigDict:
    """Mesh axis sizes; -1 takes all remaining devices. Default: pure FSDP over every device."""
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def rules() -> list[tuple]:
    """Logical axis -> mesh axis rules (FSDP on embed, tensor parallel on heads/mlp/vocab)."""
    return [tuple(rule) for rule in DEFAULT_RULES]


def optional(value, field_type: type):
    """`value`, or when None a typed placeholder: it reads as None, yet `--config.KEY=...` can set it
    (ml_collections refuses to override a plain None, which has no type)."""
    return ml_collections.config_dict.placeholder(field_type) if value is None else value


def model(init_from: str | None = None, *, family: str | None = "bloom", dtype: str = "float32",
          param_dtype: str = "float32", scan_layers: bool = True, remat_policy: str = "none",
          attention_impl: str = "auto", **architecture) -> ml_collections.ConfigDict:
    """A model: `init_from` (Hugging Face dir/hub id, or a training run's workdir: params only) or,
    with init_from=None, a fresh one from `architecture` (BloomConfig fields such as hidden_size).
    With init_from, architecture fields given here must agree with the checkpoint's."""
    return ml_collections.ConfigDict(dict(init_from=optional(init_from, str), family=optional(family, str),
                                          dtype=dtype, param_dtype=param_dtype,
                                          scan_layers=scan_layers, remat_policy=remat_policy,
                                          attention_impl=attention_impl, **architecture))


def optimizer(learning_rate: float = 1e-4, schedule: str = "cosine", warmup_steps: int = 0,
              end_lr_fraction: float = 0.1, weight_decay: float = 0.0, grad_clip_norm: float = 1.0,
              b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> ml_collections.ConfigDict:
    """AdamW. schedule: constant | linear | cosine, all after a linear warmup from 0;
    linear/cosine decay to `end_lr_fraction * learning_rate` at the last step. grad_clip_norm=0: off."""
    return ml_collections.ConfigDict(dict(learning_rate=learning_rate, schedule=schedule, warmup_steps=warmup_steps,
                                          end_lr_fraction=end_lr_fraction, weight_decay=weight_decay,
                                          grad_clip_norm=grad_clip_norm, b1=b1, b2=b2, eps=eps))


def distributed() -> ml_collections.ConfigDict:
    """Multi-process setup (see `teacherlm_jax.sharding.initialize_distributed`): enabled=None detects
    clusters jax knows (TPU VMs, SLURM, Open MPI, JAX_COORDINATOR_ADDRESS); elsewhere give all three."""
    return ml_collections.ConfigDict({
        "enabled": ml_collections.FieldReference(None, field_type=bool),
        "coordinator_address": ml_collections.FieldReference(None, field_type=str),
        "num_processes": ml_collections.FieldReference(None, field_type=int),
        "process_id": ml_collections.FieldReference(None, field_type=int)})


def base(job: str) -> ml_collections.ConfigDict:
    """Keys every job has: what runs, where (mesh, rules, processes), and its seed."""
    config = ml_collections.ConfigDict()
    config.job = job
    config.seed = 0
    config.distributed = distributed()
    config.mesh = mesh()
    config.rules = rules()
    return config


def checkpointing(config: ml_collections.ConfigDict, every: int = 1000, keep: int = 3) -> None:
    """Orbax checkpoints every `every` steps (asynchronous), the last `keep` kept, one on SIGTERM."""
    config.checkpoint_every = every
    config.keep_checkpoints = keep
    config.async_checkpoints = True
