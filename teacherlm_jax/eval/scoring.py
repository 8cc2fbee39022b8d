"""Multiple-choice scoring by log-likelihood, batched and jitted.

Each choice's continuation (its letter, for TeacherLM's tasks) is tokenized separately from the
context and appended to it, as lm-evaluation-harness does; a choice's score is the mean (or sum) of
its continuation tokens' log-probabilities, the prediction the argmax (first on ties).

One model input ("row") is context + continuation minus its last token. Choices whose continuations
differ only in their last token (one-token letters; " A" and " B" in byte-level tokens) share a row:
lm-evaluation-harness's `hf` backend groups them the same way (`context + continuation[:-1]`). Only the
positions that predict a continuation token go through the output head, so no [batch, length, vocab]
array is ever built, and they go through it a chunk at a time.

Rows are packed, several to a sequence, each attending only to itself at its own positions (`segment_ids`;
tests/test_packed_sequences.py): one row per sequence, padded to a length bucket, left a third of a short
run's columns padding. Batches, their widths and how many programs a run compiles: `batch_plan`.
Contexts too long for `max_length` model positions are cut on the left (lm-evaluation-harness keeps
the last `max_length + 1` tokens of context + continuation) and reported as truncated.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from teacherlm_jax.errors import ConfigError
from teacherlm_jax.eval.batch_plan import COMPILE_COLUMNS, columns_cost, plan_batches, round_up
from teacherlm_jax.models.graph_key import GraphKey
from teacherlm_jax.data.padding import pad_token_id
from teacherlm_jax.generation.compiles import compiled_programs
from teacherlm_jax.generation.program_store import StoredProgram
from teacherlm_jax.sharding import LogicalRules, activation_sharding, batch_sharding, data_parallel_size

SCORES = ("mean", "sum")
HEAD_CHUNK = 256  # positions per pass through the output head: [256, vocab] float32 logits at a time


@dataclasses.dataclass(frozen=True)
class Row:
    """One model input: `context` (already cut to fit) and the continuations it scores, of one length and
    equal but for their last token: several (the choices of a question) or one."""

    question: int
    choices: tuple[int, ...]  # which of the question's choices `continuations` are
    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    truncated: bool

    @property
    def steps(self) -> int:
        return len(self.continuations[0])

    @property
    def tokens(self) -> tuple[int, ...]:
        """The model's input: context + continuation minus its last token."""
        return self.context + self.continuations[0][:-1]


@dataclasses.dataclass(frozen=True)
class LoglikResult:
    """Per question: one score per choice, the prediction (argmax), whether its context was cut."""

    scores: list[list[float]]
    predictions: list[int]
    truncated: list[bool]


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids without special tokens (lm-evaluation-harness's `tok_encode`)."""
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def make_rows(contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]],
              max_length: int) -> list[Row]:
    """Rows for questions (`contexts[q]`, the token ids of each of its choices' continuations): one per
    group of a question's continuations that differ only in their last token."""
    rows = []
    for q, (context, conts) in enumerate(zip(contexts, continuations)):
        if not context:
            raise ValueError(f"question {q}: the context has no tokens")
        if any(not c for c in conts):
            raise ValueError(f"question {q}: a continuation has no tokens")
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, c in enumerate(conts):
            groups.setdefault(tuple(c[:-1]), []).append(i)
        for members in groups.values():
            group = tuple(tuple(conts[i]) for i in members)
            keep = max_length + 1 - len(group[0])  # lm-eval: last max_length + 1 of context + continuation
            if keep < 1:
                raise ValueError(f"question {q}: a continuation of {len(group[0])} tokens does not fit "
                                 f"max_length={max_length}")
            rows.append(Row(q, tuple(members), tuple(context[-keep:]), group, len(context) > keep))
    return rows


def num_traces() -> int:
    """How many scoring programs this process has compiled (jax's compile events)."""
    return compiled_programs(("_score_program",))


@functools.partial(StoredProgram, static_argnames=("graphdef", "mesh", "rules", "num_rows"))
def _score_program(state, tokens, segments, select, targets, target_row, target_mask, *, graphdef, mesh, rules,
                   num_rows):
    """(sum of log p(target) over each row's target positions, whether every one of them is the argmax):
    [num_rows, choices] each. `select` [T] are flat indices into [sequences * width] of the positions whose
    outputs predict `targets` [T, choices]; `target_row` [T] the row each belongs to."""
    with activation_sharding(mesh, rules) if mesh is not None else contextlib.nullcontext():
        model = graphdef.merge(state)
        hidden = model.hidden_states(tokens, segments > 0, segment_ids=segments)
        picked = jnp.take(hidden.reshape(-1, hidden.shape[-1]), select, axis=0)
        head = model.output_head()
        chunk = min(HEAD_CHUNK, len(select))  # len(select) is a power of two (or below the chunk)

        def score(part):
            x, want = part
            logits = model.logits(x[None], head)[0]  # [chunk, vocab] float32
            logprobs = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), want, axis=-1)
            return logprobs, jnp.argmax(logits, axis=-1)[:, None] == want

        logprobs, top = jax.lax.map(score, (picked.reshape(-1, chunk, picked.shape[-1]),
                                            targets.reshape(-1, chunk, targets.shape[-1])))
        logprobs, top = logprobs.reshape(targets.shape), top.reshape(targets.shape)
        sums = jax.ops.segment_sum(logprobs * target_mask[:, None], target_row, num_segments=num_rows + 1)
        greedy = jax.ops.segment_min((top | (target_mask[:, None] == 0)).astype(jnp.int32), target_row,
                                     num_segments=num_rows + 1) > 0
        sums, greedy = sums[:num_rows], greedy[:num_rows]  # row num_rows collects the padding
        if mesh is not None:  # replicated: every process reads the whole result
            sums, greedy = jax.lax.with_sharding_constraint((sums, greedy), NamedSharding(mesh, PartitionSpec()))
        return sums, greedy


