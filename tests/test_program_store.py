"""Programs exported once and loaded back (`generation.program_store`): with a compilation cache directory, the
engine's rows (BLOOM and OPT) are those of plain jitted programs; a later job loads each program from its file
without exporting it again; a damaged file is exported again with a warning; programs of other shapes or static
arguments get files of their own; donations still hold; programs for a TPU slice on this CPU host are not stored."""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from reference_models import tiny_bloom, tiny_opt
from teacherlm_jax import from_pretrained
from teacherlm_jax.compile.topology import parse_slice
from teacherlm_jax.eval import scoring
from teacherlm_jax.generation import Engine, Prompt, Sampling, prompt_width, slots
from teacherlm_jax.generation.compiles import compiled_programs
from teacherlm_jax.generation.program_store import EXPORT_DIR, StoredProgram

EOS, MAX_NEW = 2, 10
PROGRAMS = (slots._insert, slots._run, slots._gather)


@pytest.fixture
def cache_dir(tmp_path):
    """A compilation cache directory for this test only (jax's setting is process-wide), with jax's own
    persistent cache off: once used, it would stay on for the worker's later tests."""
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    yield tmp_path
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_enable_compilation_cache", enabled)


def _forget(programs=PROGRAMS) -> None:
    """Drops the programs this process loaded, as a new job starts without them."""
    for program in programs:
        program.programs.clear()


@pytest.fixture(scope="module", params=["bloom", "opt"])
def decoder(request, tmp_path_factory):
    make = tiny_bloom if request.param == "bloom" else tiny_opt
    reference = make(vocab_size=96, pad_token_id=3, eos_token_id=EOS, tie_word_embeddings=False)
    with torch.no_grad():  # EOS often the top token: rows end at EOS and at max_new_tokens
        reference.get_output_embeddings().weight[EOS] *= 8.0
    directory = tmp_path_factory.mktemp(request.param)
    reference.save_pretrained(directory)
    return from_pretrained(directory, scan_layers=False).for_decoding()


def _rows(decoder) -> dict[int, list[list[int]]]:
    """Records of two kinds (units of 2 rows) and prompts that share nothing, sampled, on 4 slots."""
    rng = np.random.default_rng(0)
    items = []
    for n in rng.integers(3, 20, 5):
        question = rng.integers(4, 96, int(n)).tolist()
        items += [Prompt(tuple(question + cue), int(rng.integers(0, 2**32)), len(question)) for cue in ([5, 6], [7])]
    items += [Prompt(tuple(rng.integers(4, 96, int(n)).tolist()), int(rng.integers(0, 2**32))) for n in (4, 9, 13)]
    sampling = Sampling(temperature=1.0, top_k=50, max_new_tokens=MAX_NEW)
    engine = Engine(decoder, batch_size=2, width=prompt_width(items, MAX_NEW, 128), sampling=sampling, eos_id=EOS,
                    pad_id=3, refill=True)
    return {i: [s.tolist() for s in samples] for i, samples in engine.generate(enumerate(items))}


def test_stored_programs_generate_what_plain_ones_do_and_load_from_their_files(decoder, cache_dir, monkeypatch,
                                                                              caplog):
    plain = _rows_without_store(decoder)
    _forget()
    assert _rows(decoder) == plain
    files = sorted((cache_dir / EXPORT_DIR).iterdir())
    assert {f.name.split("-")[0] for f in files} >= {"_insert", "_run"}

    _forget()  # a later job: every program from its file, none exported again
    monkeypatch.setattr(jax.export, "export", lambda *a, **k: pytest.fail("exported again"))
    assert _rows(decoder) == plain
    monkeypatch.undo()

    files[0].write_bytes(b"not an exported program")  # damaged: exported again, with a warning naming it
    _forget()
    with caplog.at_level(logging.WARNING, logger="teacherlm_jax.generation.program_store"):
        assert _rows(decoder) == plain
    assert str(files[0]) in caplog.text and "damaged" in caplog.text
    assert files[0].read_bytes() != b"not an exported program"


