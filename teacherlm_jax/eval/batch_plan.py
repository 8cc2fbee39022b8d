"""Scoring's batch planning: rows of given lengths packed into batches of sequences, and the widths the batches
are padded to, weighing padded columns against compiled programs (`plan_batches`)."""
from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

WIDTH_STEP = 16  # packing widths are multiples of this
WIDTH_CANDIDATES = 32  # at most this many one-width plans are weighed (`plan_batches`)


def round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def plan_batches(lengths: Sequence[int], sequences: int, max_length: int,
                 hidden_size: int) -> list[tuple[int, list[list[int]]]]:
    """Rows (their `lengths`) packed into batches of `sequences` sequences: [(width, each sequence's rows)],
    the cheapest of two kinds of plan by `_plan_cost`.

    Each batch's own width: its longest row's, rounded up to WIDTH_STEP, so that long rows are not packed
    wider than they need (five-shot MMLU). Each width is a compiled program: when the batches' own widths
    are more than ceil(sqrt(batches)), `plan_widths` picks that many, and the batches are made again with
    the smallest of them that holds their rows. Or one width for the whole run, from the longest row to
    twice it: a short run of short rows fills a few batches of one program (zero-shot MMLU). A batch's
    sequences are filled one at a time, each with the longest rows left that fit (first fit decreasing).
    """
    if any(n > max_length for n in lengths):
        raise ValueError(f"a row of {max(lengths)} tokens does not fit max_length={max_length}")
    own = _fill(lengths, sequences, max_length, allowed=None)
    planned = plan_widths([width for width, _ in own])
    plans = [own if set(planned) == {width for width, _ in own} else
             _fill(lengths, sequences, max_length, allowed=sorted(set(planned)))]
    widest = own[0][0]
    limit = min(2 * widest, max_length)
    step = max(WIDTH_STEP, round_up((limit - widest) // WIDTH_CANDIDATES, WIDTH_STEP))
    plans += [_fill(lengths, sequences, max_length, allowed=[width]) for width in range(widest, limit + 1, step)]
    return min(plans, key=lambda plan: _plan_cost(plan, sequences, hidden_size))


# A batch's cost in columns (sequences x width), each column costing 1 + width / (ATTENTION_WIDTH * hidden):
# a column costs more at larger widths (attention's scores and softmax, memory-bound on CPU, are dearer than
# their multiply-adds alone suggest). A compiled program costs COMPILE_COLUMNS, about what compiling a
# scoring program takes in columns' time. Both fitted on benchmarks/eval.py's workloads.
ATTENTION_WIDTH = 1.6
COMPILE_COLUMNS = 512


def columns_cost(sequences: int, width: int, hidden_size: int) -> float:
    """What `sequences` sequences of `width` columns cost, in columns of the cost model above."""
    return sequences * width * (1 + width / (ATTENTION_WIDTH * hidden_size))


def _plan_cost(plan: list[tuple[int, list[list[int]]]], sequences: int, hidden_size: int) -> float:
    columns = sum(columns_cost(sequences, width, hidden_size) for width, _ in plan)
    return columns + COMPILE_COLUMNS * len({width for width, _ in plan})


def _fill(lengths: Sequence[int], sequences: int, max_length: int,
          allowed: list[int] | None) -> list[tuple[int, list[list[int]]]]:
    left = sorted((n, i) for i, n in enumerate(lengths))  # ascending, for bisect
    batches = []
    while left:
        longest = left[-1][0]
        own = min(max_length, round_up(longest, WIDTH_STEP))
        width = own if allowed is None else min((w for w in allowed if w >= longest), default=own)
        batch = []
        while left and len(batch) < sequences:
            room, members = width, []
            while (j := bisect.bisect_right(left, (room, len(lengths))) - 1) >= 0:
                n, i = left.pop(j)
                members.append(i)
                room -= n
            batch.append(members)
        batches.append((width, batch))
    return batches


def plan_widths(widths: Sequence[int]) -> list[int]:
    """The width of each of a run's batches (their own `widths`, in run order): at most
    ceil(sqrt(len(widths))) distinct widths, each batch padded to the widest of its run of consecutive
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
