"""Tokenization + loss mask + truncation, and the sharded, shuffled, resumable batch iterator."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from teacherlm_jax.data import Example, encode, make_batch_iterator, num_truncated

CORPUS = ["Q: Is the sky blue? (A) True (B) False A: The answer is (A). Let's think step by step.",
          "The sky scatters blue light, so it looks blue. The common mistakes are: none."]


def _tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


PROMPT = "Q: Is the sky blue? (A) True (B) False A: The answer is (A). Let's think step by step."
TARGET = " The sky scatters blue light."


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_target_mask_covers_exactly_the_target_tokens(tok):
    ex = encode(tok, PROMPT, TARGET, max_length=512, loss_on="target", id="e")
    p, t = _ids(tok, PROMPT), _ids(tok, TARGET)
    assert ex.input_ids.tolist() == p + t  # the joint tokenization splits at the space here
    assert ex.loss_mask.tolist() == [0] * len(p) + [1] * len(t)
    assert tok.decode(ex.input_ids[ex.loss_mask == 1]) == TARGET
    assert ex.input_ids.dtype == np.int32 and ex.truncated == 0


def test_straddling_token_counts_as_target(tok):
    prompt, target = "The sky blu", "e light."  # " blue" is one token
    ex = encode(tok, prompt, target, max_length=512, loss_on="target")
    offsets = tok(prompt + target, return_offsets_mapping=True)["offset_mapping"]
    assert any(s < len(prompt) < e for s, e in offsets), "test needs a token across the boundary"
    assert ex.loss_mask.tolist() == [int(e > len(prompt)) for _, e in offsets]


def test_loss_on_all_and_special_tokens():
    tok = _tokenizer(bos=True)
    whole = encode(tok, PROMPT, TARGET, max_length=512, loss_on="all")
    assert whole.input_ids.tolist() == tok(PROMPT + TARGET)["input_ids"]  # TeacherLM's tokenizer(text)
    assert whole.input_ids[0] == tok.bos_token_id
    assert whole.loss_mask.tolist() == [1] * len(whole.input_ids)
    target = encode(tok, PROMPT, TARGET, max_length=512, loss_on="target")
    assert target.loss_mask[0] == 0 and target.loss_mask.sum() == len(_ids(tok, TARGET))


def test_truncation_keeps_the_last_tokens_and_is_counted(tok):
    full = encode(tok, PROMPT, TARGET, max_length=512)
    cut = encode(tok, PROMPT, TARGET, max_length=10)
    assert cut.input_ids.tolist() == full.input_ids[-10:].tolist()
    assert cut.truncated == len(full.input_ids) - 10
    assert num_truncated([full, cut, cut]) == 2


def test_add_eos_and_errors(tok):
    ex = encode(tok, PROMPT, TARGET, max_length=512, loss_on="target", add_eos=True)
    assert ex.input_ids[-1] == tok.eos_token_id and ex.loss_mask[-1] == 1
    with pytest.raises(ValueError, match="no tokens to train on"):
        encode(tok, PROMPT, "", max_length=512, loss_on="target", id="empty")
    with pytest.raises(ValueError, match="loss_on"):
        encode(tok, PROMPT, TARGET, max_length=512, loss_on="prompt")

    class Slow:
        is_fast = False
    with pytest.raises(TypeError, match="not a fast tokenizer"):
        encode(Slow(), PROMPT, TARGET, max_length=512)


def _examples(n=12):
    # Example i: tokens 100*i+1 ..., length 1 + i % 5; the mask zeroes the first token.
    out = []
    for i in range(n):
        length = 1 + i % 5
        mask = np.ones(length, np.int32)
        mask[0] = 0 if length > 1 else 1
        out.append(Example(f"e{i}", np.arange(1, length + 1, dtype=np.int32) + 100 * i, mask))
    return out


def _take(it, n):
    return [next(it) for _ in range(n)]


def _first_tokens(batches):
    return [int(t) // 100 for b in batches for t in b["input_ids"][:, 0]]


def test_batches_are_right_padded_and_match_examples():
    examples = _examples()
    (batch,) = _take(make_batch_iterator(examples, batch_size=4, seq_len=6, pad_id=0, seed=0,
                                         shuffle=False), 1)
    assert set(batch) == {"input_ids", "attention_mask", "loss_mask"}
    for row, e in enumerate(examples[:4]):
        n = len(e.input_ids)
        assert batch["input_ids"][row].tolist() == e.input_ids.tolist() + [0] * (6 - n)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (6 - n)
        assert batch["loss_mask"][row].tolist() == e.loss_mask.tolist() + [0] * (6 - n)
    assert all(v.dtype == np.int32 and v.shape == (4, 6) for v in batch.values())


def test_shuffle_is_a_permutation_per_epoch_deterministic_in_seed_and_epoch():
    examples = _examples(12)
    stream = lambda seed: _first_tokens(list(make_batch_iterator(
        examples, batch_size=4, seq_len=6, pad_id=0, seed=seed, num_epochs=2)))
    a = stream(7)
    assert len(a) == 24 and sorted(a[:12]) == sorted(a[12:]) == list(range(12))
    assert a[:12] != a[12:], "each epoch has its own order"
    assert a[:12] != list(range(12))
    assert stream(7) == a and stream(8) != a


def test_finite_epochs_drop_only_the_incomplete_last_batch():
    batches = list(make_batch_iterator(_examples(10), batch_size=4, seq_len=6, pad_id=0, seed=1,
                                       num_epochs=3))
    assert len(batches) == 30 // 4


def test_process_shares_make_up_the_global_batch():
    examples = _examples(12)
    whole = _take(make_batch_iterator(examples, batch_size=8, seq_len=6, pad_id=0, seed=3), 5)
    shares = [_take(make_batch_iterator(examples, batch_size=8, seq_len=6, pad_id=0, seed=3,
                                        process_index=p, process_count=4), 5) for p in range(4)]
    for k in range(5):
        for key in whole[k]:
            assert shares[0][k][key].shape == (2, 6)
            np.testing.assert_array_equal(np.concatenate([s[k][key] for s in shares]), whole[k][key])


def test_resume_from_saved_state_sees_the_same_batches():
    examples = _examples(10)
    make = lambda: make_batch_iterator(examples, batch_size=4, seq_len=6, pad_id=0, seed=11,
                                       process_index=1, process_count=2)
    uninterrupted = _take(make(), 9)
    it = make()
    _take(it, 4)
    state = json.loads(json.dumps(it.get_state()))  # as stored in a checkpoint
    resumed = make()
    resumed.set_state(state)
    for expected, got in zip(uninterrupted[4:], _take(resumed, 5)):
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])


def test_batch_iterator_errors():
    examples = _examples(4)
    with pytest.raises(ValueError, match="longer than seq_len=3"):
        make_batch_iterator(examples + _examples(12)[4:], batch_size=2, seq_len=3, pad_id=0, seed=0)
    with pytest.raises(ValueError, match="not divisible"):
        make_batch_iterator(examples, batch_size=3, seq_len=6, pad_id=0, seed=0, process_count=2)
    with pytest.raises(ValueError, match="make no batch"):
        make_batch_iterator(examples, batch_size=8, seq_len=6, pad_id=0, seed=0, num_epochs=1)
    with pytest.raises(ValueError, match="no examples"):
        make_batch_iterator([], batch_size=2, seq_len=6, pad_id=0, seed=0)


@pytest.mark.slow
def test_jobs_that_do_not_train_start_without_the_training_pipeline():
    # grain (and orbax through it) load only when a batch iterator is asked for, so the lm-eval backend, the
    # eval and augment jobs do not import them; the package's names still resolve.
    code = ("import sys, teacherlm_jax.lm_eval, teacherlm_jax.eval.job, teacherlm_jax.augment.job\n"
            "print(sorted(m for m in ('grain', 'orbax') if m in sys.modules))\n"
            "from teacherlm_jax.data import collate, make_batch_iterator\n"
            "print('grain' in sys.modules, collate.__module__, make_batch_iterator.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout.splitlines()
    assert out == ["[]", "True teacherlm_jax.data.pipeline teacherlm_jax.data.pipeline"]
    import teacherlm_jax.data as data

    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        data.not_a_name
