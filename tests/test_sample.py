"""`teacherlm_jax.generate` against transformers' `generate`, the samplers against transformers' logits
warpers, and the properties the augment job relies on: buckets, meshes and seeds do not change outputs,
and a second call with the same shapes compiles nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from reference_models import tiny_bloom
from teacherlm_jax import from_pretrained, generate
from teacherlm_jax.generation.sampler import PROMPT_BUCKETS, Sampler, bucket_length
from teacherlm_jax.generation.scheduler import PREFILL_BUCKETS
from teacherlm_jax.generation.slots import num_traces

REPO = Path(__file__).resolve().parents[1]
PAD = 3
STEPS = 12


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A tiny BLOOM whose greedy continuations vary (untied head, blocks scaled up), saved to disk."""
    model = tiny_bloom(tie_word_embeddings=False, pad_token_id=PAD)
    with torch.no_grad():
        for p in model.transformer.h.parameters():
            p.mul_(3.0)
    model.generation_config.eos_token_id = None  # HF must not stop at the config's EOS unless asked
    directory = tmp_path_factory.mktemp("bloom")
    model.save_pretrained(directory)
    return directory, model


@pytest.fixture(scope="module")
def model(checkpoint):
    return from_pretrained(checkpoint[0])


def left_padded(lengths, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), width), PAD, np.int32)
    mask = np.zeros((len(lengths), width), np.int32)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = rng.integers(4, 128, n)
        mask[i, width - n:] = 1
    return ids, mask


PROMPTS = left_padded([5, 9, 3, 12], 12)


def hf_greedy(hf_model, ids, mask, eos) -> np.ndarray:
    out = hf_model.generate(torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                            do_sample=False, max_new_tokens=STEPS, pad_token_id=PAD, eos_token_id=eos)
    new = out[:, ids.shape[1]:].numpy()
    return np.pad(new, ((0, 0), (0, STEPS - new.shape[1])), constant_values=PAD)  # HF stops when all rows end


