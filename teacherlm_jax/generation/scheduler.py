"""The engine: a stream of prompts in, generated rows out, over `batch_size x num_samples` decode slots.

  continuous (the default): rows that end (EOS or max_new_tokens) free their slots for the next prompts,
    prefilled into those slots' cache rows, so decode steps approach generated tokens / slots.
  static: a batch of prompts fills the slots and decodes until its longest row ends, then the next.

Rounds, not steps. The device decodes a round of steps (`DecodeSlots.run`) and the host steps in only
between rounds: a continuous round lasts until `refill_fraction` of the slots (at least the next unit's)
are free, or `round_steps` steps have run; rows that end inside a round stay masked on the device and
write no token. Between rounds the host reads the round's rows, inserts the next prompts into the freed
slots in one prefill call, dispatches the next round, and only then turns the ended rows into results
(the caller decodes and writes them) while the device decodes: host and device overlap, as in SGLang's
and JetStream's overlap scheduling. The threshold trades idle slots against round trips: waiting for F
free slots at p(end) per row per step idles about F / 2 slots a step, and a round trip costs R steps'
worth of time, so the waste per freed slot, F / (2 slots p) + R / F, is least near F = slots sqrt(2 p R).
On the CPU (benchmarks/engine_overhead.py: 64 slots, p = 1/32) 1/8 did best among 1/16, 1/8, 1/4 and 1/2,
hence REFILL_FRACTION = 1/8 (a few steps a round). On an accelerator, where a round trip costs several
steps (R large), the formula asks for a larger fraction (`refill_fraction`, `round_steps`).

Each prompt takes `num_samples` slots (rows), which share its prefill. Consecutive prompts that share
a prefix (`Prompt.prefix`: TeacherLM's kinds of one record share the question and its answer) form a
unit, inserted whole when its slots are free, whose prefix is prefilled once: for TeacherLM's three
kinds that halves the prefill. With `prefix_pool` (the default on GPUs, in a job whose units hold more than
one row; XLA CPU runs its attention slower and the TPU compiler's figures show more bytes a step:
docs/performance.md) a unit's prefix is also stored and read once: it takes a free slot of the slots' prefix pool
(`slots.pool_prefixes`) until its last row ends, and a round also ends once a pool slot
is free for the next unit (`slots` module docstring). Units go in shortest first within windows of a few fills
(ORDER_WINDOW_FILLS), so that one round's prefixes have about one width. Every insert call of a job holds
the same counts (`CallCounts`: a round's refill, in whole units), padded to them, and widths are bucketed
(this module's buckets), so a job compiles one prefill program per width it meets, on accelerators ahead, in
background threads. A round inserts whole calls: units that would leave a call part-empty wait for the next.
Once no prompt waits, the last rows move to a quarter of the slots or fewer, step by step (64 -> 16 -> 4
slots; not below TAIL_SLOTS), whose steps cost less; every slot count of that chain is compiled ahead. A row's
tokens depend only on the model, its prompt (and its prefix split) and its key (see `slots`), so neither the
engine, its rounds, its order of insertion nor the batch size changes what is generated.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from teacherlm_jax.data.padding import left_pad
from teacherlm_jax.generation.compiles import program_seconds, program_seconds_since
from teacherlm_jax.generation.sampler import PROMPT_BUCKETS, Sampling, bucket_length
from teacherlm_jax.generation.slots import (DecodeSlots, InsertShape, PoolPlaces, PoolShape, RowSeeds, RowsView,
                                            num_traces, pool_prefixes, slot_count)
from teacherlm_jax.sharding import LogicalRules

# The engine's prefill widths (shared prefixes, and whole prompts without one): PROMPT_BUCKETS and 1.25x and
# 1.75x powers of two from 40, so that at most a fifth of a padded width is padding. The engine inserts prompts
# in width order (ORDER_WINDOW_FILLS), so a round's prefixes share one of these and a job's
# rounds use a few of them: sorting and these cut the prefilled tokens for a few more insert programs
# (benchmarks/engine_overhead.py reports both). `generate` keeps PROMPT_BUCKETS: fewer programs, each
# compiled on the job's clock.
PREFILL_BUCKETS = tuple(sorted(set(PROMPT_BUCKETS) | {b for p in range(5, 16) for b in (5 * 2 ** (p - 2), 7 * 2 ** (p - 2))}))
# A prompt's own tokens after a shared prefix: TeacherLM's cues are short, and the same for every record.
SUFFIX_BUCKETS = (1, 2, 3, *range(4, 65, 4), *(b for b in PROMPT_BUCKETS if b > 64))

# Once no prompt waits, the last rows move to a quarter of the slots (or fewer), never below this many:
# a step's cost falls with its slots but levels off below a few (benchmarks/engine_overhead.py).
TAIL_SLOTS = 4
# A continuous round ends once this fraction of the slots is free (see the module docstring).
REFILL_FRACTION = 1 / 8
# Units go in shortest first within windows of this many fills of the slots (`batch_size` prompts a fill):
# a round's prefixes then share a width bucket, so its prefill call pads less, and no prompt goes in more
# than a window after its place in the stream (the augment job's chunks end in stream order, each at most a
# window's work later).
ORDER_WINDOW_FILLS = 4


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One prompt to continue: its token ids (already cut to the limit), its own seed, and how many of
    its leading tokens it shares with its neighbours in the stream (0: none), prefilled once for them."""

    ids: Sequence[int]
    seed: int
    prefix: int = 0

    def __post_init__(self):
        if not 0 <= self.prefix < len(self.ids):
            raise ValueError(f"prefix={self.prefix} must leave at least one of the prompt's {len(self.ids)} tokens")


