"""MMLU scoring wall time: the eval job against an lm-evaluation-harness-style transformers loop.

    python benchmarks/eval.py                           # bloom-560m shape, 50 MMLU test questions
    python benchmarks/eval.py --shape tiny --questions 20

Both sides score the same real MMLU questions (canonical test set from the shared data folder, evenly
spaced as the job's `max_examples` picks them) with TeacherLM's MMLU context and the letters A-D as
continuations, on the same random BloomForCausalLM. There is no BLOOM tokenizer here, so a byte-level
BPE is trained in-process on the questions' text and saved with the checkpoint; both sides load it.

- ours: `python -m teacherlm_jax.main --config configs/eval.py` (batched, jitted, one forward per
  question, float32);
- reference: transformers+torch float32, batch 1, one forward per question and choice, each over
  context + continuation tokenized separately (lm-evaluation-harness's `_loglikelihood_tokens`).

Each side is one subprocess, timed whole (import, load, compile, score, write). One run each. Prints a
markdown table for docs/performance.md plus the agreement of the two sides' scores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "bloom-560m": dict(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16),
    "tiny": dict(vocab_size=4096, hidden_size=256, n_layer=4, n_head=8),
}

REFERENCE = r'''
import json, sys, time
import torch
from transformers import AutoTokenizer, BloomForCausalLM

checkpoint, questions, out = sys.argv[1:4]
tokenizer = AutoTokenizer.from_pretrained(checkpoint)
model = BloomForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
encode = lambda s: tokenizer.encode(s, add_special_tokens=False)
results = []
for q in json.load(open(questions)):
    context = encode(q["context"])
    scores = []
    for letter in "ABCD"[:q["num_choices"]]:
        cont = encode(letter)
        inp = (context + cont)[-2049:][:-1]
        with torch.no_grad():
            logits = model(torch.tensor([inp])).logits[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)[len(inp) - len(cont):]
        scores.append(float(logprobs.gather(1, torch.tensor(cont)[:, None]).sum()) / len(cont))
    results.append({"id": q["id"], "scores": scores, "prediction": max(range(len(scores)), key=scores.__getitem__)})
json.dump(results, open(out, "w"))
'''


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", padding_side="left")


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[:4])} ... failed:\n{proc.stderr[-4000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bloom-560m")
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokenizer-vocab", type=int, default=8192)
    args = parser.parse_args()

    import torch
    from transformers import BloomConfig, BloomForCausalLM

    from teacherlm_jax.data import default_data_dir, eval_context, load_records
    from teacherlm_jax.eval.tasks import subset

    records = load_records("mmlu", "test")
    chosen = subset(records, args.questions)
    env = dict(os.environ, TEACHERLM_DATA_DIR=str(default_data_dir()), JAX_PLATFORMS="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = tmp / "bloom"
        tokenizer = train_tokenizer([eval_context(r, mmlu=True) for r in records],
                                    min(args.tokenizer_vocab, SHAPES[args.shape]["vocab_size"]))
        torch.manual_seed(0)
        BloomForCausalLM(BloomConfig(**SHAPES[args.shape])).eval().save_pretrained(checkpoint)
        tokenizer.save_pretrained(checkpoint)
        questions = [{"id": r.id, "context": eval_context(r, mmlu=True), "num_choices": len(r.choices)}
                     for r in chosen]
        (tmp / "questions.json").write_text(json.dumps(questions))
        (tmp / "reference.py").write_text(REFERENCE)
        lengths = [len(tokenizer.encode(q["context"], add_special_tokens=False)) for q in questions]

        ours = timed([sys.executable, "-m", "teacherlm_jax.main", "--config", "configs/eval.py",
                      "--workdir", str(tmp / "run"), f"--config.model.init_from={checkpoint}",
                      "--config.tasks=('mmlu',)", f"--config.max_examples={args.questions}",
                      f"--config.batch_size={args.batch_size}"], env)
        reference = timed([sys.executable, str(tmp / "reference.py"), str(checkpoint), str(tmp / "questions.json"),
                           str(tmp / "reference.json")], env)
        ours_preds = [json.loads(line) for line in (tmp / "run" / "eval" / "mmlu" / "predictions.jsonl").open()]
        ref_preds = json.loads((tmp / "reference.json").read_text())

    assert [p["id"] for p in ours_preds] == [p["id"] for p in ref_preds]
    diff = max(abs(a - b) for p, q in zip(ours_preds, ref_preds) for a, b in zip(p["scores"], q["scores"]))
    agree = sum(p["prediction"] == q["prediction"] for p, q in zip(ours_preds, ref_preds)) / len(ref_preds)
    import jax

    n = len(chosen)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, jax {jax.__version__}, torch {torch.__version__}")
    print(f"model: random BLOOM {args.shape} {SHAPES[args.shape]}, float32; tokenizer: byte-level BPE with "
          f"{len(tokenizer)} tokens trained in-process on MMLU test contexts (no BLOOM tokenizer here)")
    print(f"{n} MMLU test questions x 4 choices, context {min(lengths)}-{max(lengths)} tokens "
          f"(mean {sum(lengths) / n:.0f})\n")
    print("| side | how | wall s (whole process) | s / question |")
    print("|---|---|---|---|")
    print(f"| teacherlm_jax eval job | batch {args.batch_size}, 1 forward / question, jit | {ours:.1f} | "
          f"{ours / n:.3f} |")
    print(f"| transformers+torch (lm-eval style) | batch 1, 1 forward / question x choice | {reference:.1f} | "
          f"{reference / n:.3f} |")
    print(f"\nspeed-up: {reference / ours:.2f}x; predictions agree on {100 * agree:.0f}%, "
          f"max |score difference| {diff:.2e}")


if __name__ == "__main__":
    main()
