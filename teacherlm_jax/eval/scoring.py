"""Multiple-choice scoring by log-likelihood, batched and jitted.

Each choice's continuation (its letter, for TeacherLM's tasks) is tokenized separately from the
context and appended to it, as lm-evaluation-harness does; a choice's score is the mean (or sum) of
its continuation tokens' log-probabilities, the prediction the argmax (first on ties).

One model input ("row") is context + continuation minus its last token, run in two calls over a KV
cache: a prefill of all but its last `steps` tokens (its logits are unused, so XLA never builds the
[batch, length, vocab] array), then a step over the last `steps` tokens, whose logits score the
continuation. When every continuation of a question is one token (letters, the usual case) a single
row with one step scores all its choices: the log-probs of the choices' tokens are gathered at the last
context position. Otherwise each choice is its own row.

Shapes are fixed per batch: `batch_size` rows (the last batch padded with copies), the prefill padded
on the left to a length bucket, the step to a power of two, so a dataset compiles a handful of programs.
A short run pays for each program's compile more than for padding, so a run of n batches of one step width
compiles at most ceil(sqrt(n)) prefill widths (`plan_widths`): batches share the widths that pad the
fewest columns. A long run keeps every bucket (a full MMLU run has ~1,750 batches of 8).
Contexts too long for `max_length` model positions are cut on the left (lm-evaluation-harness keeps
the last `max_length + 1` tokens of context + continuation) and reported as truncated.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from teacherlm_jax.errors import ConfigError
from teacherlm_jax.models.graph_key import GraphKey
from teacherlm_jax.data.padding import left_pad, pad_token_id
from teacherlm_jax.generation.compiles import compiled_programs
from teacherlm_jax.generation.sampler import PROMPT_BUCKETS, bucket_length
from teacherlm_jax.generation.slots import CACHE_AXES
from teacherlm_jax.sharding import LogicalRules, activation_sharding, batch_sharding, constrain, data_parallel_size

SCORES = ("mean", "sum")
PREFILL_BUCKETS = PROMPT_BUCKETS  # generation's buckets: powers of two and their 1.5x from 16


@dataclasses.dataclass(frozen=True)
class Row:
    """One model input: `context` (already cut to fit) and the continuations it scores: several
    single-token ones (the choices of a question) or one of any length."""

    question: int
    choices: tuple[int, ...]  # which of the question's choices `continuations` are
    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    truncated: bool

    @property
    def steps(self) -> int:
        return len(self.continuations[0])


@dataclasses.dataclass(frozen=True)
class LoglikResult:
    """Per question: one score per choice, the prediction (argmax), whether its context was cut."""

    scores: list[list[float]]
    predictions: list[int]
    truncated: list[bool]


def step_bucket(steps: int) -> int:
    """Step widths: 1 (single-token continuations), else powers of two."""
    return 1 << max(0, steps - 1).bit_length()


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids without special tokens (lm-evaluation-harness's `tok_encode`)."""
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def make_rows(contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]],
              max_length: int) -> list[Row]:
    """Rows for questions (`contexts[q]`, the token ids of each of its choices' continuations)."""
    rows = []
    for q, (context, conts) in enumerate(zip(contexts, continuations)):
        if not context:
            raise ValueError(f"question {q}: the context has no tokens")
        if any(not c for c in conts):
            raise ValueError(f"question {q}: a continuation has no tokens")
        groups = [(tuple(range(len(conts))), tuple(tuple(c) for c in conts))] if all(len(c) == 1 for c in conts) \
            else [((i,), (tuple(c),)) for i, c in enumerate(conts)]
        for choices, group in groups:
            keep = max_length + 1 - len(group[0])  # lm-eval: last max_length + 1 of context + continuation
            if keep < 1:
                raise ValueError(f"question {q}: a continuation of {len(group[0])} tokens does not fit "
                                 f"max_length={max_length}")
            rows.append(Row(q, choices, tuple(context[-keep:]), group, len(context) > keep))
    return rows


def _widths(rows: list[Row], max_length: int) -> tuple[int, int]:
    """(step width, prefill width) of a batch: the step a power of two, the prefill its longest row's bucket."""
    steps = min(step_bucket(max(r.steps for r in rows)), max_length)
    longest = max(max(len(r.context) + r.steps - 1 - steps for r in rows), 0)
    return steps, max(longest, min(bucket_length(longest, PREFILL_BUCKETS), max_length - steps))


