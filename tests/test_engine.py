"""The generation engine's decode slots: continuous batching gives every row exactly what `generate` gives
it alone (greedy and sampled, prompts of mixed lengths, rows ending at different steps), whatever the
engine, batch size or slot a row lands in; it needs fewer decode steps than static batches; the
decode layout of a listed model shares its weights (held once)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from reference_models import save_reference, tiny_bloom
from teacherlm_jax import from_pretrained, generate
from teacherlm_jax.generation import (DecodeSlots, Engine, InsertShape, Prompt, RowSeeds, Sampler, Sampling, num_traces,
                                      prompt_width)
from teacherlm_jax.generation import scheduler
from teacherlm_jax.generation.slots import Round, _run

EOS, PAD, MAX_NEW = 2, 3, 12
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny BLOOM whose rows end at EOS after varied numbers of steps."""
    model = tiny_bloom(vocab_size=96, tie_word_embeddings=False, pad_token_id=PAD, eos_token_id=EOS, seq_length=128)
    with torch.no_grad():
        for p in model.transformer.h.parameters():
            p.mul_(3.0)
        bias = model.transformer.ln_f.bias
        model.lm_head.weight[EOS] = 1.5 * bias / bias.norm() ** 2  # EOS logit ~1.5: often the top token
    directory = tmp_path_factory.mktemp("engine_teacher")
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model(checkpoint):
    return from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def decoder(model):
    """The model's decode layout, made once: `generate` given the scanned model slices its layers every call."""
    return model.for_decoding()


def prompts(count: int = 11, seed: int = 0) -> list[Prompt]:
    """Prompts of 1 to 45 tokens; some come as three that share a prefix (as a record's kinds do)."""
    rng = np.random.default_rng(seed)
    items = []
    for n in rng.integers(1, 40, count):
        ids = rng.integers(4, 96, int(n)).tolist()
        tails = [rng.integers(4, 96, int(rng.integers(1, 6))).tolist() for _ in range(3)] if n % 2 else [[]]
        items += [Prompt(tuple(ids + tail), int(rng.integers(0, 2**32)), len(ids) if tail else 0) for tail in tails]
    assert any(p.prefix for p in items) and any(not p.prefix for p in items)
    return items


def run_engine(model, items: list[Prompt], sampling: Sampling, **kwargs) -> tuple[dict[int, list], dict]:
    kwargs.setdefault("prefix_pool", True)  # the GPUs' default: the pool's rows are checked here
    engine = Engine(model.for_decoding(), width=prompt_width(items, sampling.max_new_tokens, 128),
                    sampling=sampling, eos_id=EOS, pad_id=PAD, **kwargs)
    out = {i: [s.tolist() for s in samples] for i, samples in engine.generate(enumerate(items))}
    return out, engine.stats()


def alone(model, prompt: Prompt, sampling: Sampling) -> list[list[int]]:
    """What `generate` gives one prompt on its own, per sample, up to and including its EOS."""
    out = generate(model, np.array([prompt.ids]), np.ones((1, len(prompt.ids)), np.int32),
                   max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_k=sampling.top_k,
                   num_samples=sampling.num_samples, eos_token_id=EOS, seed=[prompt.seed])
    return [row[:n].tolist() for row, n in zip(out.tokens, out.lengths)]


@pytest.mark.parametrize("sampling", [Sampling(temperature=0.0, max_new_tokens=MAX_NEW),
                                      Sampling(temperature=1.0, top_k=50, max_new_tokens=MAX_NEW, num_samples=2)],
                         ids=["greedy", "sampled"])
def test_continuous_rows_equal_generate_alone(model, decoder, sampling):
    items = prompts()
    out, stats = run_engine(model, items, sampling, batch_size=3, refill=True)
    assert sorted(out) == list(range(len(items)))
    lengths = [len(s) for samples in out.values() for s in samples]
    assert len(set(lengths)) > 2 and min(lengths) < MAX_NEW, "rows should end at different steps"
    for i, prompt in enumerate(items):
        assert out[i] == alone(decoder, prompt, sampling), f"prompt {i}"
    assert stats["kept_tokens"] == sum(lengths)
    assert 0 < stats["slot_occupancy"] <= 1 and stats["decode_steps"] * stats["slots"] == stats["slot_steps"]