@dataclasses.dataclass(frozen=True)
class _Shape:
    """A program's shape: sequences x width, and the target positions, rows and choices of its batches."""

    sequences: int
    width: int
    positions: int
    rows: int
    choices: int


def _shapes(rows: Sequence[Row], batches: list[tuple[int, list[list[int]]]], sequences: int, hidden_size: int,
            multiple: int) -> list[_Shape]:
    """Each batch's program shape. One per width, with the most positions and rows of its batches (powers of
    two, so that runs of similar rows share programs); a width's last batch, when it fills fewer
    sequences, keeps only those (rounded up to `multiple`, the data-parallel size) where that saves more
    than a compile (`_plan_cost`), or where it is that width's only batch."""
    def power_of_two(n: int) -> int:
        return 1 << max(0, n - 1).bit_length()

    choices = max(len(r.continuations) for r in rows)
    shapes = []
    for width, group in itertools.groupby(batches, key=lambda b: b[0]):
        group = [batch for _, batch in group]
        positions = max(sum(rows[i].steps for seq in batch for i in seq) for batch in group)
        positions = power_of_two(positions) if positions <= HEAD_CHUNK else round_up(positions, HEAD_CHUNK)
        shape = _Shape(sequences, width, positions, power_of_two(max(sum(map(len, batch)) for batch in group)),
                       choices)
        shapes += [shape] * len(group)
        used = round_up(len(group[-1]), multiple)
        saved = columns_cost(sequences - used, width, hidden_size)
        if used < sequences and (len(group) == 1 or saved > COMPILE_COLUMNS):
            shapes[-1] = dataclasses.replace(shape, sequences=used)
    return shapes


def _batch_arrays(rows: Sequence[Row], batch: list[list[int]], shape: _Shape, pad_id: int
                  ) -> tuple[dict[str, np.ndarray], list[int]]:
    """The program's inputs for one batch of packed sequences, and the rows in their result order."""
    tokens = np.full((shape.sequences, shape.width), pad_id, np.int32)
    segments = np.zeros((shape.sequences, shape.width), np.int32)
    select = np.zeros(shape.positions, np.int32)
    targets = np.zeros((shape.positions, shape.choices), np.int32)
    target_row = np.full(shape.positions, shape.rows, np.int32)  # padding: the extra row, dropped
    target_mask = np.zeros(shape.positions, np.float32)
    order, t = [], 0
    for s, members in enumerate(batch):
        start = 0
        for segment, i in enumerate(members, start=1):
            row, ids = rows[i], rows[i].tokens
            tokens[s, start:start + len(ids)] = ids
            segments[s, start:start + len(ids)] = segment
            first = s * shape.width + start + len(ids) - row.steps  # predicts the continuation's first token
            select[t:t + row.steps] = np.arange(first, first + row.steps)
            targets[t:t + row.steps, :len(row.continuations)] = np.asarray(row.continuations).T
            target_row[t:t + row.steps] = len(order)
            target_mask[t:t + row.steps] = 1
            order.append(i)
            start, t = start + len(ids), t + row.steps
    return dict(tokens=tokens, segments=segments, select=select, targets=targets, target_row=target_row,
                target_mask=target_mask), order


_INPUTS = ("tokens", "segments", "select", "targets", "target_row", "target_mask")
_BATCHED = ("tokens", "segments")  # split over the mesh's data axes; the rest is replicated


