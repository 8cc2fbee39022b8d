"""The augment job's engine: prompts in, generated rows out, over `batch_size` decode slots.

  continuous (the default): whenever rows end (EOS or max_new_tokens), their slots take the next
    prompts, prefilled into those slots' cache rows, so decode steps approach generated tokens / slots.
  static: a batch of prompts fills the slots and decodes until its longest row ends, then the next.

Each prompt takes `num_samples` slots (rows), which share its prefill. Consecutive prompts that share
a prefix (`Prompt.prefix`: TeacherLM's kinds of one record share the question and its answer) form a
unit, inserted whole when its slots are free, whose prefix is prefilled once: for TeacherLM's three
kinds that halves the prefill. Prompts without a shared prefix are inserted in groups of a power-of-two
size (a handful of compiled prefill programs), padded on the left to a length bucket. Once no prompt
waits, the last rows move to a quarter of the slots or fewer (not below TAIL_SLOTS), whose steps cost
less; the step programs for both slot counts compile in the background while the first prefill runs.
A row's tokens depend only on the model, its prompt (and its prefix split) and its key (see
`teacherlm_jax.decode_slots`), so neither the engine nor the batch size changes what is generated.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from teacherlm_jax.augment.settings import Sampling
from teacherlm_jax.decode_slots import DecodeSlots, InsertShape, num_traces, row_keys, slot_count
from teacherlm_jax.sample import Sampler, bucket_length
from teacherlm_jax.sharding import LogicalRules

# Prompt widths: powers of two and 1.5x powers of two (at most a third of a prefill is padding).
BUCKETS = tuple(sorted({b for p in range(4, 14) for b in (2 ** p, 3 * 2 ** (p - 1))}))
# A prompt's own tokens after a shared prefix: TeacherLM's cues are short, and the same for every record.
SUFFIX_BUCKETS = (1, 2, 3, *range(4, 65, 4), *(b for b in BUCKETS if b > 64))
# Once no prompt waits, the last rows move to a quarter of the slots (or fewer), never below this many:
# on bloom-560m's shape on a 2-core CPU a step of 16 slots costs 218 ms, of 4 slots 119 ms, of 1 slot 94 ms.
TAIL_SLOTS = 4


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
    return bucket_length(prefix, BUCKETS), bucket_length(suffix, SUFFIX_BUCKETS)


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


class Engine:
    """Generates `num_samples` rows per prompt on `batch_size * num_samples` slots of `model` (a decode layout).

    `refill=True` is continuous batching, False static batches. `width` bounds every prompt's length.
    """

    def __init__(self, model: nnx.Module, *, batch_size: int, width: int, sampling: Sampling, eos_id: int | None,
                 pad_id: int, refill: bool, mesh: Mesh | None = None, rules: LogicalRules | None = None):
        self.samples = sampling.num_samples
        self.refill = refill
        self.width = width
        eos = [eos_id] if sampling.stop_at_eos and eos_id is not None else []
        self.slots = DecodeSlots(
            model, slots=slot_count(batch_size * self.samples, mesh, rules), prompt_width=width,
            max_new_tokens=sampling.max_new_tokens,
            sampler=Sampler(sampling.temperature, sampling.top_k, sampling.top_p), eos_ids=np.asarray(eos, np.int32),
            pad_id=pad_id, mesh=mesh, rules=rules)
        self.capacity = batch_size  # prompts at a time (idle slots that round up to the mesh stay idle)
        self.traces = num_traces()
        self.mesh, self.rules = mesh, rules
        self.all_slots = self.slots.slots
        self.ends_early = bool(eos)

    def stats(self) -> dict[str, Any]:
        """Counters since the engine was made (summary.json's `engine`)."""
        s = self.slots
        return {"engine": "continuous" if self.refill else "static", "slots": self.all_slots,
                "tail_slots": s.slots, "prompt_width": self.width,
                "decode_steps": s.decode_steps, "slot_steps": s.slot_steps, "kept_tokens": s.kept_tokens,
                "slot_occupancy": round(s.kept_tokens / max(1, s.slot_steps), 4),
                "prefill_tokens": s.prefill_tokens, "compiled_programs": num_traces() - self.traces}

    def generate(self, prompts: Iterable[tuple[Any, Prompt]]) -> Iterator[tuple[Any, list[np.ndarray]]]:
        """(tag, the tokens of each sample, its ending EOS included) per tagged prompt, as its rows end."""
        prompts = list(prompts)
        if self.refill:  # a tail is left where rows end at EOS (without it, rows inserted together end together)
            tail = self._tail_slots(1)
            self._compile_ahead([p for _, p in prompts], [self.all_slots] + (
                [tail] if self.ends_early and 4 * tail <= self.all_slots else []))
        units = self._units(prompts)
        unit = next(units, None)
        owners: dict[int, tuple[int, int]] = {}  # slot -> (prompt number, sample)
        waiting: dict[int, tuple[Any, list[np.ndarray | None]]] = {}  # prompt number -> (tag, samples)
        count, everything = 0, self.capacity * self.samples
        free = list(range(everything))
        while True:
            if self.refill or len(free) == everything:
                new = []
                while unit is not None and len(unit) * self.samples <= len(free):
                    for tag, prompt in unit:
                        slots, free = free[:self.samples], free[self.samples:]
                        waiting[count] = (tag, [None] * self.samples)
                        owners.update({slot: (count, s) for s, slot in enumerate(slots)})
                        new.append((prompt, slots))
                        count += 1
                    unit = next(units, None)
                self._insert(new)
            if not owners:
                self.slots.join()
                return
            active = self.slots.run(self.slots.max_new_tokens, until_all=not self.refill)
            ended = sorted(slot for slot in owners if not active[slot])
            tokens, _, lengths = self.slots.rows(ended)
            for slot, row, length in zip(ended, tokens, lengths):
                number, sample = owners.pop(slot)
                free.append(slot)
                tag, samples = waiting[number]
                samples[sample] = row[:length]
                if all(x is not None for x in samples):
                    del waiting[number]
                    yield tag, samples
            free.sort()
            if unit is None and self.refill:
                owners = self._shrink(owners)
                free = []

    def _tail_slots(self, rows: int) -> int:
        return slot_count(max(TAIL_SLOTS, 1 << max(0, rows - 1).bit_length()), self.mesh, self.rules)

    def _shrink(self, owners: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
        """With no prompt left, moves the remaining rows to fewer slots when they fit a quarter of them."""
        size = self._tail_slots(len(owners))
        if not owners or 4 * size > self.slots.slots:
            return owners
        keep = sorted(owners)
        self.slots.shrink(keep, size)
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

    def _insert(self, new: list[tuple[Prompt, list[int]]]) -> None:
        for ids, mask, group, prefix in self._prefills(new):
            self.slots.insert(ids, mask, np.array([slots for _, slots in group]), self._keys(group), prefix=prefix,
                              parent=None if prefix is None else np.zeros(len(group)))

    def _prefills(self, new: list[tuple[Prompt, list[int]]]) -> Iterator[tuple[np.ndarray, np.ndarray, list, Any]]:
        """(ids, mask, (prompt, slots) group, shared prefix or None) per insert: each shared prefix once with
        its rows, the other prompts in groups of power-of-two sizes (largest first)."""
        alone = [(p, slots) for p, slots in new if not p.prefix]
        start = 0
        while start < len(alone):
            size = 1 << ((len(alone) - start).bit_length() - 1)
            group = alone[start:start + size]
            start += size
            width = bucket_length(max(len(p.ids) for p, _ in group), BUCKETS)
            yield *self._left_padded([p.ids for p, _ in group], min(width, self.slots.length)), group, None
        shared = [(p, slots) for p, slots in new if p.prefix]
        prefix_of = lambda item: tuple(item[0].ids[:item[0].prefix])
        for _, unit in itertools.groupby(shared, key=prefix_of):
            unit = list(unit)
            head = unit[0][0]
            suffixes = [p.ids[p.prefix:] for p, _ in unit]
            longest = max(map(len, suffixes))
            wp, ws = _shared_widths(head.prefix, longest)
            if head.prefix + ws > self.width or wp + ws > self.slots.length:  # exact widths fit (see prompt_width)
                wp, ws = head.prefix, longest
            yield *self._left_padded(suffixes, ws), unit, self._left_padded([head.ids[:head.prefix]], wp)

    def _compile_ahead(self, prompts: Sequence[Prompt], slot_counts: Sequence[int]) -> None:
        """Compiles the step programs and the insert programs the prompts will need after the first fill
        (which compiles its own): every shared-prefix unit's shape, and groups of one and two prompts (the
        steady state of continuous batching) at each width of the prompts that share nothing."""
        units = [[p for _, p in unit] for unit in self._units(((None, p) for p in prompts))]
        first, room = 0, self.capacity
        while first < len(units) and len(units[first]) <= room:
            room -= len(units[first])
            first += 1
        widths = {}  # one prompt per width bucket, of the prompts that share nothing
        for p in (p for unit in units[first:] for p in unit if not p.prefix):
            widths.setdefault(min(bucket_length(len(p.ids), BUCKETS), self.slots.length), p)
        groups = [unit for unit in units[first:] if unit[0].prefix] + [[p] * n for p in widths.values() for n in (1, 2)]
        shapes = lambda new: [InsertShape.of(ids.shape, None if prefix is None else prefix[0].shape, self.samples)
                              for ids, _, _, prefix in self._prefills(new)]
        compiled_first = set(shapes([(p, None) for unit in units[:first] for p in unit]))
        later = [s for group in groups for s in shapes([(p, None) for p in group]) if s not in compiled_first]
        self.slots.compile_ahead(slot_counts, later)

    def _left_padded(self, rows: Sequence[Sequence[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(rows), width), self.slots.pad_id, np.int32)
        mask = np.zeros((len(rows), width), np.int32)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
        return ids, mask

    def _keys(self, group: Sequence[tuple[Prompt, list[int]]]):
        n = self.samples
        return row_keys(np.repeat([p.seed for p, _ in group], n), np.zeros(len(group) * n),
                        np.tile(np.arange(n), len(group)))
