"""The lm-evaluation-harness backend (`teacherlm_jax.lm_eval`) gives what lm-eval's own `hf` backend gives
on the same tiny checkpoints and local tasks over ../shared/data: multiple choice with one-token (MMLU
letters) and many-token (CREAK true/false) continuations, rolling log-likelihoods, greedy generation;
BLOOM and OPT."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from reference_models import tiny_bloom, tiny_opt
from teacherlm_jax.tokenizers import byte_tokenizer

lm_eval = pytest.importorskip("lm_eval")
DATA = Path(os.environ.get("TEACHERLM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
CREAK = DATA / "creak" / "dev.json"
MMLU = DATA / "mmlu" / "data" / "test" / "astronomy_test.csv"
pytestmark = pytest.mark.skipif(not (CREAK.is_file() and MMLU.is_file()),
                                reason=f"CREAK dev and MMLU astronomy test not found under {DATA}")


def task_yamls(directory: Path) -> list[str]:
    """lm-eval task files over the local data; returns the task names."""
    creak = dict(dataset_path="json", dataset_kwargs={"data_files": {"validation": str(CREAK)}},
                 validation_split="validation")
    claim = "Claim: {{sentence}}\n"
    tasks = {
        "tl_mmlu_letters": dict(
            dataset_path="csv", test_split="test", output_type="multiple_choice",
            dataset_kwargs={"data_files": {"test": str(MMLU)}, "column_names": ["question", "A", "B", "C", "D",
                                                                                 "answer"]},
            doc_to_text="{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\nAnswer:",
            doc_to_choice=["A", "B", "C", "D"], doc_to_target="{{['A', 'B', 'C', 'D'].index(answer)}}",
            metric_list=[{"metric": "acc"}]),
        "tl_creak_mc": dict(
            creak, output_type="multiple_choice", doc_to_text=claim + "True or false?",
            doc_to_choice=["true", "false"], doc_to_target="{{0 if label == 'true' else 1}}",
            metric_list=[{"metric": "acc"}]),
        "tl_creak_rolling": dict(
            creak, output_type="loglikelihood_rolling", doc_to_text="", doc_to_target="{{explanation}}",
            metric_list=[{"metric": "word_perplexity"}]),
        "tl_creak_generate": dict(
            creak, output_type="generate_until", doc_to_text=claim + "Explanation:", doc_to_target="{{explanation}}",
            generation_kwargs={"until": ["\n", "."], "max_gen_toks": 10, "do_sample": False},
            metric_list=[{"metric": "exact_match"}]),
    }
    for name, task in tasks.items():
        (directory / f"{name}.yaml").write_text(yaml.safe_dump({"task": name, **task}))
    return list(tasks)


@pytest.fixture(scope="module", params=["bloom", "opt"])
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"lm_eval_{request.param}")
    tokenizer = byte_tokenizer()
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id)
    if request.param == "bloom":
        tiny_bloom(directory, **ids)
    else:
        tiny_opt(directory, max_position_embeddings=256, **ids)
    tokenizer.save_pretrained(directory)
    return directory


def evaluate(model: str, model_args: str, tasks: list[str], include: Path) -> dict:
    from lm_eval.tasks import TaskManager

    import teacherlm_jax.lm_eval  # noqa: F401  (registers "teacherlm_jax")

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks, limit=6, log_samples=True,
                                   task_manager=TaskManager(include_path=str(include)), random_seed=0,
                                   numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)


@pytest.mark.slow  # a job end to end
def test_results_equal_the_hf_backend(checkpoint, tmp_path):
    tasks = task_yamls(tmp_path)
    ours = evaluate("teacherlm_jax", f"pretrained={checkpoint},batch_size=4,max_length=128", tasks, tmp_path)
    theirs = evaluate("hf", f"pretrained={checkpoint},batch_size=4,max_length=128,device=cpu,dtype=float32",
                      tasks, tmp_path)
    for task in tasks:
        for metric, value in theirs["results"][task].items():
            if isinstance(value, float) and "stderr" not in metric:
                np.testing.assert_allclose(ours["results"][task][metric], value, rtol=1e-4, err_msg=f"{task} {metric}")
        mine, reference = ours["samples"][task], theirs["samples"][task]
        assert len(mine) == len(reference) == 6
        for a, b in zip(mine, reference):
            for x, y in zip(a["resps"], b["resps"]):
                if task == "tl_creak_generate":
                    assert x == y
                elif task == "tl_creak_rolling":  # a sum of a whole text's float32 log-probs (~-800): its
                    np.testing.assert_allclose(x[0], y[0], rtol=2e-6, atol=1e-4)  # last digits follow the order
                else:  # (log-likelihood, greedy)
                    np.testing.assert_allclose(x[0][0], y[0][0], atol=1e-4)
                    assert bool(x[0][1]) == bool(y[0][1])
    generated = [r[0] for s in ours["samples"]["tl_creak_generate"] for r in s["resps"]]
    assert any(text.strip() for text in generated), generated
    throughput = ours["config"]["throughput"]  # the backend's get_model_info(), in lm-eval's results
    assert throughput["seconds"] > 0 and set(throughput["program_seconds"]) == {"trace", "lower", "cache_read",
                                                                                 "compile"}


def test_requests_report_the_programs_they_pay_for_and_a_repeat_pays_none(checkpoint, caplog):
    """With jax's caches cleared, the first log-likelihood requests obtain programs (get_model_info and a log
    line say so); the same requests again add seconds but no program."""
    from types import SimpleNamespace

    import jax

    from teacherlm_jax.lm_eval import TeacherLMJax

    lm = TeacherLMJax(pretrained=str(checkpoint), batch_size=2, max_length=64)
    requests = [SimpleNamespace(args=(f"Claim: the {thing} is blue.", answer))
                for thing in ("sky", "sea", "grass") for answer in (" true", " false")]
    jax.clear_caches()
    with caplog.at_level("INFO", logger="teacherlm_jax.lm_eval"):
        scores = lm.loglikelihood(requests)
    first = lm.get_model_info()["throughput"]
    assert first["compiled_programs"] > 0 and first["program_seconds"]["compile"] > 0
    assert f"teacherlm_jax: 6 log-likelihood requests: {first['compiled_programs']} programs obtained in" in caplog.text
    assert lm.loglikelihood(requests) == scores
    second = lm.get_model_info()["throughput"]
    assert second["compiled_programs"] == first["compiled_programs"]
    assert second["program_seconds"] == first["program_seconds"] and second["seconds"] > first["seconds"]


MESH_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_lm_eval import evaluate
tasks = ["tl_mmlu_letters", "tl_creak_mc", "tl_creak_generate"]
out = {}
for mesh in ("", ",mesh=data:2;tensor:2"):
    result = evaluate("teacherlm_jax", f"pretrained={sys.argv[1]},batch_size=4,max_length=128{mesh}", tasks,
                      Path(sys.argv[2]))
    out[mesh or "one"] = {t: [s["resps"] for s in result["samples"][t]] for t in tasks}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_mesh_scores_equal_one_device(tmp_path):
    """On 4 fake devices (data 2 x tensor 2) the backend scores and generates what one device does."""
    tokenizer = byte_tokenizer()
    tiny_bloom(tmp_path / "model", vocab_size=len(tokenizer), n_head=4, hidden_size=32,
               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id)
    tokenizer.save_pretrained(tmp_path / "model")
    task_yamls(tmp_path)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", MESH_SCRIPT, str(tmp_path / "model"), str(tmp_path),
                           str(Path(__file__).parent)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for task, one in out["one"].items():
        meshed = out[",mesh=data:2;tensor:2"][task]
        if task == "tl_creak_generate":
            assert meshed == one
        else:
            np.testing.assert_allclose([r[0][0] for s in meshed for r in s], [r[0][0] for s in one for r in s],
                                       atol=1e-5)


def test_unknown_generation_kwargs_are_refused(checkpoint):
    from types import SimpleNamespace

    from teacherlm_jax.lm_eval import TeacherLMJax

    lm = TeacherLMJax(pretrained=str(checkpoint), batch_size=2, max_length=64)
    request = SimpleNamespace(args=("Claim: the sky is blue.", {"until": ["\n"], "num_beams": 4}))
    with pytest.raises(ValueError, match="num_beams"):
        lm.generate_until([request])
    with pytest.raises(ValueError, match="model_args"):
        TeacherLMJax(pretrained=str(checkpoint), revision="main")
