"""Generation with its state sharded across two jax processes (localhost, CPU gloo collectives, 2 fake devices
each, a data 2 x tensor 2 mesh): `generate`, the continuous engine, eval's generate mode, the lm-eval
backend's `generate_until` and the augment job on a global mesh (`mesh_scope="global"`) give what one process
with the same mesh of 4 devices gives."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import portpicker
import pytest
import torch

from reference_models import tiny_bloom, tiny_tokenizer
from train_subprocess import REPO, jax_env

pytestmark = pytest.mark.slow  # every test here starts job processes

EOS, PAD = 2, 3
WORDS = tuple(f"w{i}" for i in range(60))

SCRIPT = textwrap.dedent("""
    import glob, json, sys
    from teacherlm_jax.sharding import initialize_distributed

    checkpoint, processes, process_id, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if processes > 1:
        initialize_distributed({"coordinator_address": f"localhost:{port}", "num_processes": processes,
                                "process_id": process_id})
    import jax
    import numpy as np
    from teacherlm_jax import from_pretrained, generate, load_tokenizer
    from teacherlm_jax.data.records import Record
    from teacherlm_jax.eval.generative import generate_answers
    from teacherlm_jax.generation import Engine, Prompt, Sampling, prompt_width
    from teacherlm_jax.lm_eval import TeacherLMJax
    from teacherlm_jax.sharding import DEFAULT_RULES, make_mesh, parse_rules

    assert jax.process_count() == processes and len(jax.devices()) == 4
    mesh = make_mesh({"data": 2, "tensor": 2})
    rules = parse_rules(DEFAULT_RULES, mesh)
    model = from_pretrained(checkpoint, mesh=mesh, rules=rules, scan_layers=False)
    rng = np.random.default_rng(0)
    rows = [rng.integers(4, 64, int(n)).tolist() for n in (5, 12, 3, 9)]
    ids = np.array([[3] * (12 - len(r)) + r for r in rows])
    mask = (np.arange(12)[None] >= 12 - np.array([len(r) for r in rows])[:, None]).astype(np.int32)
    out = generate(model, ids, mask, max_new_tokens=10, temperature=1.0, top_k=20, eos_token_id=2, seed=3,
                   mesh=mesh, rules=rules)
    results = {"generate": out.tokens.tolist(), "lengths": out.lengths.tolist()}

    prompts = [Prompt(tuple(r + cue), 11 * i, len(r)) for i, r in enumerate(rows * 3) for cue in ([5, 6], [7])]
    engine = Engine(model.for_decoding(), batch_size=4, width=prompt_width(prompts, 10, 128),
                    sampling=Sampling(temperature=1.0, top_k=20, max_new_tokens=10), eos_id=2, pad_id=3,
                    refill=True, mesh=mesh, rules=rules, prefix_pool=True)
    results["engine"] = {str(i): [s.tolist() for s in samples] for i, samples in engine.generate(enumerate(prompts))}

    tokenizer = load_tokenizer(checkpoint)
    records = [Record(f"q{i}", " ".join(f"w{j}" for j in r), ("w1 w2", "w3", "w4 w5 w6"), i % 3)
               for i, r in enumerate(rows)]
    texts, predictions, _ = generate_answers(model, tokenizer, records, batch_size=4, max_new_tokens=8, mesh=mesh,
                                             rules=rules)
    results["eval"] = [texts, predictions]

    class Request:
        def __init__(self, context, kwargs):
            self.args = (context, kwargs)

    lm = TeacherLMJax(pretrained=checkpoint, batch_size=4, max_gen_toks=8, mesh="data:2;tensor:2")
    results["lm_eval"] = lm.generate_until([Request(f"w{i} w{2 * i} w9", {"until": ["w7"], "max_gen_toks": 6})
                                            for i in range(6)])

    from configs import augment as augment_configs
    from teacherlm_jax.augment.job import run as augment

    config = augment_configs.get_config()
    config.teacher.init_from = checkpoint
    config.datasets = (f"{checkpoint}/questions.jsonl",)
    config.kinds = ("cot", "mistakes")
    config.sampling = augment_configs.sampling(top_k=20, max_new_tokens=8)
    config.batch_size, config.chunk_size = 2, 3
    config.mesh.data, config.mesh.tensor = 2, 2
    config.mesh_scope = "global"  # one mesh over both processes: they decode every chunk together
    out = f"{checkpoint}-augment-{processes}"  # beside the teacher: files inside its folder are its fingerprint
    augment(config, out)
    augment(config, out)  # every part written: no process decodes anything
    if jax.process_index() == 0:
        parts = sorted(glob.glob(f"{out}/augmented/questions/part-*.jsonl"))
        rows = [json.loads(line) for part in parts for line in open(part)]
        results["augment"] = [[row["id"], row["cot"], row["mistakes"]] for row in rows]
        runs = [json.load(open(path)) for path in glob.glob(f"{out}/augmented/questions/runs/*.json")]
        results["augment_runs"] = sorted(run["chunks_generated"] for run in runs)
        print("RESULTS " + json.dumps(results))
""")


def test_generation_across_two_processes_equals_one(tmp_path):
    model = tiny_bloom(vocab_size=64, hidden_size=64, n_head=8, pad_token_id=PAD, eos_token_id=EOS,
                       tie_word_embeddings=False)
    with torch.no_grad():  # EOS often the top token, so that rows end at different steps
        bias = model.transformer.ln_f.bias
        model.lm_head.weight[EOS] = 1.5 * bias / bias.norm() ** 2
    model.save_pretrained(tmp_path)
    tiny_tokenizer(WORDS).save_pretrained(tmp_path)
    rng = np.random.default_rng(1)
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps({
        "id": f"q{i}", "question": " ".join(rng.choice(WORDS, int(rng.integers(2, 9)))), "choices": ["w1", "w2 w3"],
        "answer": i % 2}) + "\n" for i in range(7)))

    def launch(processes: int, devices: int, port: int) -> list[subprocess.Popen]:
        env = jax_env(devices=devices, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
        return [subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path), str(processes), str(i), str(port)],
                                 cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(processes)]

    results = []
    for procs in (launch(2, 2, portpicker.pick_unused_port()), launch(1, 4, 0)):
        outputs = [p.communicate(timeout=600) for p in procs]
        for p, (out, err) in zip(procs, outputs):
            assert p.returncode == 0, f"{out[-2000:]}\n{err[-5000:]}"
        line = next(x for x in outputs[0][0].splitlines() if x.startswith("RESULTS "))
        results.append(json.loads(line[len("RESULTS "):]))
    two, one = results
    assert len(set(one["lengths"])) > 1 and len(one["engine"]) == 24 and len(one["lm_eval"]) == 6
    assert [row[0] for row in one["augment"]] == [f"q{i}" for i in range(7)]  # every record, in 3 parts
    assert one["augment_runs"] == [0, 3]  # the rerun found every part written (with two processes too: two == one)
    assert two == one