def plan_widths(widths: Sequence[int]) -> list[int]:
    """The prefill width of each of a run's batches (their own `widths`, in run order, one step width): at
    most ceil(sqrt(len(widths))) distinct widths, each batch padded to the widest of its run of consecutive
    batches, the runs chosen for the fewest padded columns (batches come longest first)."""
    widths = list(widths)
    programs = math.isqrt(max(len(widths) - 1, 0)) + 1
    if len(set(widths)) <= programs:
        return widths
    groups = [(w, len(list(run))) for w, run in itertools.groupby(widths)]  # runs of equal widths
    # cost[p][j]: the fewest columns for groups[:j] in p segments; a segment takes its widest group's width
    inf = float("inf")
    cost = [[inf] * (len(groups) + 1) for _ in range(programs + 1)]
    back = [[0] * (len(groups) + 1) for _ in range(programs + 1)]
    cost[0][0] = 0
    for p in range(1, programs + 1):
        for j in range(1, len(groups) + 1):
            widest, count = 0, 0
            for i in range(j - 1, -1, -1):  # the segment groups[i:j]
                widest, count = max(widest, groups[i][0]), count + groups[i][1]
                if cost[p - 1][i] + widest * count < cost[p][j]:
                    cost[p][j], back[p][j] = cost[p - 1][i] + widest * count, i
    p = min(range(1, programs + 1), key=lambda q: cost[q][len(groups)])
    planned, j = [], len(groups)
    while j:
        i = back[p][j]
        widest = max(w for w, _ in groups[i:j])
        planned[:0] = [widest] * sum(n for _, n in groups[i:j])
        j, p = i, p - 1
    return planned


def _pad_batch(rows: list[Row], batch_size: int, max_length: int, pad_id: int,
               width: int | None = None) -> dict[str, np.ndarray]:
    """Each row's input is context + continuation minus its last token; its last `steps` tokens
    (left-padded when shorter) form the step, the rest the left-padded prefill (`width`: the batch's
    own, unless planned wider). Aligning rows on the right keeps prefill + step within max_length."""
    rows = rows + [rows[-1]] * (batch_size - len(rows))  # copies; their results are dropped
    steps, own = _widths(rows, max_length)
    width = own if width is None else width
    seqs = [r.context + r.continuations[0][:-1] for r in rows]
    num_choices = max(len(r.continuations) for r in rows)
    prefill, prefill_mask = left_pad([s[:-steps] for s in seqs], width, pad_id)
    step, step_mask = left_pad([s[-steps:] for s in seqs], steps, pad_id)
    targets = np.zeros((batch_size, steps, num_choices), np.int32)
    target_mask = np.zeros((batch_size, steps), np.float32)
    for b, row in enumerate(rows):
        target_mask[b, steps - row.steps:] = 1
        for c, cont in enumerate(row.continuations):
            targets[b, steps - row.steps:, c] = cont
    return dict(prefill=prefill, prefill_mask=prefill_mask, step=step, step_mask=step_mask, targets=targets,
                target_mask=target_mask)


def num_traces() -> int:
    """How many scoring programs this process has compiled (jax's compile events)."""
    return compiled_programs(("_score_program",))


@functools.partial(jax.jit, static_argnames=("graphdef", "mesh", "rules"))
def _score_program(state, prefill, prefill_mask, step, step_mask, targets, target_mask, *, graphdef, mesh, rules):
    """(sum of log p(target) over the step positions where `target_mask` is 1, whether every such
    target is the argmax there): [batch, choices] each."""
    with activation_sharding(mesh, rules) if mesh is not None else contextlib.nullcontext():
        model = graphdef.merge(state)
        batch, width = prefill.shape
        mask = jnp.concatenate([prefill_mask, step_mask], axis=1)
        cache = model.init_cache(batch, width + step.shape[1])
        cache = jax.tree.map(lambda x: constrain(x, CACHE_AXES) if x.ndim == len(CACHE_AXES) else x, cache)
        if width:  # static: a batch of one-token contexts has nothing to prefill
            _, cache = model(prefill, mask, cache=cache)
        logits, _ = model(step, mask, cache=cache)
        logprobs = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(logprobs, targets, axis=-1)  # [batch, steps, choices]
        sums = jnp.sum(picked * target_mask[:, :, None], axis=1)
        top = jnp.argmax(logits, axis=-1)[:, :, None]
        greedy = jnp.all((top == targets) | (target_mask[:, :, None] == 0), axis=1)
        if mesh is not None:  # replicated: every process reads the whole result
            sums, greedy = jax.lax.with_sharding_constraint((sums, greedy), NamedSharding(mesh, PartitionSpec()))
        return sums, greedy


