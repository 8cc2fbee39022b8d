"""Every program the recipe runs, lowered from shapes alone, and what XLA says of each once compiled.

The programs are the jobs' own (`make_train_step`, the decode slots' insert, round and shrink, scoring's
program, `generate`'s), lowered with sharded `jax.ShapeDtypeStruct`s, so they compile for devices that are
not attached (a TPU slice through libtpu) and nothing is allocated. For each: peak bytes per chip (XLA's
memory analysis), XLA's flops and bytes accessed per chip, and a roofline bound, max(flops / peak FLOP/s,
bytes / HBM bandwidth): a lower bound on the program's time on that chip, not a measurement (XLA counts
flops before optimization and bytes after; a loop's body is counted once).
"""
from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from teacherlm_jax.compile.generation_memory import generation_shapes
from teacherlm_jax.compile.topology import Chip
from teacherlm_jax.eval.scoring import lower_scoring
from teacherlm_jax.generation.sampler import Sampler
from teacherlm_jax.generation.scheduler import TAIL_SLOTS
from teacherlm_jax.generation.slots import InsertShape, PoolShape, SlotPrograms, pool_prefixes, slot_count
from teacherlm_jax.models.graph_key import GraphKey
from teacherlm_jax.sharding import LogicalRules, logical_to_spec

# A program, or how to lower it (lowering may itself compile, and fail for lack of the chip's memory).
Lowering = jax.stages.Lowered | Callable[[], jax.stages.Lowered]
# TeacherLM's sampling (configs/augment.py) and eval's greedy generate mode.
AUGMENT_SAMPLER = Sampler(1.0, 50, 1.0)
GREEDY = Sampler(0.0, 0, 1.0)
# MMLU and the other suites score answer letters: up to four choices, one target token each.
SCORING_CHOICES = 4


@dataclasses.dataclass(frozen=True)
class ProgramReport:
    """One compiled program, per chip: `peak_bytes` = arguments + outputs - aliased + temporaries + code."""

    peak_bytes: int
    arguments: int
    outputs: int
    aliased: int
    temp: int
    generated_code: int
    flops: float | None
    bytes_accessed: float | None
    roofline_seconds: float | None
    fits: bool | None
    compile_seconds: float
    error: str | None = None  # the compiler's refusal, when it ran out of the chip's memory


def peak_bytes(compiled: jax.stages.Compiled) -> tuple[int, Any]:
    """(peak bytes per device, XLA's memory analysis) of a compiled program. Peak = arguments + outputs -
    aliased + temp + code: everything it holds when its temporaries are at their high-water mark (XLA's own
    `peak_memory_in_bytes` is not used: on CPU it leaves out the temporaries of the loops' bodies)."""
    stats = compiled.memory_analysis()
    if stats is None:
        raise RuntimeError(f"{jax.devices()[0].platform} gives no memory analysis of compiled programs")
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
            + stats.temp_size_in_bytes + stats.generated_code_size_in_bytes), stats


def roofline_seconds(flops: float, bytes_accessed: float, chip: Chip) -> float:
    """The least time a chip needs for this much compute and HBM traffic."""
    return max(flops / chip.peak_bf16_flops, bytes_accessed / chip.hbm_bytes_per_s)


def compile_and_report(lowering: Lowering, chip: Chip | None, limit_bytes: int | None
                       ) -> tuple[jax.stages.Compiled | None, ProgramReport]:
    """Lowers (a callable) and compiles a program and reads its memory and cost; `fits` against `limit_bytes`
    (None: not checked). A program the TPU compiler refuses for lack of memory is reported as not fitting,
    with the memory its message says the program's temporaries need (a lower bound; no compiled program)."""
    start = time.perf_counter()
    try:
        compiled = (lowering() if callable(lowering) else lowering).compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        needed, _ = out_of_memory_bytes(str(e))
        return None, ProgramReport(peak_bytes=needed, arguments=0, outputs=0, aliased=0, temp=needed, generated_code=0,
                                   flops=None, bytes_accessed=None, roofline_seconds=None, fits=False,
                                   compile_seconds=round(time.perf_counter() - start, 2),
                                   error=str(e).strip().splitlines()[0][:300])
    seconds = time.perf_counter() - start
    peak, stats = peak_bytes(compiled)
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops, accessed = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    return compiled, ProgramReport(
        peak_bytes=peak, arguments=stats.argument_size_in_bytes, outputs=stats.output_size_in_bytes,
        aliased=stats.alias_size_in_bytes, temp=stats.temp_size_in_bytes,
        generated_code=stats.generated_code_size_in_bytes, flops=flops, bytes_accessed=accessed,
        roofline_seconds=None if chip is None else roofline_seconds(flops, accessed, chip),
        fits=None if limit_bytes is None else peak <= limit_bytes, compile_seconds=round(seconds, 2))