def _shared_widths(prefix: int, suffix: int) -> tuple[int, int]:
    return bucket_length(prefix, PREFILL_BUCKETS), bucket_length(suffix, SUFFIX_BUCKETS)


def prompt_width(prompts: Iterable[Prompt], max_new_tokens: int, max_positions: int) -> int:
    """The slots' prompt width: room for every prompt, its shared prefix's bucket padding aside (a prefill's
    left padding may go past it), so that every decode step attends over as few columns as it can."""
    prompts = list(prompts)
    longest = max((len(p.ids) for p in prompts), default=1)
    if longest + max_new_tokens > max_positions:
        raise ValueError(f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the model's "
                         f"max_position_embeddings={max_positions}")
    wanted = max((p.prefix + _shared_widths(p.prefix, len(p.ids) - p.prefix)[1] for p in prompts if p.prefix),
                 default=1)
    return max(longest, min(wanted, max_positions - max_new_tokens))


class _New(NamedTuple):
    """A prompt going into `slots` [samples]; pooled slots: its prefix's pool slot, its first row's member."""

    prompt: Prompt
    slots: list[int]
    pool_slot: int | None = None
    member: int = 0


class CallCounts(NamedTuple):
    """What every insert call of a job holds at most, padded to it: `prefixes` units (each one shared prefix,
    or one prompt that shares nothing) of `prompts` prompts in all."""

    prefixes: int
    prompts: int


@dataclasses.dataclass
class _Call:
    """One prefill call: prefixes (pooled: each with its pool slot), and rows that each continue one of them."""

    prefixes: list[Sequence[int]]
    rows: list[tuple[Sequence[int], int, _New]]  # (own tokens, prefix number, the prompt's placement)
    pool_slots: list[int | None]


