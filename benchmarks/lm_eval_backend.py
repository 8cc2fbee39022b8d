"""lm-evaluation-harness: the `teacherlm_jax` backend beside lm-eval's own `hf` backend, same batch size.

    python benchmarks/lm_eval_backend.py                      # bloom-560m shape, 48 MMLU questions, batch 8
    python benchmarks/lm_eval_backend.py --fewshot 5          # five-shot
    python benchmarks/lm_eval_backend.py --tokenizer byte --questions 16
    python benchmarks/lm_eval_backend.py --shape tiny --questions 16

A random BloomForCausalLM (float32) and a tokenizer (default: a byte-level BPE of 8192 tokens trained on the
task's questions, `bpe.py`; `byte`: one token per byte) are saved once; each backend then runs
`lm_eval.simple_evaluate` on a local MMLU-format task (the first --questions questions of
../shared/data's MMLU astronomy test, lm-eval's MMLU template, four letters scored by log-likelihood,
--fewshot examples drawn by lm-eval from the same split) in its own subprocess, timed whole (imports,
loading, compiling included). Both backends index the task folder only (`include_defaults=False`: lm-eval's
~14,000 task files would add the same half-minute or more to both). Prints a markdown table, the accuracies
(they must agree) and the largest log-likelihood difference.
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
sys.path[:0] = [str(REPO), str(REPO / "tests")]
SHAPES = {"bloom-560m": dict(hidden_size=1024, n_layer=24, n_head=16), "tiny": dict(hidden_size=256, n_layer=4,
                                                                                    n_head=8)}

WORKER = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[5])
import lm_eval
from lm_eval.tasks import TaskManager
if sys.argv[1] == "teacherlm_jax":
    import teacherlm_jax.lm_eval  # noqa: F401
args = f"pretrained={sys.argv[2]},batch_size={sys.argv[4]},max_length=2048"
if sys.argv[1] == "hf":
    args += ",device=cpu,dtype=float32"
out = lm_eval.simple_evaluate(model=sys.argv[1], model_args=args, tasks=["tl_mmlu_letters"], limit=int(sys.argv[6]),
                              num_fewshot=int(sys.argv[7]), log_samples=True,
                              task_manager=TaskManager(include_path=sys.argv[3], include_defaults=False))
print(json.dumps({"acc": out["results"]["tl_mmlu_letters"]["acc,none"],
                  "ll": [r[0][0] for s in out["samples"]["tl_mmlu_letters"] for r in s["resps"]]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bloom-560m")
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--fewshot", type=int, default=0)
    parser.add_argument("--tokenizer", choices=["bpe", "byte"], default="bpe")
    args = parser.parse_args()

    from bpe import train_tokenizer
    from reference_models import tiny_bloom
    from test_lm_eval import MMLU, task_yamls

    from teacherlm_jax.tokenizers import byte_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vocab = 8192 if args.shape == "bloom-560m" else 4096
        tokenizer = byte_tokenizer() if args.tokenizer == "byte" else train_tokenizer([MMLU.read_text()], vocab)
        tiny_bloom(tmp / "model", vocab_size=250880 if args.shape == "bloom-560m" else 4096,
                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                   bos_token_id=tokenizer.bos_token_id, **SHAPES[args.shape])
        tokenizer.save_pretrained(tmp / "model")
        task_yamls(tmp)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "JAX_PLATFORMS": "cpu"}
        results = {}
        for backend in ("teacherlm_jax", "hf"):
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", WORKER, backend, str(tmp / "model"), str(tmp), str(args.batch),
                                   str(REPO / "tests"), str(args.questions), str(args.fewshot)], env=env,
                                  capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if proc.returncode:
                raise SystemExit(f"{backend} failed:\n{proc.stderr[-4000:]}")
            results[backend] = (seconds, json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"{backend}: {seconds:.1f} s", file=sys.stderr)
    load = os.getloadavg()
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.2f}; "
          f"{args.shape}, float32; {args.questions} MMLU questions x 4 letters, {args.fewshot}-shot; "
          f"{args.tokenizer} tokenizer ({len(tokenizer)} tokens); batch {args.batch}\n")
    print("| backend | wall s (whole process) | accuracy | speedup |\n|---|---|---|---|")
    for backend, (seconds, out) in results.items():
        print(f"| {backend} | {seconds:.1f} | {out['acc']:.4f} | {results['hf'][0] / seconds:.2f}x |")
    ours, theirs = results["teacherlm_jax"][1]["ll"], results["hf"][1]["ll"]
    print(f"\nlargest log-likelihood difference: {max(abs(a - b) for a, b in zip(ours, theirs)):.2e}")


if __name__ == "__main__":
    main()
