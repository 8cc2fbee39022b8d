"""MMLU scoring wall time: the eval job against lm-evaluation-harness's own `hf` backend, equal work.

    python benchmarks/eval.py                           # bloom-560m shape, 48 MMLU test questions
    python benchmarks/eval.py --shape tiny --questions 20

Both sides score the same real MMLU questions (canonical test set from the shared data folder, evenly
spaced as the job's `max_examples` picks them) with TeacherLM's MMLU context and the letters A-D as
continuations, on the same random BloomForCausalLM. There is no BLOOM tokenizer here, so a byte-level
BPE is trained in-process on the questions' text and saved with the checkpoint; both sides load it.

- ours: `python -m teacherlm_jax.main --config configs/eval.py` (batched, jitted, float32);
- reference: `lm_eval.simple_evaluate` with the `hf` backend (transformers+torch, float32, the same batch
  size) on a task of the same contexts and letters (`target_delimiter` "": the continuation is the letter
  as our job tokenizes it), its task index limited to that task (`include_defaults=False`, so the reference
  does not pay for indexing lm-eval's ~14,000 task files). lm-eval scores a context's single-token letters
  with one forward, as our job does.

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

import yaml

from bpe import train_tokenizer

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "bloom-560m": dict(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16),
    "tiny": dict(vocab_size=4096, hidden_size=256, n_layer=4, n_head=8),
}

REFERENCE = r'''
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager

checkpoint, tasks, batch, out = sys.argv[1:5]
result = lm_eval.simple_evaluate(
    model="hf", model_args=f"pretrained={checkpoint},batch_size={batch},max_length=2048,device=cpu,dtype=float32",
    tasks=["tl_eval_mmlu"], log_samples=True, task_manager=TaskManager(include_path=tasks, include_defaults=False))
samples = sorted(result["samples"]["tl_eval_mmlu"], key=lambda s: s["doc_id"])
json.dump([{"id": s["doc"]["id"], "scores": [r[0][0] for r in s["resps"]],
            "prediction": max(range(len(s["resps"])), key=lambda i: s["resps"][i][0][0])} for s in samples],
          open(out, "w"))
'''


def task_yaml(directory: Path, questions: list[dict]) -> None:
    """An lm-eval task over `questions` (their contexts and letters as the eval job builds them)."""
    data = directory / "questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in questions))
    directory.joinpath("tl_eval_mmlu.yaml").write_text(yaml.safe_dump(dict(
        task="tl_eval_mmlu", dataset_path="json", dataset_kwargs={"data_files": {"test": str(data)}},
        test_split="test", output_type="multiple_choice", doc_to_text="{{context}}", doc_to_choice="{{letters}}",
        doc_to_target="{{answer}}", target_delimiter="", metric_list=[{"metric": "acc"}])))


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
    parser.add_argument("--questions", type=int, default=48)
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
        questions = [{"id": r.id, "context": eval_context(r, mmlu=True), "letters": list("ABCD"[:len(r.choices)]),
                      "answer": r.answer} for r in chosen]
        (tmp / "tasks").mkdir()
        task_yaml(tmp / "tasks", questions)
        (tmp / "reference.py").write_text(REFERENCE)
        lengths = [len(tokenizer.encode(q["context"], add_special_tokens=False)) for q in questions]

        ours = timed([sys.executable, "-m", "teacherlm_jax.main", "--config", "configs/eval.py",
                      "--workdir", str(tmp / "run"), f"--config.model.init_from={checkpoint}",
                      "--config.tasks=('mmlu',)", f"--config.max_examples={args.questions}",
                      f"--config.batch_size={args.batch_size}"], env)
        reference = timed([sys.executable, str(tmp / "reference.py"), str(checkpoint), str(tmp / "tasks"),
                           str(args.batch_size), str(tmp / "reference.json")], env)
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
    print(f"| teacherlm_jax eval job | batch {args.batch_size}, jit | {ours:.1f} | {ours / n:.3f} |")
    print(f"| lm-eval `hf` backend (transformers+torch) | batch {args.batch_size} | {reference:.1f} | "
          f"{reference / n:.3f} |")
    print(f"\nspeed-up: {reference / ours:.2f}x; predictions agree on {100 * agree:.0f}%, "
          f"max |score difference| {diff:.2e}")


if __name__ == "__main__":
    main()