_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
# The TPU compiler's refusals, e.g. "... required for HLO temporaries (17.98G) exceeds available HBM (15.75G)"
# and "Used 20.5G of 15.75G hbm".
_OUT_OF_MEMORY = (re.compile(r"\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)"),
                  re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm"))


def out_of_memory_bytes(message: str) -> tuple[int, int]:
    """(bytes needed, bytes available) from the TPU compiler's out-of-memory message; (0, 0) when it says
    neither."""
    for pattern in _OUT_OF_MEMORY:
        match = pattern.search(message)
        if match:
            need, need_unit, have, have_unit = match.groups()
            return int(float(need) * _UNITS[need_unit]), int(float(have) * _UNITS[have_unit])
    return 0, 0


def decode_params(model: dict[str, Any], mesh: Mesh, rules: LogicalRules, slots: int, prompt_tokens: int,
                  max_new_tokens: int) -> tuple[GraphKey, Any]:
    """(graphdef, sharded abstract parameters) of the teacher as generation holds it: listed layers in the
    compute dtype, in its decode layout."""
    abstract, _ = generation_shapes(model, slots, prompt_tokens, max_new_tokens)
    graphdef, state = nnx.split(abstract.for_decoding())
    specs = nnx.get_partition_spec(state)
    shardings = jax.tree.map(lambda spec: NamedSharding(mesh, logical_to_spec(tuple(spec), rules)), specs,
                             is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    return GraphKey(graphdef), params


def generation_programs(model: dict[str, Any], mesh: Mesh, rules: LogicalRules, *, slots: int, prompt_tokens: int,
                        max_new_tokens: int, eos_id: int = 2, prefix_tokens: int = 0,
                        rows_per_prefix: int = 3) -> dict[str, Lowering]:
    """The augment engine's programs at the compile job's `generation_*` sizes: `insert` (a fill of every slot
    with prompts of `prompt_tokens`), `decode_round` (a round of steps, TeacherLM's sampling, rows ending at
    EOS) and `shrink` (the tail's move to a quarter of the slots); and the eval job's `scoring` (a batch of
    `slots` sequences of `prompt_tokens`) and `generate` (its greedy decode loop; its prefill is `insert`).
    With `prefix_tokens`, the augment engine's are its prefix pool's: units of `rows_per_prefix` rows share
    that many leading tokens, stored and read once (`generation_memory`). Each is lowered when called
    (`compile_and_report` calls it)."""
    rows = slot_count(slots, mesh, rules)
    graphdef, params = decode_params(model, mesh, rules, slots, prompt_tokens, max_new_tokens)
    common = dict(graphdef=graphdef, max_new_tokens=max_new_tokens, eos_ids=np.array([eos_id], np.int32),
                  pad_id=0, mesh=mesh, rules=tuple(rules))
    if prefix_tokens:
        pool = PoolShape(pool_prefixes(rows, rows_per_prefix, rows), prefix_tokens, rows_per_prefix)
        augment = SlotPrograms(params, prompt_width=prompt_tokens - prefix_tokens, sampler=AUGMENT_SAMPLER,
                               pool=pool, **common)
        fill = InsertShape(-(-rows // rows_per_prefix), prefix_tokens, rows, prompt_tokens - prefix_tokens, 1)
    else:
        augment = SlotPrograms(params, prompt_width=prompt_tokens, sampler=AUGMENT_SAMPLER, **common)
        fill = InsertShape.of((rows, prompt_tokens), None, 1)
    tail = max(1, slot_count(max(TAIL_SLOTS, rows // 4), mesh, rules)) if rows > TAIL_SLOTS else rows
    evaluate = SlotPrograms(params, prompt_width=prompt_tokens, sampler=GREEDY, **common)
    return {
        "insert": lambda: augment.lower_insert(fill, rows),
        "decode_round": lambda: augment.lower_run(rows),
        "shrink": lambda: augment.lower_gather(rows, min(tail, rows)),
        "scoring": lambda: lower_scoring(params, graphdef, sequences=rows, width=prompt_tokens,
                                         choices=SCORING_CHOICES, mesh=mesh, rules=rules),
        "generate": lambda: evaluate.lower_run(rows),
    }
