"""Decode attention over a prefix pool (`attention.attend_with_prefix`): rows whose leading keys live once in a pool
and whose own keys live in their cache rows get the logits of rows that hold all their keys, for BLOOM's ALiBi
(positions counted over prefix then own columns) and OPT's learned positions, whatever pool slot, member
number or cache row a row has, with rows without a prefix beside them."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from reference_models import tiny_bloom, tiny_opt
from teacherlm_jax import from_pretrained
from teacherlm_jax.models.kv_cache import KVCache, PrefixPool

PAD = 3
PREFIX_WIDTH, OWN_WIDTH, STEPS = 10, 4, 3


@pytest.fixture(scope="module", params=["bloom", "opt"])
def model(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    if request.param == "bloom":
        tiny_bloom(directory, vocab_size=64, pad_token_id=PAD)
    else:
        tiny_opt(directory, vocab_size=64, pad_token_id=PAD, max_position_embeddings=64)
    return from_pretrained(directory).for_decoding()


def left(tokens: list[int], width: int) -> tuple[list[int], list[int]]:
    return [PAD] * (width - len(tokens)) + tokens, [0] * (width - len(tokens)) + [1] * len(tokens)


def rows_both_ways(model, prefixes, own, parent, pool_slot, member, members, pool_slots):
    """Logits of STEPS greedy decode steps of each row, from whole cache rows and from a prefix pool plus own rows.

    Row r is `prefixes[parent[r]]` (or nothing when parent is None) then `own[r]`; prefix j sits in pool slot
    `pool_slot[j]`, row r is member `member[r]` of its prefix."""
    rows, length = len(own), PREFIX_WIDTH + OWN_WIDTH - 1 + STEPS
    ids, mask = [], []
    for r, tokens in enumerate(own):
        p_ids, p_mask = left([] if parent[r] is None else prefixes[parent[r]], PREFIX_WIDTH)
        o_ids, o_mask = left(tokens, OWN_WIDTH)
        ids.append(p_ids + o_ids)
        mask.append(p_mask + o_mask + [1] * (STEPS - 1))
    ids, mask = np.array(ids, np.int32), np.array(mask, np.int32)
    # Whole rows: prefill all tokens but the last, then decode.
    cache = model.init_cache(rows, length)
    _, cache = model(jnp.asarray(ids[:, :-1]), jnp.asarray(mask), cache=cache)
    # Pooled: the pool's slots take each prefix's columns, the own rows the rest (the prefill is the same).
    split = lambda x: x[:, :, PREFIX_WIDTH:]
    pool_keys = [jnp.zeros((pool_slots, *x.shape[1:2], PREFIX_WIDTH, x.shape[3]), x.dtype) for x in cache.key]
    pool_values = [jnp.zeros_like(x) for x in pool_keys]
    pool_mask = np.zeros((pool_slots, PREFIX_WIDTH), np.int32)
    row_slot = np.full(rows, pool_slots, np.int32)
    for r in range(rows):
        if parent[r] is not None:
            slot = pool_slot[parent[r]]
            row_slot[r] = slot
            pool_mask[slot] = mask[r, :PREFIX_WIDTH]
            pool_keys = [k.at[slot].set(x[r, :, :PREFIX_WIDTH]) for k, x in zip(pool_keys, cache.key)]
            pool_values = [k.at[slot].set(x[r, :, :PREFIX_WIDTH]) for k, x in zip(pool_values, cache.value)]
    pool = PrefixPool(tuple(pool_keys), tuple(pool_values), jnp.asarray(pool_mask), jnp.asarray(row_slot),
                      jnp.asarray(np.asarray(member, np.int32)), members)
    pooled = KVCache(tuple(map(split, cache.key)), tuple(map(split, cache.value)), cache.index - PREFIX_WIDTH, pool)
    whole_logits, pooled_logits = [], []
    token = token_p = jnp.asarray(ids[:, -1:])
    for _ in range(STEPS):
        logits, cache = model(token, jnp.asarray(mask), cache=cache)
        logits_p, pooled = model(token_p, jnp.asarray(mask[:, PREFIX_WIDTH:]), cache=pooled)
        whole_logits.append(np.asarray(logits[:, -1]))
        pooled_logits.append(np.asarray(logits_p[:, -1]))
        token, token_p = logits[:, -1:].argmax(-1), logits_p[:, -1:].argmax(-1)
    return np.stack(whole_logits, 1), np.stack(pooled_logits, 1)


@pytest.mark.parametrize("members", [1, 3, 12])
def test_pooled_prefix_rows_equal_whole_rows(model, members):
    rng = np.random.default_rng(members)
    prefixes = [rng.integers(4, 64, n).tolist() for n in (9, 3, 10)]
    rows = 12 if members == 12 else 7
    if members == 1:
        parent = [0, 1, 2, None, None, None, None]
    elif members == 3:
        parent = [0, 2, 0, 1, None, 0, 2]
    else:
        parent = [0] * rows
    member, seen = [], {}
    for p in parent:  # members numbered within each prefix, in an order unrelated to the rows'
        seen[p] = seen.get(p, -1) + 1
        member.append((members - 1 - seen[p]) if p is not None else 0)
    own = [rng.integers(4, 64, int(rng.integers(1, OWN_WIDTH + 1))).tolist() for _ in range(rows)]
    whole, pooled = rows_both_ways(model, prefixes, own, parent, pool_slot=[2, 0, 3], member=member,
                                      members=members, pool_slots=4)
    np.testing.assert_allclose(pooled, whole, rtol=1e-5, atol=1e-5)
    assert np.all(pooled.argmax(-1) == whole.argmax(-1))
    # The prefix is attended to: without it the logits differ.
    assert np.abs(whole[0] - rows_both_ways(model, prefixes, own, [None] * rows, [0, 1, 2], [0] * rows, members,
                                            4)[0][0]).max() > 1e-3