class Engine:
    """Generates `num_samples` rows per prompt on `batch_size * num_samples` slots of `model` (a decode layout).

    `refill=True` is continuous batching, False static batches. `width` bounds every prompt's length.
    `refill_fraction` and `round_steps` (default: max_new_tokens) end a continuous round (module docstring).
    `inserts_ahead` compiles likely insert programs in the background (default: on accelerators only; on a
    CPU the compiles would take the cores the decode steps run on, so programs compile when first needed).
    `prefix_pool` stores each unit's shared prefix once and reads it once a step for all its rows (the module
    docstring), in a job whose units hold more than one row; False keeps whole prompts in every row. Default:
    on GPUs only. On XLA CPU the pool's batched prefix dots make the workload of benchmarks/engine_overhead.py
    slower; on TPU the compiler counts more bytes a decode step with the pool than without (every data shard
    reads the whole pool, and its grouped attention costs more than the columns it saves: docs/scaling.md).
    """

    def __init__(self, model: nnx.Module, *, batch_size: int, width: int, sampling: Sampling, eos_id: int | None,
                 pad_id: int, refill: bool, mesh: Mesh | None = None, rules: LogicalRules | None = None,
                 refill_fraction: float = REFILL_FRACTION, round_steps: int | None = None,
                 inserts_ahead: bool | None = None, prefix_pool: bool | None = None):
        if not 0 < refill_fraction <= 1:
            raise ValueError(f"refill_fraction={refill_fraction!r}; expected a fraction of the slots in (0, 1]")
        self.samples = sampling.num_samples
        self.refill = refill
        self.width = width
        eos = [eos_id] if sampling.stop_at_eos and eos_id is not None else []
        self.slots = DecodeSlots(
            model, size=slot_count(batch_size * self.samples, mesh, rules), prompt_width=width,
            max_new_tokens=sampling.max_new_tokens,
            sampler=sampling.sampler(), eos_ids=np.asarray(eos, np.int32),
            pad_id=pad_id, mesh=mesh, rules=rules)
        self.capacity = batch_size  # prompts at a time (idle slots that round up to the mesh stay idle)
        self.usable = batch_size * self.samples
        self.refill_rows = max(1, round(refill_fraction * self.usable))
        self.call = CallCounts(1, 1)  # each job's own (`_call_counts`)
        self.round_steps = round_steps or sampling.max_new_tokens
        self.traces, self.program_seconds = num_traces(), program_seconds()
        self.mesh, self.rules = mesh, rules
        self.all_slots = self.slots.size
        self.ends_early = bool(eos)
        platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
        self.inserts_ahead = platform != "cpu" if inserts_ahead is None else inserts_ahead
        self.prefix_pool = platform == "gpu" if prefix_pool is None else prefix_pool
        self.max_positions = model.config.max_position_embeddings

    def stats(self) -> dict[str, Any]:
        """Counters since the engine was made (summary.json's `engine`)."""
        s = self.slots
        return {"engine": "continuous" if self.refill else "static", "slots": self.all_slots,
                "tail_slots": s.size, "prompt_width": self.width, "rounds": s.rounds,
                "decode_steps": s.decode_steps, "slot_steps": s.slot_steps, "kept_tokens": s.kept_tokens,
                "slot_occupancy": round(s.kept_tokens / max(1, s.slot_steps), 4),
                "prefill_tokens": s.prefill_tokens, "compiled_programs": num_traces() - self.traces,
                "program_seconds": program_seconds_since(self.program_seconds),
                "prefix_pool": 0 if s.pool is None else s.pool.prefixes}

    def generate(self, prompts: Iterable[tuple[Any, Prompt]]) -> Iterator[tuple[Any, list[np.ndarray]]]:
        """(tag, the tokens of each sample, its ending EOS included) per tagged prompt, as its rows end."""
        prompts = list(prompts)
        units = self._in_width_order(list(self._units(prompts)))
        self.call = self._call_counts(units)
        self._lay_out(units)  # every slot, none live (a previous call may have left the tail's few)
        self._compile_ahead(units)
        next_unit = 0
        owners: dict[int, tuple[int, int, int | None]] = {}  # slot -> (prompt number, sample, pool slot)
        waiting: dict[int, tuple[Any, list[np.ndarray | None]]] = {}  # prompt number -> (tag, samples)
        ended: list[tuple[tuple[int, int, int | None], np.ndarray]] = []  # the last round's ended rows
        count, free = 0, list(range(self.usable))
        pool = self.slots.pool
        free_prefixes = [] if pool is None else list(range(pool.prefixes))
        holders: dict[int, int] = {}  # pool slot -> its live rows
        while True:
            if self.refill or not owners:
                new = []
                for _ in range(self._admitted(units, next_unit, len(free), None if pool is None else len(free_prefixes))):
                    prefix_slot = None if pool is None else free_prefixes.pop(0)
                    for place, (tag, prompt) in enumerate(units[next_unit]):
                        slots, free = free[:self.samples], free[self.samples:]
                        waiting[count] = (tag, [None] * self.samples)
                        owners.update({slot: (count, s, prefix_slot) for s, slot in enumerate(slots)})
                        new.append(_New(prompt, slots, prefix_slot, place * self.samples))
                        count += 1
                    if pool is not None:
                        holders[prefix_slot] = len(units[next_unit]) * self.samples
                    next_unit += 1
                self._insert(new)
            pending = self.slots.run(self.round_steps, *self._stop_at(len(owners), units[next_unit:next_unit + 1]))\
                if owners else None
            yield from self._hand_out(ended, waiting)  # while the device decodes the round just dispatched
            if pending is None:
                self.slots.join()
                return
            view: RowsView = pending.result()
            done = sorted(slot for slot in owners if not view.active[slot])
            ended = [(owners.pop(slot), view.tokens[slot, :view.steps[slot]]) for slot in done]
            for (_, _, prefix_slot), _ in ended:
                if prefix_slot is not None:
                    holders[prefix_slot] -= 1
                    if not holders[prefix_slot]:  # its last row ended: the prefix leaves the pool
                        free_prefixes.append(prefix_slot)
            free = sorted(free + done)
            if next_unit == len(units) and self.refill:
                owners = self._shrink(owners)
                free = []

    @staticmethod
    def _hand_out(ended, waiting) -> Iterator[tuple[Any, list[np.ndarray]]]:
        for (number, sample, _), tokens in ended:
            tag, samples = waiting[number]
            samples[sample] = tokens
            if all(x is not None for x in samples):
                del waiting[number]
                yield tag, samples

    def _call_counts(self, units: list[list[tuple[Any, Prompt]]]) -> CallCounts:
        """The counts every insert call of the job is padded to: a continuous round's refill (`refill_rows`) in
        whole units of the job's largest, as many units as the smallest fit; a static batch's whole fill."""
        if not units:
            return CallCounts(1, 1)
        largest, smallest = max(map(len, units)), min(map(len, units))
        prompts = self.capacity if not self.refill else largest * -(-self.refill_rows // (largest * self.samples))
        prompts = max(largest, min(prompts, self.capacity))
        return CallCounts(prompts // smallest, prompts)

    def _pack(self, units: Sequence[Sequence]) -> list[list]:
        """`units` in order, in insert calls of at most `call` units and prompts."""
        calls: list[list] = []
        for unit in units:
            if not calls or not self._has_room(calls[-1], unit):
                calls.append([])
            calls[-1].append(unit)
        return calls

    def _has_room(self, call: Sequence[Sequence], unit: Sequence) -> bool:
        return len(call) < self.call.prefixes and sum(map(len, call)) + len(unit) <= self.call.prompts

    def _admitted(self, units: list, start: int, free_rows: int, free_prefixes: int | None) -> int:
        """How many of the units from `start` go in now: as many as the free slots (and free pool slots) take,
        less a last call with room left while more units wait (a continuous round's next refill takes them)."""
        end, rows = start, 0
        while (end < len(units) and rows + len(units[end]) * self.samples <= free_rows
               and (free_prefixes is None or end - start < free_prefixes)):
            rows += len(units[end]) * self.samples
            end += 1
        if self.refill and end < len(units):
            calls = self._pack(units[start:end])
            if len(calls) > 1 and self._has_room(calls[-1], units[end]):
                end -= len(calls[-1])
        return end - start

    def _stop_at(self, live: int, upcoming: list) -> tuple[int, int | None]:
        """Live rows and live prefixes (None: any) at which the round ends: free slots for a call and the next
        unit, and a free pool slot for it, or a smaller tail."""
        if not self.refill:
            return 0, None
        if upcoming:
            need = min(self.usable, max(self.call.prompts, len(upcoming[0])) * self.samples)
            return max(0, self.usable - need), None if self.slots.pool is None else self.slots.pool.prefixes - 1
        smaller = [s for s in self._tail_sizes() if s < self.slots.size]
        return (smaller[0] if smaller else 0), None

    def _tail_sizes(self) -> list[int]:
        """The slot counts the last rows move through: a quarter at a time, down to TAIL_SLOTS."""
        sizes = [self.all_slots]
        while self.ends_early and self.refill:
            quarter = slot_count(sizes[-1] // 4, self.mesh, self.rules)
            if quarter < TAIL_SLOTS or quarter >= sizes[-1]:
                break
            sizes.append(quarter)
        return sizes

    def _shrink(self, owners: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
        """With no prompt left, moves the remaining rows to the fewest slots of the tail's chain they fit."""
        fits = [s for s in self._tail_sizes() if len(owners) <= s < self.slots.size]
        if not owners or not fits:
            return owners
        keep = sorted(owners)
        self.slots.shrink(keep, min(fits))
        return {new: owners[old] for new, old in enumerate(keep)}

    def _units(self, prompts: Iterable[tuple[Any, Prompt]]) -> Iterator[list[tuple[Any, Prompt]]]:
        """Runs of consecutive prompts with the same shared prefix (at most `batch_size`); others alone."""
        unit: list[tuple[Any, Prompt]] = []
        for tag, prompt in prompts:
            head = unit[0][1] if unit else None
            if head is not None and not (prompt.prefix and prompt.prefix == head.prefix and len(unit) < self.capacity
                                         and tuple(prompt.ids[:prompt.prefix]) == tuple(head.ids[:head.prefix])):
                yield unit
                unit = []
            unit.append((tag, prompt))
        if unit:
            yield unit

    def _in_width_order(self, units: list[list[tuple[Any, Prompt]]]) -> list[list[tuple[Any, Prompt]]]:
        """`units` sorted by their prefill width (stable) within consecutive windows of ORDER_WINDOW_FILLS fills."""
        window, start, ordered = ORDER_WINDOW_FILLS * self.capacity, 0, []
        width = lambda unit: unit[0][1].prefix or len(unit[0][1].ids)
        while start < len(units):
            end, prompts = start + 1, len(units[start])
            while end < len(units) and prompts < window:
                prompts += len(units[end])
                end += 1
            ordered += sorted(units[start:end], key=width)
            start = end
        return ordered

    def _lay_out(self, units: list[list[tuple[Any, Prompt]]]) -> None:
        """Empties the slots, laid out for this job: with `prefix_pool` and units of several rows, a pool of
        prefixes as wide as the job's widest prefill and rows as wide as its widest own tokens; else whole
        prompts `width` wide."""
        members = max((len(unit) for unit in units), default=1) * self.samples
        if not self.prefix_pool or members == 1 or not units:
            self.slots.relayout(self.width, None)
            return
        widths = [self._pool_widths(call) for unit in units
                  for call in self._calls([_New(p, [], 0, i * self.samples) for i, (_, p) in enumerate(unit)])]
        prefixes = pool_prefixes(self.usable, members, self.all_slots)
        self.slots.relayout(max(ws for _, ws in widths), PoolShape(prefixes, max(wp for wp, _ in widths), members))

    def _insert(self, new: list[_New]) -> None:
        for ids, mask, prefix, parent, slot_ids, seeds, places in self._calls_arrays(new):
            self.slots.insert(ids, mask, slot_ids, seeds, prefix=prefix, parent=parent, places=places)

    def _calls_arrays(self, new: list[_New]) -> list[tuple]:
        return [arrays for call in self._calls(new) for arrays in self._arrays(call)]

    def _calls(self, new: list[_New]) -> list[_Call]:
        """Prefill calls (`_pack`) for the prompts that share nothing (each a unit of its own: its tokens but
        the last are its prefix) and for the shared-prefix units (a job's prompts are usually all one or the
        other), each prefix once (with a pool: once per pool slot)."""
        lone, shared = [[x] for x in new if not x.prompt.prefix], []
        for x in new:
            if x.prompt.prefix:  # a unit's prompts are consecutive, from member 0
                if x.member == 0 or not shared:
                    shared.append([])
                shared[-1].append(x)
        return [_Call([unit[0].prompt.ids[:unit[0].prompt.prefix or -1] for unit in units],
                      [(x.prompt.ids[x.prompt.prefix or -1:], j, x) for j, unit in enumerate(units) for x in unit],
                      [unit[0].pool_slot for unit in units])
                for group in (lone, shared) for units in self._pack(group)]

    def _pool_widths(self, call: _Call) -> tuple[int, int]:
        """(prefix width, own width) of a call into pooled slots: the prefixes' bucket, the own tokens' bucket."""
        longest = max(len(p) for p in call.prefixes)
        own = max(len(ids) for ids, *_ in call.rows)
        if own == 1:  # prompts that share nothing: the whole prompt's bucket, less the step's token
            return max(longest, min(bucket_length(longest + 1, PREFILL_BUCKETS), self.max_positions) - 1), 1
        wp, ws = _shared_widths(longest, own)
        return max(longest, min(wp, self.max_positions - ws)), ws

    def _widths(self, call: _Call) -> tuple[int, int] | None:
        """(prefix width, own width) of a call, or None when its rows do not fit the slots in one call."""
        if self.slots.pool is not None:
            return self._pool_widths(call)
        longest = max(len(p) for p in call.prefixes)
        own = max(len(ids) for ids, *_ in call.rows)
        if own == 1:  # prompts that share nothing: the whole prompt's bucket, less the step's token
            return min(bucket_length(longest + 1, PREFILL_BUCKETS), self.slots.length) - 1, 1
        wp, ws = _shared_widths(longest, own)
        if wp + ws > self.slots.length:
            wp = longest
        fits = all(len(call.prefixes[j]) + ws <= self.width for _, j, _ in call.rows) and wp + ws <= self.slots.length
        return (wp, ws) if fits else None

    def _arrays(self, call: _Call, counts: CallCounts | None = None) -> Iterator[tuple]:
        """(ids, mask, (prefix ids, prefix mask), parent, slot ids, seeds, pool places or None) of one call; rows
        and prefixes are padded to `counts` (default: the job's `call`; padding rows go to no slot, padding
        prefixes to no pool slot)."""
        widths = self._widths(call)
        if widths is None:  # rows whose prefix and the call's own width overflow: exact widths, one unit a call
            for j in range(len(call.prefixes)):
                rows = [(ids, 0, x) for ids, i, x in call.rows if i == j]
                yield from self._arrays(_Call([call.prefixes[j]], rows, [call.pool_slots[j]]),
                                        CallCounts(1, self.call.prompts))
            return
        wp, ws = widths
        k, m = counts or self.call
        pad = self.slots.pad_id
        prefix = left_pad(list(call.prefixes) + [()] * (k - len(call.prefixes)), wp, pad)
        ids, mask = left_pad([ids for ids, *_ in call.rows] + [()] * (m - len(call.rows)), ws, pad)
        parent = np.array([j for _, j, _ in call.rows] + [0] * (m - len(call.rows)), np.int32)
        slot_ids = np.full((m, self.samples), self.slots.full_size, np.int32)  # padding rows: no slot
        slot_ids[:len(call.rows)] = [x.slots for *_, x in call.rows]
        prompts = [x.prompt for *_, x in call.rows] + [None] * (m - len(call.rows))
        seeds = RowSeeds.of(np.repeat([0 if p is None else p.seed for p in prompts], self.samples),
                            np.zeros(m * self.samples), np.tile(np.arange(self.samples), m))
        places = None
        if self.slots.pool is not None:
            pool = self.slots.pool
            members = np.zeros((m, self.samples), np.int32)
            members[:len(call.rows)] = [x.member + np.arange(self.samples) for *_, x in call.rows]
            places = PoolPlaces(np.array(call.pool_slots + [pool.prefixes] * (k - len(call.prefixes)), np.int32),
                                members.reshape(-1))
        yield ids, mask, prefix, parent, slot_ids, seeds, places

    def _compile_ahead(self, units: list[list[tuple[Any, Prompt]]]) -> None:
        """Compiles the round programs of every slot count of the tail, and the insert programs that rounds
        after the first fill (which compiles its own) may call: each unit's widths alone, and the calls of the
        units after the first fill in stream order (a call's widths are its widest unit's, so a round whose
        calls group units otherwise meets these or compiles its program when it first comes)."""
        first = self._admitted(units, 0, self.usable, None if self.slots.pool is None else self.slots.pool.prefixes)
        slot = None if self.slots.pool is None else 0
        shapes = lambda group: [InsertShape.of(a[0].shape, a[2][0].shape, self.samples) for a in self._calls_arrays(
            [_New(p, [0] * self.samples, slot, i * self.samples) for unit in group for i, (_, p) in enumerate(unit)])]
        compiled_first = set(shapes(units[:first]))
        rest = units[first:] if self.refill and self.inserts_ahead else []
        later = [shape for group in [rest, *([unit] for unit in rest)] for shape in shapes(group)]
        self.slots.compile_ahead(self._tail_sizes(), [s for s in dict.fromkeys(later) if s not in compiled_first])