def _rows_without_store(decoder):
    cache = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        return _rows(decoder)
    finally:
        jax.config.update("jax_compilation_cache_dir", cache)


def _toy(x, y, *, scale):
    return x * scale + y, jnp.sum(y)


def test_each_shape_and_static_argument_has_its_own_file_and_donations_hold(cache_dir):
    program = StoredProgram(_toy, static_argnames=("scale",), donate_argnums=(0,))
    x, y = jnp.arange(4.0), jnp.ones(4)
    out, total = program(x, y, scale=2.0)
    assert x.is_deleted() and np.allclose(out, np.arange(4.0) * 2 + 1) and float(total) == 4
    program(jnp.arange(4.0), y, scale=3.0)
    program(jnp.arange(6.0), jnp.ones(6), scale=2.0)
    program(jnp.arange(4.0), y, scale=2.0)  # a shape already stored: no new file
    assert len(list((cache_dir / EXPORT_DIR).iterdir())) == 3


def test_a_lowered_program_is_the_one_a_call_runs(cache_dir):
    """What `lower` compiles ahead (the engine's background compiles) is not compiled again by the call."""
    program = StoredProgram(_toy, static_argnames=("scale",))
    x = jax.device_put(jnp.arange(5.0), jax.devices()[0])
    program.lower(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), x, scale=1.5).compile()
    before = compiled_programs(("_toy",))
    program(x, x, scale=1.5)
    assert compiled_programs(("_toy",)) == before


def test_an_unwritable_store_only_warns(cache_dir, caplog):
    (cache_dir / EXPORT_DIR).write_text("a file where the folder goes")
    program = StoredProgram(_toy, static_argnames=("scale",))
    with caplog.at_level(logging.WARNING, logger="teacherlm_jax.generation.program_store"):
        out, _ = program(jnp.ones(3), jnp.ones(3), scale=2.0)
    assert np.allclose(out, 3.0) and "could not keep the exported program" in caplog.text


def test_a_job_of_several_processes_runs_plain_programs(cache_dir, monkeypatch):
    """Programs over a mesh that spans jax processes are not stored (nor loaded): traced as plain jit functions."""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    out, _ = StoredProgram(_toy, static_argnames=("scale",))(jnp.ones(3), jnp.ones(3), scale=2.0)
    assert np.allclose(out, 3.0) and not (cache_dir / EXPORT_DIR).exists()


def test_programs_for_a_tpu_slice_are_lowered_as_plain_programs(cache_dir):
    """The compile job lowers for TPU chips that are not attached: nothing is exported for the CPU."""
    devices = parse_slice("v5litepod-1").devices()
    mesh = jax.sharding.Mesh(np.array(devices).reshape(1), ("data",))
    spec = jax.ShapeDtypeStruct((8,), jnp.float32, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    StoredProgram(_toy, static_argnames=("scale",)).lower(spec, spec, scale=2.0).compile()
    assert not (cache_dir / EXPORT_DIR).exists()


@pytest.mark.parametrize("make", [tiny_bloom, tiny_opt], ids=["bloom", "opt"])
def test_stored_scoring_programs_score_what_plain_ones_do(make, cache_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("scorer")
    make(vocab_size=96).save_pretrained(directory)
    model = from_pretrained(directory)
    rng = np.random.default_rng(1)
    contexts = [rng.integers(4, 96, int(n)).tolist() for n in rng.integers(2, 30, 9)]
    choices = [[rng.integers(4, 96, int(n)).tolist() for n in rng.integers(1, 4, 3)] for _ in contexts]
    stored = scoring.loglik_choices(model, contexts, choices, batch_size=4)
    assert any(f.name.startswith("_score_program-") for f in (cache_dir / EXPORT_DIR).iterdir())
    jax.config.update("jax_compilation_cache_dir", None)
    plain = scoring.loglik_choices(model, contexts, choices, batch_size=4)
    assert stored.scores == plain.scores and stored.predictions == plain.predictions
