"""The trainer's step as the compile job lowers it, and its whole cost per chip.

XLA's cost analysis counts a loop's body once, and the step has three loops: the scanned layer stack, the
loss's head over chunks of positions and gradient accumulation's microbatches. Its flops and bytes for the
whole step come from two more compiles of the same step with the loops unrolled and one or two layers:
their difference is one layer, and the step is the rest plus `n_layer` layers, times the microbatches
(the optimizer's update is then counted once a microbatch: a slight overcount).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from teacherlm_jax.compile.programs import Lowering
from teacherlm_jax.init_from import resolve
from teacherlm_jax.sharding import LogicalRules, batch_sharding
from teacherlm_jax.train.loop import TrainSetup, loss_chunk, train_setup
from teacherlm_jax.train.step import BATCH_KEYS, make_train_step


def abstract_batch(config: ml_collections.ConfigDict, mesh, rules) -> dict[str, jax.ShapeDtypeStruct]:
    """The global int32 [batch_size, seq_len] batch, split over the data-parallel axes as the loop does."""
    shape = (int(config.batch_size), int(config.data.seq_len))
    return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sharding(mesh, rules)) for k in BATCH_KEYS}


def lower_train_step(config: ml_collections.ConfigDict, setup: TrainSetup, mesh: Mesh, rules: LogicalRules
                     ) -> tuple[jax.stages.Lowered, dict[str, jax.ShapeDtypeStruct]]:
    """(the trainer's own step lowered for the abstract state and batch, that batch)."""
    step = make_train_step(setup.graphdef, setup.tx, setup.schedule, mesh, rules, setup.shardings,
                           config.grad_accum_steps, loss_chunk(config))
    batch = abstract_batch(config, mesh, rules)
    return step.lower(setup.abstract_state(), batch), batch


def unrolled_steps(config: ml_collections.ConfigDict, mesh: Mesh, rules: LogicalRules, split: int = 1
                   ) -> tuple[int, int, list[Lowering]]:
    """(layers, microbatches, [the step of one microbatch with 1 layer, with 2 layers]) with no loop left: listed
    layers, the loss's head over all positions at once, one microbatch. `split` cuts each microbatch's rows
    into that many pieces, counted as microbatches: the loss over all positions of many rows can outgrow a
    chip the chunked step fits, and a piece's weight reads and update, counted once a piece, overcount a little."""
    resolved = resolve(config.model, weights=False)
    layers_key = "n_layer" if hasattr(resolved.config, "n_layer") else "num_hidden_layers"
    microbatches = int(config.grad_accum_steps) * split
    variant = config.copy_and_resolve_references()
    variant.grad_accum_steps, variant.loss_chunk = 1, 0
    variant.batch_size = int(config.batch_size) // microbatches

    def lowering(layers: int) -> Lowering:
        def lower() -> jax.stages.Lowered:
            model = dataclasses.replace(resolved, init_from=None, config=dataclasses.replace(
                resolved.config, scan_layers=False, **{layers_key: layers}))
            return lower_train_step(variant, train_setup(variant, mesh, rules, weights=False, model=model),
                                    mesh, rules)[0]
        return lower

    return getattr(resolved.config, layers_key), microbatches, [lowering(1), lowering(2)]


def whole_step_cost(layers: int, microbatches: int, one: tuple[float, float], two: tuple[float, float]
                    ) -> tuple[float, float]:
    """(flops, bytes accessed) of the whole step from the unrolled one- and two-layer steps' (module docstring)."""
    return tuple(microbatches * (a + (layers - 1) * (b - a)) for a, b in zip(one, two))