def test_greedy_matches_transformers(checkpoint, model):
    hf_model = checkpoint[1]
    ids, mask = PROMPTS
    expected = hf_greedy(hf_model, ids, mask, None)
    out = generate(model, ids, mask, max_new_tokens=STEPS)
    np.testing.assert_array_equal(out.tokens, expected)
    np.testing.assert_array_equal(out.lengths, STEPS)

    # Log-probabilities are log_softmax of transformers' logits at the chosen tokens.
    full_ids = np.concatenate([ids, expected], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(expected)], axis=1)
    with torch.no_grad():
        logits = hf_model(input_ids=torch.as_tensor(full_ids, dtype=torch.long),
                          attention_mask=torch.as_tensor(full_mask)).logits
    logp = torch.log_softmax(logits[:, ids.shape[1] - 1:-1].double(), -1).numpy()
    expected_logprobs = np.take_along_axis(logp, expected[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.logprobs, expected_logprobs, atol=2e-4)


def test_greedy_stops_at_eos_like_transformers(checkpoint, model):
    hf_model = checkpoint[1]
    ids, mask = PROMPTS
    eos = int(hf_greedy(hf_model, ids, mask, None)[1, 4])  # a token that does occur mid-generation
    expected = hf_greedy(hf_model, ids, mask, eos)
    out = generate(model, ids, mask, max_new_tokens=STEPS, eos_token_id=eos)
    np.testing.assert_array_equal(out.tokens, expected)
    ends = [list(row).index(eos) + 1 if eos in row else STEPS for row in expected]
    np.testing.assert_array_equal(out.lengths, ends)
    assert len(set(ends)) > 1 and min(ends) < STEPS  # rows end at different steps
    for row, n in zip(out.logprobs, ends):
        assert np.all(row[:n] < 0) and np.all(row[n:] == 0)

    exact = generate(model, ids, mask, max_new_tokens=STEPS, eos_token_id=eos, stop_at_eos=False)
    np.testing.assert_array_equal(exact.tokens, hf_greedy(hf_model, ids, mask, None))
    np.testing.assert_array_equal(exact.lengths, STEPS)


def test_one_token_prompts_need_no_prefill(checkpoint, model):
    ids, mask = PROMPTS[0][:, -1:], PROMPTS[1][:, -1:]
    out = generate(model, ids, mask, max_new_tokens=STEPS, prompt_buckets=(1,))
    np.testing.assert_array_equal(out.tokens, hf_greedy(checkpoint[1], ids, mask, None))


SAMPLING = dict(max_new_tokens=STEPS, temperature=1.0, top_k=20)  # shared, so tests reuse compiled programs


def test_buckets_and_recompilation(model):
    ids, mask = PROMPTS
    reference = generate(model, ids, mask, seed=7, **SAMPLING)
    wide_ids, wide_mask = (np.pad(a, ((0, 0), (30, 0)), constant_values=v) for a, v in ((ids, PAD), (mask, 0)))
    for prompts, buckets in (((wide_ids, wide_mask), None), ((ids, mask), (64,))):
        out = generate(model, *prompts, prompt_buckets=buckets, seed=7, **SAMPLING)
        np.testing.assert_array_equal(out.tokens, reference.tokens)
        np.testing.assert_allclose(out.logprobs, reference.logprobs, rtol=1e-5, atol=1e-5)  # float32 rounding

    # Same shapes (batch, bucket, sampling): new prompts and a new seed compile nothing.
    traces = num_traces()
    other_ids, other_mask = left_padded([2, 7, 14, 1], 14, seed=1)
    again = generate(model, other_ids, other_mask, seed=8, **SAMPLING)
    assert num_traces() == traces
    assert not np.array_equal(again.tokens, reference.tokens)


def test_samples_per_prompt(model):
    ids, mask = PROMPTS
    seeds = np.array([11, 12, 13, 14])
    single = generate(model, ids, mask, seed=seeds, **SAMPLING)
    out = generate(model, ids, mask, seed=seeds, num_samples=3, **SAMPLING)
    assert out.tokens.shape == (12, STEPS) and out.lengths.shape == (12,)
    samples = out.tokens.reshape(4, 3, STEPS)
    assert all(len({tuple(s) for s in prompt}) == 3 for prompt in samples)  # independent samples
    # Sample 0 of a prompt is what num_samples=1 draws (the prefill is shared correctly), and with one
    # seed per prompt a prompt's samples do not depend on its batch mates or position.
    np.testing.assert_array_equal(samples[:, 0], single.tokens)
    flipped = generate(model, ids[::-1], mask[::-1], seed=seeds[::-1], num_samples=3, **SAMPLING)
    np.testing.assert_array_equal(flipped.tokens.reshape(4, 3, STEPS)[::-1], samples)


LOGITS = np.random.default_rng(0).normal(0, 2, 32).astype(np.float32)


def hf_allowed_probs(temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The distribution transformers samples from: its warpers, in its order, then softmax."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    scores = torch.as_tensor(LOGITS)[None]
    warpers = [TemperatureLogitsWarper(temperature)]
    warpers += [TopKLogitsWarper(top_k)] if top_k else []
    warpers += [TopPLogitsWarper(top_p)] if top_p < 1 else []
    for warper in warpers:
        scores = warper(None, scores)
    return torch.softmax(scores, -1)[0].double().numpy()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 1.0),
                                                     (1.0, 0, 0.6), (2.0, 8, 0.7), (0.5, 0, 0.9)])
def test_sampler_distribution(temperature, top_k, top_p):
    draws = 40_000
    sampler = Sampler(temperature, top_k, top_p)
    keys = jax.random.split(jax.random.key(0), draws)
    tokens = np.asarray(jax.jit(sampler)(jnp.broadcast_to(LOGITS, (draws, LOGITS.size)), keys))
    expected = hf_allowed_probs(temperature, top_k, top_p)
    allowed = expected > 0
    assert allowed[tokens].all(), f"sampled tokens outside the allowed set: {set(tokens[~allowed[tokens]])}"
    if top_k or top_p < 1:
        assert allowed.sum() < LOGITS.size  # the filter removed something
    counts = np.bincount(tokens, minlength=LOGITS.size)[allowed]
    # Chi-square over the allowed tokens; critical value at p = 1e-4 (Wilson-Hilferty).
    dof = allowed.sum() - 1
    chi2 = np.sum((counts - draws * expected[allowed]) ** 2 / (draws * expected[allowed]))
    critical = dof * (1 - 2 / (9 * dof) + 3.72 * np.sqrt(2 / (9 * dof))) ** 3 if dof > 0 else 0.0
    assert chi2 <= critical, (chi2, critical)


