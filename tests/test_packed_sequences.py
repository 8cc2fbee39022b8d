"""Sequences packed into one row (`segment_ids`) give each sequence the logits transformers gives it alone:
BLOOM's ALiBi and OPT's learned positions both count from the segment's start, and no segment sees another."""
import jax.numpy as jnp
import numpy as np
import pytest

import teacherlm_jax as tl
from reference_models import tiny_bloom, tiny_opt, torch_logits
from teacherlm_jax.models.attention import token_positions

VOCAB = 128


@pytest.fixture(scope="module", params=["bloom", "opt"])
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    make = tiny_bloom if request.param == "bloom" else tiny_opt
    return directory, make(directory, vocab_size=VOCAB)


def packed(sequences: list[list[int]], rows: list[list[int]], width: int, pad_id: int):
    """input_ids, segment ids (0 = padding) and each sequence's (row, start): `rows[r]` lists the sequences
    packed into row r, in order, the rest of the row padding."""
    ids = np.full((len(rows), width), pad_id, np.int32)
    segments = np.zeros((len(rows), width), np.int32)
    where = {}
    for r, members in enumerate(rows):
        start = 0
        for n, s in enumerate(members, start=1):
            ids[r, start:start + len(sequences[s])] = sequences[s]
            segments[r, start:start + len(sequences[s])] = n
            where[s] = (r, start)
            start += len(sequences[s])
    return ids, segments, where


def test_each_packed_sequence_gets_its_own_logits(checkpoint):
    directory, reference = checkpoint
    model = tl.from_pretrained(directory)
    rng = np.random.default_rng(0)
    sequences = [rng.integers(4, VOCAB, n).tolist() for n in (9, 5, 1, 12, 3, 7)]
    ids, segments, where = packed(sequences, [[0, 1, 2], [3, 4], [5]], width=16, pad_id=3)
    hidden = model.hidden_states(jnp.asarray(ids), jnp.asarray(segments > 0), segment_ids=jnp.asarray(segments))
    logits = np.asarray(model.logits(hidden, model.output_head()))
    for s, seq in enumerate(sequences):
        r, start = where[s]
        alone = torch_logits(reference, np.asarray([seq]))[0]
        np.testing.assert_allclose(logits[r, start:start + len(seq)], alone, rtol=1e-4,
                                   atol=1e-4 * np.abs(alone).max(), err_msg=f"sequence {s}")
    # Without segment ids the same row is one sequence: its later parts see the earlier ones.
    whole = np.asarray(model(jnp.asarray(ids), jnp.asarray(segments > 0)))
    r, start = where[1]
    assert not np.allclose(whole[r, start:start + 5], logits[r, start:start + 5], atol=1e-3)


def test_positions_count_from_each_segment_start():
    mask = np.array([[0, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]])
    segments = np.array([[0, 1, 1, 2, 2, 2, 0], [1, 2, 2, 2, 3, 3, 3]])
    np.testing.assert_array_equal(token_positions(jnp.asarray(mask), jnp.asarray(segments)),
                                  [[-1, 0, 1, 0, 1, 2, -1], [0, 0, 1, 2, 0, 1, 2]])
    np.testing.assert_array_equal(token_positions(jnp.asarray(mask)), np.cumsum(mask, axis=1) - 1)


def test_segments_with_a_cache_are_refused(checkpoint):
    model = tl.from_pretrained(checkpoint[0])
    ids = jnp.ones((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="segment_ids .* KV cache"):
        model.final_hidden(ids, jnp.ones((1, 8), jnp.int32), model.init_cache(1, 8), jnp.ones((1, 4), jnp.int32))
