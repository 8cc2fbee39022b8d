"""Generative evaluation for students trained rationale-first (Fine-tune-CoT's format).

The student reads `{question} {options} ###` and writes ` {rationale} --> {answer}`. We generate
greedily with the jitted sampler and read the answer after the first `-->` (a choice's text or its
letter); when `-->` is missing, or what follows it names no choice, the last choice letter `(X)` or
choice text mentioned in the text (after `-->` if present) is the answer; if there is none the
question counts as unparsed (prediction -1, wrong).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from flax import nnx
from jax.sharding import Mesh

from teacherlm_jax.data.formats import finetune_cot_prompt
from teacherlm_jax.data.padding import left_pad, pad_token_id
from teacherlm_jax.data.records import LETTERS, Record
from teacherlm_jax.eval.scoring import encode
from teacherlm_jax.generation import generate
from teacherlm_jax.sharding import LogicalRules

ARROW = "-->"
generation_prompt = finetune_cot_prompt


def _clean(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip().rstrip(".").strip()


def _match_answer(answer: str, choices: Sequence[str]) -> int | None:
    """The choice `answer` names: its text (case-insensitive), its letter (`B`, `(B)`, `B)`), a
    letter followed by text (`(B) dog`), or a choice's text followed by more words."""
    answer = _clean(answer)
    lowered = answer.lower()
    for i, choice in enumerate(choices):
        if choice.strip() and lowered == choice.strip().lower():
            return i
    letter = re.match(r"\(?([A-Z])\)?(?:$|[\s.,:;])", answer)
    if letter and LETTERS.index(letter.group(1)) < len(choices):
        return LETTERS.index(letter.group(1))
    prefixed = [(len(c.strip()), i) for i, c in enumerate(choices) if c.strip()
                and re.match(re.escape(c.strip().lower()) + r"(?:\W|$)", lowered)]
    return max(prefixed)[1] if prefixed else None


def _last_mention(text: str, choices: Sequence[str]) -> int | None:
    """The choice whose letter `(X)` or text appears last in `text` (the longer match on ties)."""
    best: tuple[int, int, int] | None = None  # (end, length, choice)
    patterns = [(i, re.compile(re.escape(f"({LETTERS[i]})"))) for i in range(len(choices))]
    patterns += [(i, re.compile(r"(?<!\w)" + re.escape(c.strip()) + r"(?!\w)", re.IGNORECASE))
                 for i, c in enumerate(choices) if c.strip()]
    for i, pattern in patterns:
        for m in pattern.finditer(text):
            candidate = (m.end(), m.end() - m.start(), i)
            if best is None or candidate[:2] > best[:2]:
                best = candidate
    return None if best is None else best[2]


def parse_answer(text: str, choices: Sequence[str]) -> int | None:
    """The choice index a generated ` {rationale} --> {answer}` names, or None."""
    _, arrow, tail = text.partition(ARROW)
    if arrow:
        found = _match_answer(tail, choices)
        return found if found is not None else _last_mention(tail, choices)
    return _last_mention(text, choices)


def generate_answers(model: nnx.Module, tokenizer, records: Sequence[Record], *, batch_size: int,
                     max_new_tokens: int, max_length: int | None = None, mesh: Mesh | None = None,
                     rules: LogicalRules | None = None, prompt_fn: Callable[[Record], str] = generation_prompt,
                     progress: Callable[[int], None] | None = None) -> tuple[list[str], list[int], list[bool]]:
    """(generated texts, predictions (-1: unparsed), prompts cut on the left to fit) per record.

    Prompts longer than `max_length - max_new_tokens` keep their last tokens (reported as truncated).
    """
    max_length = max_length or model.config.max_position_embeddings
    limit = max_length - max_new_tokens
    if limit < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in max_length={max_length}")
    prompts = encode(tokenizer, [prompt_fn(r) for r in records])
    truncated = [len(p) > limit for p in prompts]
    prompts = [p[-limit:] for p in prompts]
    pad_id = pad_token_id(tokenizer, model.config)
    texts = [""] * len(records)
    order = sorted(range(len(records)), key=lambda i: len(prompts[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        rows = [prompts[i] for i in chunk] + [prompts[chunk[-1]]] * (batch_size - len(chunk))
        ids, mask = left_pad(rows, max(len(p) for p in rows), pad_id)
        out = generate(model, ids, mask, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                       mesh=mesh, rules=rules, logprobs=False)
        for b, i in enumerate(chunk):
            texts[i] = tokenizer.decode(out.tokens[b, :out.lengths[b]].tolist(), skip_special_tokens=True)
        if progress is not None:
            progress(len(chunk))
    predictions = [parse_answer(t, r.choices) for t, r in zip(texts, records)]
    return texts, [-1 if p is None else p for p in predictions], truncated