def _put(name: str, array: np.ndarray, mesh: Mesh | None, rules: LogicalRules | None):
    if mesh is None:
        return jnp.asarray(array)
    sharding = batch_sharding(mesh, rules or (), array.ndim) if name in _BATCHED else NamedSharding(mesh,
                                                                                                   PartitionSpec())
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def lower_scoring(params, graphdef: GraphKey, *, sequences: int, width: int, choices: int, mesh: Mesh,
                  rules: LogicalRules) -> jax.stages.Lowered:
    """The scoring program for `sequences` x `width` packed tokens, one target position per sequence and
    `choices` continuations, lowered without running (`params` may be sharded ShapeDtypeStructs): the
    compile job's figure for a batch of the eval job."""
    positions = 1 << max(0, sequences - 1).bit_length() if sequences <= HEAD_CHUNK else round_up(sequences, HEAD_CHUNK)
    ints = lambda name, *dims: jax.ShapeDtypeStruct(dims, jnp.int32, sharding=batch_sharding(mesh, rules, len(dims))
                                                    if name in _BATCHED else NamedSharding(mesh, PartitionSpec()))
    shapes = dict(tokens=ints("tokens", sequences, width), segments=ints("segments", sequences, width),
                  select=ints("select", positions), targets=ints("targets", positions, choices),
                  target_row=ints("target_row", positions),
                  target_mask=jax.ShapeDtypeStruct((positions,), jnp.float32,
                                                   sharding=NamedSharding(mesh, PartitionSpec())))
    return _score_program.lower(params, *(shapes[k] for k in _INPUTS), graphdef=graphdef, mesh=mesh,
                                rules=tuple(rules), num_rows=1 << max(0, sequences - 1).bit_length())


def score_rows(model: nnx.Module, rows: Sequence[Row], *, batch_size: int, max_length: int,
               mesh: Mesh | None = None, rules: LogicalRules | None = None,
               progress: Callable[[int], None] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(summed log-probs, greedy) of each row's continuations ([len(row.continuations)] each), in `rows`
    order; greedy: every token of the continuation is the model's argmax (lm-evaluation-harness's).

    Rows are packed into batches of `batch_size` sequences (`plan_batches`; a batch thus holds at least
    `batch_size` rows and usually more); `progress(n)` is called with the number of rows done after each
    batch.
    """
    if mesh is not None and batch_size % data_parallel_size(mesh, rules or ()):
        raise ConfigError(f"batch_size={batch_size} is not divisible by the data-parallel size "
                          f"{data_parallel_size(mesh, rules or ())} (mesh axes the batch is split over)")
    if not rows:
        return []
    rules = None if rules is None else tuple((n, tuple(a) if isinstance(a, list) else a) for n, a in rules)
    pad_id = int(pad_token_id(model_config=model.config))
    graphdef, state = nnx.split(model)
    graphdef = GraphKey(graphdef)
    lengths = [len(r.tokens) for r in rows]
    batches = plan_batches(lengths, batch_size, max_length, model.config.hidden_size)
    multiple = 1 if mesh is None else data_parallel_size(mesh, rules or ())
    shapes = _shapes(rows, batches, batch_size, model.config.hidden_size, multiple)
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(rows)

    def collect(order: list[int], result: tuple[jax.Array, jax.Array]) -> None:
        sums, greedy = (np.asarray(x.addressable_data(0)) for x in result)  # replicated (or on one device)
        bad = [i for b, i in enumerate(order) if not np.all(np.isfinite(sums[b, :len(rows[i].continuations)]))]
        if bad:  # an argmax over NaN scores would still pick a choice: a plausible-looking accuracy
            raise FloatingPointError(
                f"non-finite log-probabilities for {len(bad)} of {len(order)} rows in a batch (first: question "
                f"{rows[bad[0]].question}, scores {sums[order.index(bad[0]), :len(rows[bad[0]].continuations)]}): "
                f"the model's weights or computation are not finite (see the model's checkpoint / dtype)")
        for b, i in enumerate(order):
            out[i] = (sums[b, :len(rows[i].continuations)], greedy[b, :len(rows[i].continuations)])
        if progress is not None:
            progress(len(order))

    pending = None
    for (_, batch), shape in zip(batches, shapes):
        arrays, order = _batch_arrays(rows, batch, shape, pad_id)
        result = _score_program(state, *(_put(k, arrays[k], mesh, rules) for k in _INPUTS), graphdef=graphdef,
                                mesh=mesh, rules=rules, num_rows=shape.rows)
        if pending is not None:  # read the previous batch while this one runs (dispatch is asynchronous)
            collect(*pending)
        pending = (order, result)
    collect(*pending)
    return out  # type: ignore[return-value]


def loglik_choices(model: nnx.Module, contexts: Sequence[Sequence[int]],
                   continuations: Sequence[Sequence[Sequence[int]]], *, score: str = "mean", batch_size: int = 8,
                   max_length: int | None = None, mesh: Mesh | None = None, rules: LogicalRules | None = None,
                   progress: Callable[[int], None] | None = None) -> LoglikResult:
    """Scores every question's choices from token ids; see the module docstring."""
    if score not in SCORES:
        raise ValueError(f"score={score!r}; expected one of {SCORES}")
    max_length = max_length or model.config.max_position_embeddings
    rows = make_rows(contexts, continuations, max_length)
    sums = score_rows(model, rows, batch_size=batch_size, max_length=max_length, mesh=mesh, rules=rules,
                      progress=progress)
    scores = [[0.0] * len(c) for c in continuations]
    truncated = [False] * len(contexts)
    for row, (values, _) in zip(rows, sums):
        truncated[row.question] |= row.truncated
        for choice, cont, value in zip(row.choices, row.continuations, values):
            scores[row.question][choice] = float(value) / (len(cont) if score == "mean" else 1)
    return LoglikResult(scores, [int(np.argmax(s)) for s in scores], truncated)