_INPUTS = ("prefill", "prefill_mask", "step", "step_mask", "targets", "target_mask")


def _put(array: np.ndarray, mesh: Mesh | None, rules: LogicalRules | None):
    if mesh is None:
        return jnp.asarray(array)
    sharding = batch_sharding(mesh, rules or (), array.ndim)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def score_rows(model: nnx.Module, rows: Sequence[Row], *, batch_size: int, max_length: int,
               mesh: Mesh | None = None, rules: LogicalRules | None = None,
               progress: Callable[[int], None] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(summed log-probs, greedy) of each row's continuations ([len(row.continuations)] each), in `rows`
    order; greedy: every token of the continuation is the model's argmax (lm-evaluation-harness's).

    Rows are sorted by (step width, length) so each batch's padding is small; `progress(n)` is
    called with the number of rows done after each batch.
    """
    if mesh is not None and batch_size % data_parallel_size(mesh, rules or ()):
        raise ConfigError(f"batch_size={batch_size} is not divisible by the data-parallel size "
                          f"{data_parallel_size(mesh, rules or ())} (mesh axes the batch is split over)")
    rules = None if rules is None else tuple((n, tuple(a) if isinstance(a, list) else a) for n, a in rules)
    pad_id = pad_token_id(model_config=model.config)
    graphdef, state = nnx.split(model)
    graphdef = GraphKey(graphdef)
    order = sorted(range(len(rows)), key=lambda i: (step_bucket(rows[i].steps), len(rows[i].context)), reverse=True)
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(rows)

    def collect(chunk: list[int], result: tuple[jax.Array, jax.Array]) -> None:
        sums, greedy = (np.asarray(x.addressable_data(0)) for x in result)  # replicated (or on one device)
        bad = [i for b, i in enumerate(chunk) if not np.all(np.isfinite(sums[b, :len(rows[i].continuations)]))]
        if bad:  # an argmax over NaN scores would still pick a choice: a plausible-looking accuracy
            raise FloatingPointError(
                f"non-finite log-probabilities for {len(bad)} of {len(chunk)} rows in a batch (first: question "
                f"{rows[bad[0]].question}, scores {sums[chunk.index(bad[0]), :len(rows[bad[0]].continuations)]}): "
                f"the model's weights or computation are not finite (see the model's checkpoint / dtype)")
        for b, i in enumerate(chunk):
            out[i] = (sums[b, :len(rows[i].continuations)], greedy[b, :len(rows[i].continuations)])
        if progress is not None:
            progress(len(chunk))

    chunks, start = [], 0
    while start < len(order):
        # A batch holds one step width: single-token rows are never padded to a multi-token width.
        steps = step_bucket(rows[order[start]].steps)
        chunk = [order[start]]
        while len(chunk) < batch_size and start + len(chunk) < len(order) \
                and step_bucket(rows[order[start + len(chunk)]].steps) == steps:
            chunk.append(order[start + len(chunk)])
        chunks.append(chunk)
        start += len(chunk)
    own = [_widths([rows[i] for i in chunk], max_length) for chunk in chunks]
    planned = [width for _, group in itertools.groupby(own, key=lambda w: w[0])
               for width in plan_widths([w for _, w in group])]
    pending = None
    for chunk, width in zip(chunks, planned):
        arrays = _pad_batch([rows[i] for i in chunk], batch_size, max_length, int(pad_id), width)
        sums = _score_program(state, *(_put(arrays[k], mesh, rules) for k in _INPUTS),
                              graphdef=graphdef, mesh=mesh, rules=rules)
        if pending is not None:  # read the previous batch while this one runs (dispatch is asynchronous)
            collect(*pending)
        pending = (chunk, sums)
    if pending is not None:
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
