"""The augment job against transformers `generate`: whole-process wall time, same prompts, equal work.

    python benchmarks/augment.py                          # TeacherLM's workload: 32 CREAK records x 3 kinds
    python benchmarks/augment.py --workload fixed         # 32 CoT prompts x exactly 48 greedy tokens
    python benchmarks/augment.py --records 4 --shape tiny  # a quick check

A random BloomForCausalLM of bloom-560m's shape (vocab 250880, hidden 1024, 24 layers, 16 heads,
float32) and a byte-level tokenizer are saved once. Each contender then runs in its own subprocess,
timed from start to exit (imports, loading, compiling included), on TeacherLM's prompts for the first
`--records` questions of CREAK dev (../shared/data):
  teacherlm  every kind (cot, fundamentals, mistakes), temperature 1, top-k 50, each text ending at EOS
             or at 128 new tokens. The checkpoint (embedding tied to the LM head, as BLOOM's) gives EOS a
             constant logit, solved from the model's own logits at sampled positions for probability 1/32
             per step (benchmarks/eos_workload.py), so texts have geometric lengths (mean ~31) with a
             tail to 128, as TeacherLM's do.
  fixed      the CoT prompt, greedy, exactly --new-tokens new tokens (EOS never ends a row).
Contenders:
  augment (continuous)  python -m teacherlm_jax.main --config configs/augment.py, batch_size --batch;
  augment (static)      the same with --config.engine=static (teacherlm workload);
  hf-batch              transformers `generate` on batches of --batch left-padded prompts;
  hf-1                  transformers `generate` one prompt at a time: TeacherLM's own recipe.
Sampled texts differ between implementations, so each contender's generated-token total is printed:
the work is equal in distribution (each text's length is geometric), not token for token.
Prints a markdown table for docs/performance.md.
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

from eos_workload import MAX_NEW_TOKENS, TOP_K, eos_probability, solve_eos_logit

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "bloom-560m": dict(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16),
    "tiny": dict(vocab_size=4096, hidden_size=256, n_layer=4, n_head=8),
}
KINDS = ("cot", "fundamentals", "mistakes")


def hf_worker(checkpoint: str, prompts_file: str, batch: int, workload: str, new_tokens: int) -> None:
    """transformers `generate`; prints the generated-token count (the EOS that ends a text included)."""
    import torch
    from transformers import AutoTokenizer, BloomForCausalLM

    prompts = json.loads(Path(prompts_file).read_text())
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, padding_side="left")
    model = BloomForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    sampled = workload == "teacherlm"
    kwargs = (dict(do_sample=True, temperature=1.0, top_k=TOP_K, max_new_tokens=MAX_NEW_TOKENS,
                   eos_token_id=tokenizer.eos_token_id) if sampled else
              dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens))
    torch.manual_seed(0)
    generated = 0
    with torch.inference_mode():
        for start in range(0, len(prompts), batch):
            inputs = tokenizer(prompts[start:start + batch], return_tensors="pt", padding=True)
            out = model.generate(**inputs, pad_token_id=tokenizer.pad_token_id, **kwargs)
            new = out[:, inputs["input_ids"].shape[1]:]
            if sampled:  # up to and including each row's EOS (rows that ended are padded after it)
                ended = (new == tokenizer.eos_token_id).int()
                first = torch.where(ended.any(1), ended.argmax(1) + 1, torch.full_like(ended[:, 0], new.shape[1]))
                generated += int(first.sum())
            else:
                generated += new.numel()
    print(json.dumps({"tokens": generated}))


def timed_subprocess(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"})
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]}... failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return seconds, proc.stdout


def save_checkpoint(directory: Path, shape: str, workload: str, prompts: list[str]) -> str:
    """The benchmark's teacher; for the teacherlm workload its EOS logit is calibrated (returns a note)."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    from teacherlm_jax.tokenizers import byte_tokenizer  # any text, 260 tokens

    torch.manual_seed(0)
    tokenizer = byte_tokenizer()
    sampled = workload == "teacherlm"
    model = BloomForCausalLM(BloomConfig(**SHAPES[shape], eos_token_id=tokenizer.eos_token_id)).eval()
    note = ""
    if sampled:  # the embedding is tied to the LM head, as in BLOOM
        eos, embedding = tokenizer.eos_token_id, model.transformer.word_embeddings.weight
        with torch.no_grad():
            model.transformer.ln_f.weight[0], model.transformer.ln_f.bias[0] = 0.0, 1.0  # channel 0 is always 1
            embedding[:, 0] = 0.0  # ... and feeds EOS's logit only
            embedding[eos] = 0.0
            # Calibrated where EOS is drawn: at the positions of sampled continuations.
            tokenizer.padding_side = "left"
            ids = tokenizer(prompts[:4], return_tensors="pt", padding=True)
            steps = 48
            out = model.generate(**ids, do_sample=True, top_k=TOP_K, max_new_tokens=steps, min_new_tokens=steps,
                                 pad_token_id=tokenizer.pad_token_id)
            mask = torch.cat([ids["attention_mask"], torch.ones(len(out), steps, dtype=torch.long)], 1)
            logits = model(input_ids=out, attention_mask=mask).logits[:, -steps:].reshape(-1, model.config.vocab_size)
            logits[:, eos] = -float("inf")
            top = logits.topk(TOP_K, dim=-1).values.numpy()
            c = solve_eos_logit(top)
            embedding[eos, 0] = c
        note = (f"EOS logit {c:.3f}: p(EOS) {eos_probability(top, c):.4f} per step over {len(top)} positions of "
                f"sampled texts")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["teacherlm", "fixed"], default="teacherlm")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bloom-560m")
    parser.add_argument("--records", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=48, help="fixed workload: tokens per prompt")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--skip", default="", help="comma-separated contenders not to run, e.g. hf-1")
    parser.add_argument("--worker", choices=["hf"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        hf_worker(args.checkpoint, args.prompts, args.batch, args.workload, args.new_tokens)
        return

    from teacherlm_jax.data import load_records, teacher_prompt

    sampled = args.workload == "teacherlm"
    kinds = KINDS if sampled else ("cot",)
    records = load_records("creak", "dev")[:args.records]
    texts = [teacher_prompt(r, kind) for kind in kinds for r in records]
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        note = save_checkpoint(tmp / "model", args.shape, args.workload, texts)
        prompts = tmp / "prompts.json"
        prompts.write_text(json.dumps(texts))
        hf = [sys.executable, __file__, "--worker", "hf", "--checkpoint", str(tmp / "model"), "--prompts",
              str(prompts), "--workload", args.workload, "--new-tokens", str(args.new_tokens)]
        augment = [sys.executable, "-m", "teacherlm_jax.main", "--config", "configs/augment.py",
                   f"--config.teacher.init_from={tmp / 'model'}", "--config.datasets=('creak:dev',)",
                   f"--config.kinds={kinds!r}", f"--config.max_records={args.records}",
                   f"--config.chunk_size={args.records}", f"--config.batch_size={args.batch}"]
        augment += ([f"--config.sampling.max_new_tokens={MAX_NEW_TOKENS}"] if sampled else
                    ["--config.sampling.temperature=0.0", "--config.sampling.stop_at_eos=False",
                     f"--config.sampling.max_new_tokens={args.new_tokens}"])
        contenders = {"augment": ("augment job, continuous (teacherlm_jax)", [*augment, "--config.engine=continuous"]),
                      "augment-static": ("augment job, static batches", [*augment, "--config.engine=static"]),
                      "hf-batch": (f"transformers generate, batch {args.batch}", [*hf, "--batch", str(args.batch)]),
                      "hf-1": ("transformers generate, batch 1 (TeacherLM's recipe)", [*hf, "--batch", "1"])}
        if not sampled:
            del contenders["augment-static"]
        results = {}
        for name, (label, cmd) in contenders.items():
            if name in skip:
                continue
            if name.startswith("augment"):
                workdir = tmp / name
                seconds, _ = timed_subprocess([*cmd, "--workdir", str(workdir)])
                summary = json.loads((workdir / "augmented" / "creak_dev" / "summary.json").read_text())
                engine = summary["throughput"]["engine"]
                tokens = engine["kept_tokens"]  # generated tokens, each text's ending EOS included
                results[name] = (label, seconds, tokens, summary)
            else:
                seconds, out = timed_subprocess(cmd)
                results[name] = (label, seconds, json.loads(out.strip().splitlines()[-1])["tokens"], None)
            print(f"{name}: {seconds:.1f} s, {results[name][2]} tokens", file=sys.stderr)

    load = os.getloadavg()
    work = (f"{len(records)} CREAK dev records x {len(kinds)} kinds, temperature 1, top-k {TOP_K}, stop at EOS, "
            f"max_new_tokens {MAX_NEW_TOKENS}" if sampled else
            f"{len(records)} CREAK dev CoT prompts x {args.new_tokens} new tokens, greedy")
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {args.shape}, float32, byte-level tokens; {work}; "
          f"batch {args.batch}. {note}\n")
    base = results.get("augment", next(iter(results.values())))[1]
    print("| run | wall s (whole process) | generated tokens | tokens/s | augment's speedup |")
    print("|---|---|---|---|---|")
    for label, seconds, tokens, _ in results.values():
        print(f"| {label} | {seconds:.1f} | {tokens} | {tokens / seconds:.1f} | {seconds / base:.2f}x |")
    for name, (label, _, _, summary) in results.items():
        if summary:
            t, e = summary["throughput"], summary["throughput"]["engine"]
            run = summary["throughput"]["runs"][0]["engine"]
            slots = f"{run['slots']} slots" + (f" ({run['tail_slots']} at the end)" if run["tail_slots"] != run["slots"]
                                               else "")
            mean = summary["tokens"] / max(1, sum(summary["samples"].values()))
            print(f"\n{label}: {t['seconds']:.1f} s generating, {e['decode_steps']} decode steps on {slots}, "
                  f"{e['slot_steps']} slot-steps, slot occupancy {e['slot_occupancy']:.2f}, {e['prefill_tokens']} "
                  f"prefill tokens (padding included), {t['compiled_programs']} compiled programs; mean text "
                  f"{mean:.1f} tokens")


if __name__ == "__main__":
    main()
