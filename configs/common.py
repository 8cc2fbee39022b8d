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


# The model keys' effects, for every config holding a `common.model` (docs/configs.md).
MODEL_KEYS = {
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



def optimizer(learning_rate: float = 1e-4, schedule: str = "cosine", warmup_steps: int = 0,
              end_lr_fraction: float = 0.1, weight_decay: float = 0.0, grad_clip_norm: float = 1.0,
              b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> ml_collections.ConfigDict:
    """AdamW. schedule: constant | linear | cosine, all after a linear warmup from 0;
    linear/cosine decay to `end_lr_fraction * learning_rate` at the last step. grad_clip_norm=0: off."""
    return ml_collections.ConfigDict(dict(learning_rate=learning_rate, schedule=schedule, warmup_steps=warmup_steps,
                                          end_lr_fraction=end_lr_fraction, weight_decay=weight_decay,
                                          grad_clip_norm=grad_clip_norm, b1=b1, b2=b2, eps=eps))


# The optimizer keys' effects (docs/configs.md).
OPTIMIZER_KEYS = {
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


# The keys every job has (`base`): their effects (docs/configs.md).
COMMON_KEYS = {
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



def checkpointing(config: ml_collections.ConfigDict, every: int = 1000, keep: int = 3) -> None:
    """Orbax checkpoints every `every` steps (asynchronous), the last `keep` kept, one on SIGTERM."""
    config.checkpoint_every = every
    config.keep_checkpoints = keep
    config.async_checkpoints = True