@pytest.mark.slow  # whole schedules of many rounds
def test_scheduling_changes_nothing_and_continuous_needs_fewer_steps(model):
    """Continuous and static batching and another batch size generate the same rows; continuous needs fewer
    steps; once no prompt waits, the last rows decode on a quarter of the slots."""
    sampling = Sampling(temperature=1.0, top_k=50, max_new_tokens=MAX_NEW)
    items = prompts(16, seed=1)
    continuous, c_stats = run_engine(model, items, sampling, batch_size=4, refill=True)
    static, s_stats = run_engine(model, items, sampling, batch_size=4, refill=False)
    wide, w_stats = run_engine(model, items, sampling, batch_size=16, refill=True)
    assert continuous == static == wide
    tokens = sum(len(s) for samples in continuous.values() for s in samples)
    assert c_stats["kept_tokens"] == s_stats["kept_tokens"] == tokens
    assert c_stats["decode_steps"] < s_stats["decode_steps"]
    assert c_stats["slot_occupancy"] > s_stats["slot_occupancy"]
    # Static batches decode as long as their longest row: their steps are the sums of batch maxima.
    lengths = [len(continuous[i][0]) for i in range(len(items))]
    assert c_stats["decode_steps"] >= max(lengths) and c_stats["decode_steps"] >= -(-tokens // 4)
    assert (w_stats["slots"], w_stats["tail_slots"], c_stats["tail_slots"]) == (16, 4, 4)
    assert w_stats["slot_steps"] < w_stats["decode_steps"] * 16 and w_stats["kept_tokens"] == tokens


@pytest.mark.slow  # whole schedules of many rounds
def test_units_go_in_by_width_within_windows(model, monkeypatch):
    """Units are inserted shortest first within windows of ORDER_WINDOW_FILLS fills (never more than a window
    from their place in the stream), which pads the prefill calls less and generates the same rows."""
    sampling = Sampling(temperature=1.0, top_k=50, max_new_tokens=4)
    items, batch = prompts(12, seed=3), 6
    engine = Engine(model.for_decoding(), batch_size=batch, width=prompt_width(items, 4, 128), sampling=sampling,
                    eos_id=EOS, pad_id=PAD, refill=True)
    units = list(engine._units(enumerate(items)))
    ordered = engine._in_width_order(units)
    width = lambda unit: unit[0][1].prefix or len(unit[0][1].ids)
    start, window = 0, scheduler.ORDER_WINDOW_FILLS * batch
    while start < len(units):  # each window: the stream's next units, sorted, holding `window` prompts or more
        end = next(e for e in range(start + 1, len(units) + 1)
                   if e == len(units) or sum(map(len, units[start:e])) >= window)
        assert ordered[start:end] == sorted(units[start:end], key=width), f"window at unit {start}"
        start = end
    assert [width(u) for u in ordered] != [width(u) for u in units], "the fixture's widths should need sorting"
    sorted_rows, sorted_stats = run_engine(model, items, sampling, batch_size=batch, refill=True)
    monkeypatch.setattr(scheduler, "ORDER_WINDOW_FILLS", 0)  # a unit a window: stream order
    stream_rows, stream_stats = run_engine(model, items, sampling, batch_size=batch, refill=True)
    assert sorted_rows == stream_rows
    assert sorted_stats["prefill_tokens"] < stream_stats["prefill_tokens"]


def test_only_left_padding_goes_past_the_prompt_width(model):
    """A prefill's bucket may be wider than the slots' prompt width when the extra columns are padding."""
    slots = DecodeSlots(model.for_decoding(), size=2, prompt_width=4, max_new_tokens=3, sampler=Sampler(),
                        eos_ids=np.array([], np.int32), pad_id=PAD)
    keys = RowSeeds.of([0, 1], [0, 0], [0, 0])
    ids = np.array([[PAD, PAD, 5, 6, 7, 8], [PAD, PAD, PAD, 9, 10, 11]])
    slots.insert(ids, (ids != PAD).astype(np.int32), np.array([[0], [1]]), keys)
    slots.run(3).result()
    tokens, _, _ = slots.rows([0, 1])
    expected = generate(model, ids, (ids != PAD).astype(np.int32), max_new_tokens=3).tokens
    np.testing.assert_array_equal(tokens, expected)
    with pytest.raises(ValueError, match="only left padding"):
        slots.insert(np.array([[4, 5, 6, 7, 8, 9]]), np.ones((1, 6), np.int32), np.array([[0]]), RowSeeds.of([0], [0], [0]))


def programs_ahead_then_called(model, mesh=None, rules=None) -> int:
    """Programs compiled by the calls after `compile_ahead` compiled theirs (insert, round, shrink, round)."""
    slots = DecodeSlots(model, size=8, prompt_width=13, max_new_tokens=3, sampler=Sampler(),
                        eos_ids=np.array([EOS], np.int32), pad_id=PAD, mesh=mesh, rules=rules)
    shape = InsertShape(prefixes=1, prefix_width=9, rows=2, width=4, copies=1)
    slots.compile_ahead([8, 4], [shape])
    slots.join()
    compiled = num_traces()
    ids = np.array([[PAD, 5, 6, 7], [PAD, PAD, 8, 9]])
    slots.insert(ids, (ids != PAD).astype(np.int32), np.array([[0], [2]]), RowSeeds.of([1, 1], [0, 0], [0, 1]),
                 prefix=(np.array([[PAD] + list(range(10, 18))]), np.array([[0] + [1] * 8])), parent=np.zeros(2))
    slots.run(2).result()
    slots.shrink([0, 2], 4)
    slots.run(2).result()
    return num_traces() - compiled


def test_programs_compiled_ahead_are_the_ones_called(model):
    """The insert, round and shrink programs compiled in the background are the ones later calls run: none
    is compiled again (a program compiled for other input shardings than the call's would be)."""
    assert programs_ahead_then_called(model.for_decoding()) == 0


def test_engine_compiles_later_inserts_ahead(model, monkeypatch):
    """Every insert of one unit after the first fill (one shared prefix and its rows, or one prompt that shares
    nothing) has its program compiled ahead (a prefill program can take seconds to compile on a GPU)."""
    ahead, called = [], []
    compile_ahead, insert, run = DecodeSlots.compile_ahead, DecodeSlots.insert, DecodeSlots.run

    def record_ahead(self, slot_counts, inserts=()):
        ahead.extend(inserts)
        return compile_ahead(self, slot_counts, inserts)

    def record_insert(self, ids, mask, slot_ids, seeds, prefix=None, parent=None, places=None):
        real = np.asarray(slot_ids).reshape(len(ids), -1)[:, 0] < self.full_size  # padding rows go to no slot
        units = len(set(np.asarray(parent)[real].tolist()))
        called.append((InsertShape.of(ids.shape, None if prefix is None else prefix[0].shape, 1), units))
        return insert(self, ids, mask, slot_ids, seeds, prefix=prefix, parent=parent, places=places)

    def record_run(self, max_steps, *stops):
        called.append(("run", 0))
        return run(self, max_steps, *stops)

    monkeypatch.setattr(DecodeSlots, "compile_ahead", record_ahead)
    monkeypatch.setattr(DecodeSlots, "insert", record_insert)
    monkeypatch.setattr(DecodeSlots, "run", record_run)
    items = prompts(16, seed=2)
    out, _ = run_engine(model, items, Sampling(temperature=1.0, top_k=50, max_new_tokens=MAX_NEW), batch_size=4,
                        refill=True, inserts_ahead=True)
    assert len(out) == len(items)
    start = called.index(("run", 0))
    first_fill = {shape for shape, _ in called[:start]}
    later = {shape for shape, units in called[start:] if shape != "run" and units == 1}
    assert later and later - first_fill <= set(ahead)


def live_bytes() -> int:
    return sum(x.nbytes for x in jax.live_arrays())


@pytest.mark.parametrize("samples", [1, 4], ids=["units_of_1_and_3_rows", "units_of_4_and_12_rows"])
def test_pooled_prefixes_generate_what_whole_rows_do(model, monkeypatch, samples):
    """With a prefix pool (each unit's prefix stored and read once for its rows) the engine, continuous or
    static, generates what it generates with whole prompts in every row, token for token; a prefix stays in
    the pool while some of its rows have ended and new units go in."""
    sampling = Sampling(temperature=1.0, top_k=50, max_new_tokens=MAX_NEW, num_samples=samples)
    items = prompts(9, seed=8)
    outlived, unit_rows = [], {}  # pool slot -> the rows its unit went in with
    insert = DecodeSlots.insert

    def live_rows(slots):
        pool, active = slots.state.cache.prefix, np.asarray(slots.state.active)
        return np.bincount(np.asarray(pool.row)[active], minlength=pool.prefixes + 1)[:-1]

    def record_insert(self, *args, **kwargs):
        if self.pool is None:
            return insert(self, *args, **kwargs)
        before = live_rows(self)
        outlived.extend(0 < live < unit_rows.get(p, 0) for p, live in enumerate(before))
        insert(self, *args, **kwargs)
        unit_rows.update({p: live for p, live in enumerate(live_rows(self)) if live > before[p]})

    monkeypatch.setattr(DecodeSlots, "insert", record_insert)
    pooled, stats = run_engine(model, items, sampling, batch_size=4, refill=True)
    whole, whole_stats = run_engine(model, items, sampling, batch_size=4, refill=True, prefix_pool=False)
    assert pooled == whole
    assert stats["prefix_pool"] > 0 and whole_stats["prefix_pool"] == 0
    lengths = [len(s) for samples in pooled.values() for s in samples]
    assert MAX_NEW in lengths and min(lengths) < MAX_NEW, lengths
    assert any(outlived) and max(unit_rows.values()) == 3 * samples and min(unit_rows.values()) == samples
    if samples == 1:
        assert run_engine(model, items, sampling, batch_size=4, refill=False)[0] == pooled


def test_listed_decode_layout_holds_the_weights_once(checkpoint, model):
    ids = np.array([[5, 9, 14, 3, 22, 7]])
    expected = np.asarray(model(ids))
    before = live_bytes()
    copy = model.for_decoding()  # a scanned model: its layers are sliced out, a copy of the blocks
    grown = live_bytes() - before
    assert grown >= sum(x.nbytes for x in jax.tree.leaves(nnx.state(model.h)))
    del copy
    listed = from_pretrained(checkpoint, scan_layers=False)
    before = live_bytes()
    decoder = listed.for_decoding()
    assert decoder.is_for_decoding and decoder.for_decoding() is decoder and live_bytes() == before
    np.testing.assert_allclose(np.asarray(decoder(ids)), expected, rtol=1e-5, atol=1e-5)


TENSOR_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jax.sharding import AxisType
    from teacherlm_jax import from_pretrained, generate
    from teacherlm_jax.generation import Engine, Prompt, Sampling

    rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"),
             ("vocab", "tensor"))
    prompts = [Prompt(tuple(p), 7) for p in json.loads(sys.argv[2])]
    width = max(len(p.ids) for p in prompts)
    ids = np.array([[3] * (width - len(p.ids)) + list(p.ids) for p in prompts])
    mask = np.array([[0] * (width - len(p.ids)) + [1] * len(p.ids) for p in prompts])
    greedy = Sampling(temperature=0.0, max_new_tokens=10)

    def engine_rows(model, mesh=None, batch_size=3):
        engine = Engine(model, batch_size=batch_size, width=32, sampling=greedy, eos_id=2, pad_id=3, refill=True,
                        mesh=mesh, rules=rules if mesh else None, prefix_pool=True)
        rows = {i: [s.tolist() for s in samples] for i, samples in engine.generate(enumerate(prompts))}
        assert engine.stats()["tail_slots"] == (4 if batch_size == 16 else engine.stats()["slots"]), engine.stats()
        return rows

    one = from_pretrained(sys.argv[1])
    results = {"one": generate(one, ids, mask, max_new_tokens=10).tokens.tolist(),
               "one_engine": engine_rows(one.for_decoding())}
    for tensor in (2, 4):
        mesh = jax.make_mesh((8 // tensor, 1, tensor), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
        model = from_pretrained(sys.argv[1], mesh=mesh, rules=rules, scan_layers=False).for_decoding()
        kernel = model.h[0].dense_h_to_4h.kernel[...]
        assert kernel.addressable_shards[0].data.shape[1] == kernel.shape[1] // tensor, kernel.sharding
        results[f"tensor{tensor}"] = generate(model, ids, mask, max_new_tokens=10, mesh=mesh, rules=rules).tokens.tolist()
        results[f"tensor{tensor}_engine"] = engine_rows(model, mesh)
    results["tensor2_tail"] = engine_rows(model, mesh, batch_size=16)  # the last rows move to 4 sharded slots
    sys.path.insert(0, sys.argv[3])
    from test_engine import programs_ahead_then_called
    results["compiled_again"] = programs_ahead_then_called(model, mesh, rules)
    print(json.dumps(results))
""")


@pytest.mark.slow
def test_tensor_parallel_generation_matches_one_device(tmp_path):
    """Teachers too large for a chip: parameters split over heads/mlp/vocab (8 fake devices, tensor 2 and 4,
    loaded with listed layers, whose decode layout shares them) generate what one device does, with
    `generate` and with the continuous engine."""
    model = tiny_bloom(vocab_size=96, hidden_size=64, n_head=8, pad_token_id=PAD, eos_token_id=EOS,
                       tie_word_embeddings=False)
    with torch.no_grad():  # EOS often the top token, so that greedy rows end at different steps
        bias = model.transformer.ln_f.bias
        model.lm_head.weight[EOS] = 1.5 * bias / bias.norm() ** 2
    save_reference(model, tmp_path)
    rng = np.random.default_rng(3)
    items = [rng.integers(4, 96, int(n)).tolist() for n in (5, 17, 2, 30, 9)]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", TENSOR_SCRIPT, str(tmp_path), json.dumps(items), str(Path(__file__).parent)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert np.array(results["one"]).shape == (5, 10)
    for tensor in (2, 4):
        assert results[f"tensor{tensor}"] == results["one"]
        assert results[f"tensor{tensor}_engine"] == results["one_engine"]
    assert results["tensor2_tail"] == results["one_engine"]
    assert results["compiled_again"] == 0  # on the mesh too, the programs compiled ahead are the ones run
    # The engine's rows are `generate`'s, cut after their EOS; some end before 10 tokens.
    assert len({len(row) for (row,) in results["one_engine"].values()}) > 1, results["one_engine"]
    for i, row in enumerate(results["one"]):
        (engine_row,) = results["one_engine"][str(i)]
        assert engine_row == row[:len(engine_row)] and (len(engine_row) == 10 or engine_row[-1] == EOS)


OPT_MAX_NEW = 8


@pytest.fixture(scope="module")
def opt_model(tmp_path_factory):
    """A tiny OPT teacher (learned positions) whose sampled rows end at EOS after a few tokens or run to
    max_new_tokens: a slot whose row ended at max_new_tokens must not leave anything a later row reads."""
    from reference_models import tiny_opt

    model = tiny_opt(vocab_size=96, max_position_embeddings=128, pad_token_id=1, eos_token_id=EOS,
                     tie_word_embeddings=False)
    with torch.no_grad():
        bias = model.model.decoder.final_layer_norm.bias
        model.lm_head.weight[EOS] = 2.0 * bias / bias.norm() ** 2
    directory = tmp_path_factory.mktemp("engine_opt_teacher")
    model.save_pretrained(directory)
    return from_pretrained(directory)


def test_opt_teacher_rows_equal_generate_alone(opt_model):
    """Two kinds per record (a shared-prefix unit waits while rows run), batch 3, rows ending at EOS and at
    max_new_tokens: the continuous engine gives each row exactly what `generate` gives it alone."""
    sampling = Sampling(temperature=1.0, top_k=50, max_new_tokens=OPT_MAX_NEW)
    rng = np.random.default_rng(4)
    items = []
    for n in rng.integers(3, 30, 10):
        question = rng.integers(4, 96, int(n)).tolist()
        items += [Prompt(tuple(question + cue), int(rng.integers(0, 2**32)), len(question)) for cue in ([5, 6], [7])]
    decoder = opt_model.for_decoding()
    engine = Engine(decoder, batch_size=3, width=prompt_width(items, OPT_MAX_NEW, 128),
                    sampling=sampling, eos_id=EOS, pad_id=1, refill=True, prefix_pool=True)
    out = {i: [s.tolist() for s in samples] for i, samples in engine.generate(enumerate(items))}
    lengths = [len(s) for samples in out.values() for s in samples]
    assert OPT_MAX_NEW in lengths and min(lengths) < OPT_MAX_NEW, lengths
    for i, prompt in enumerate(items):
        assert out[i] == alone(decoder, prompt, sampling), f"prompt {i}"


@pytest.mark.slow  # whole schedules of many rounds
def test_engine_generates_again_after_its_tail_shrank(model, decoder):
    """A second `generate` call on an engine whose last rows moved to fewer slots uses every slot again."""
    sampling = Sampling(temperature=1.0, top_k=50, max_new_tokens=MAX_NEW)
    first, second = prompts(16, seed=1), prompts(16, seed=5)
    engine = Engine(model.for_decoding(), batch_size=16, width=prompt_width(first + second, MAX_NEW, 128),
                    sampling=sampling, eos_id=EOS, pad_id=PAD, refill=True)
    rows = lambda items: {i: [s.tolist() for s in samples] for i, samples in engine.generate(enumerate(items))}
    assert len(rows(first)) == len(first) and engine.stats()["tail_slots"] == 4
    again = rows(second)
    assert sorted(again) == list(range(len(second))) and engine.stats()["tail_slots"] == 4
    for i in (0, 5, len(second) - 1):
        assert again[i] == alone(decoder, second[i], sampling), f"prompt {i}"


def test_every_tail_slot_count_is_compiled_ahead(model, monkeypatch):
    """64 slots whose last rows move to 16, then 4: each count's round program (and each move) is compiled
    ahead, none inside the loop."""
    ahead, used = set(), set()
    compile_ahead, run = DecodeSlots.compile_ahead, DecodeSlots.run

    def record_ahead(self, slot_counts, inserts=()):
        ahead.update(slot_counts)
        return compile_ahead(self, slot_counts, inserts)

    def record_run(self, max_steps, *stops):
        used.add(self.size)
        return run(self, max_steps, *stops)

    monkeypatch.setattr(DecodeSlots, "compile_ahead", record_ahead)
    monkeypatch.setattr(DecodeSlots, "run", record_run)
    out, stats = run_engine(model, prompts(20, seed=6), Sampling(temperature=0.0, max_new_tokens=MAX_NEW),
                            batch_size=64, refill=True)
    assert used == {64, 16, 4} and used <= ahead, (used, ahead)
    assert stats["tail_slots"] == 4 and len(out) > 40


@pytest.mark.slow  # whole schedules of many rounds
def test_rounds_run_many_steps_and_overlap_the_host(model, monkeypatch):
    """A round runs until enough slots are free, not until the first row ends; the next round is dispatched
    before the last round's rows are handed out (the host works while the device decodes)."""
    events = []
    run, result = DecodeSlots.run, Round.result
    monkeypatch.setattr(DecodeSlots, "run", lambda self, *a: events.append("run") or run(self, *a))
    monkeypatch.setattr(Round, "result", lambda self: events.append("result") or result(self))
    sampling = Sampling(temperature=1.0, top_k=50, max_new_tokens=MAX_NEW)
    items = prompts(16, seed=7)
    engine = Engine(model.for_decoding(), batch_size=8, width=prompt_width(items, MAX_NEW, 128), sampling=sampling,
                    eos_id=EOS, pad_id=PAD, refill=True, refill_fraction=0.5)
    out = {}
    for i, samples in engine.generate(enumerate(items)):
        events.append("out")
        out[i] = [s.tolist() for s in samples]
    stats, order = engine.stats(), list(events)
    assert out == run_engine(model, items, sampling, batch_size=8, refill=True)[0]  # another refill fraction
    ended_per_round = stats["kept_tokens"] / stats["rounds"]
    assert stats["rounds"] * 3 < stats["decode_steps"] and ended_per_round > 1, stats
    last_result = max(i for i, e in enumerate(order) if e == "result")
    for i, event in enumerate(order[:last_result]):
        if event == "out":  # what came before it: a dispatch, never a read with nothing dispatched after it
            assert [e for e in order[:i] if e != "out"][-1] == "run", " ".join(order)


def test_decode_steps_compute_no_log_softmax_unless_asked(model):
    """The per-step log-softmax (log-probs) is compiled in only for callers that ask for it."""
    texts = {}
    for logprobs in (False, True):
        slots = DecodeSlots(model.for_decoding(), size=2, prompt_width=4, max_new_tokens=3, sampler=Sampler(),
                            eos_ids=np.array([EOS], np.int32), pad_id=PAD, logprobs=logprobs)
        texts[logprobs] = _run.lower(slots.params, slots.state, slots.eos_ids, np.int32(3), np.int32(0), np.int32(0),
                                     sampler=slots.sampler, logprobs=logprobs, **slots._static()).as_text()
        assert slots.state.logprobs.shape == (2, 3 if logprobs else 0)
    assert "stablehlo.log " not in texts[False] and "stablehlo.log " in texts[True]
    ids = np.array([[5, 9, 14, 3, 22, 7]])
    assert generate(model, ids, np.ones_like(ids), max_new_tokens=3, logprobs=False).logprobs is None