def test_greedy_sampler_is_argmax_and_filters_keep_it():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(6, 50)), jnp.float32)
    keys = jax.random.split(jax.random.key(0), 6)
    argmax = np.argmax(np.asarray(logits), -1)
    for sampler in (Sampler(0.0, 3, 0.5), Sampler(1e-4, 3, 0.5), Sampler(1.0, 1), Sampler(1.0, 0, 1e-6)):
        np.testing.assert_array_equal(jax.jit(sampler)(logits, keys), argmax, err_msg=str(sampler))


def test_bucket_length():
    assert [bucket_length(n) for n in (1, 16, 17, 100, 129)] == [16, 16, 24, 128, 192]  # PROMPT_BUCKETS
    assert [bucket_length(n, (64, 256)) for n in (1, 64, 65, 300)] == [64, 64, 256, 300]
    # The engine's prefill widths: finer, at most a fifth padding from 33 tokens on.
    assert [bucket_length(n, PREFILL_BUCKETS) for n in (17, 100, 129, 163, 200)] == [24, 112, 160, 192, 224]
    padding = [1 - n / bucket_length(n, PREFILL_BUCKETS) for n in range(33, PREFILL_BUCKETS[-1] + 1)]
    assert max(padding) < 0.2 and set(PROMPT_BUCKETS) < set(PREFILL_BUCKETS)


@pytest.mark.parametrize("change,message", [
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-2), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=None), "max_new_tokens"),
    (dict(num_samples=0), "num_samples"),
    (dict(max_new_tokens=2040), "max_position_embeddings"),
    (dict(attention_mask=np.ones((4, 11), np.int32)), "differs from input_ids"),
    (dict(attention_mask=PROMPTS[1][:, ::-1]), "not left-padded"),
    (dict(attention_mask=np.pad(PROMPTS[1][:, 1:], ((0, 0), (0, 1)))), "not left-padded"),
    (dict(attention_mask=np.zeros((4, 12), np.int32)), "have no tokens"),
    (dict(attention_mask=PROMPTS[1] * 2), "only 0"),
    (dict(input_ids=PROMPTS[0] + 200), "outside"),
    (dict(seed=[1, 2]), "2 per-prompt seeds for 4 prompts"),
    (dict(seed=-1), "seeds must lie"),
    (dict(eos_token_id="2"), "eos_token_id"),
])
def test_bad_arguments(model, change, message):
    kwargs = {"input_ids": PROMPTS[0], "attention_mask": PROMPTS[1], "max_new_tokens": 4, **change}
    with pytest.raises(ValueError, match=message):
        generate(model, **kwargs)


MESH_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jax.sharding import AxisType
    from teacherlm_jax import from_pretrained, generate

    rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"),
             ("vocab", "tensor"))
    ids, mask, steps = (np.array(a) if isinstance(a, list) else a for a in json.loads(sys.argv[2]))
    sampling = dict(max_new_tokens=steps, temperature=1.0, top_p=0.9, num_samples=2, seed=5)
    model = from_pretrained(sys.argv[1])
    results = {"one": generate(model, ids, mask, max_new_tokens=steps).tokens.tolist(),
               "one_sampled": generate(model, ids, mask, **sampling).tokens.tolist()}
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    sharded = from_pretrained(sys.argv[1], mesh=mesh, rules=rules)
    results["mesh"] = generate(sharded, ids, mask, max_new_tokens=steps, mesh=mesh, rules=rules).tokens.tolist()
    # An unsharded model is placed on the mesh by its logical axis names.
    results["mesh_sampled"] = generate(model, ids, mask, mesh=mesh, rules=rules, **sampling).tokens.tolist()
    print(json.dumps(results))
""")


@pytest.mark.slow
def test_eight_devices_match_one(checkpoint):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    prompts = json.dumps([PROMPTS[0][:3].tolist(), PROMPTS[1][:3].tolist(), STEPS])  # 3: padded to 4 rows
    proc = subprocess.run([sys.executable, "-c", MESH_SCRIPT, str(checkpoint[0]), prompts], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert np.array(results["one"]).shape == (3, STEPS)
    assert results["mesh"] == results["one"]
    assert results["mesh_sampled"] == results["one_sampled"]
