"""Students fine-tuned on teacher-augmented records: training lowers the loss, the student is
evaluated, and its export round-trips through transformers."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import teacherlm_jax as tl  # noqa: E402
from configs import common  # noqa: E402
from configs.student import finetune  # noqa: E402
from teacherlm_jax.data import load_records  # noqa: E402
from teacherlm_jax.eval.job import evaluate_tasks  # noqa: E402
from teacherlm_jax.tokenizers import byte_tokenizer  # noqa: E402
from teacherlm_jax.train.loop import train  # noqa: E402


def write_augmented(directory: Path, records, samples: int = 1) -> Path:
    """Augment-job output for `records`, the suite's gold texts standing in for the teacher's."""
    directory.mkdir(parents=True)
    rows = []
    for r in records:
        row = {"id": r.id, "question": r.question, "choices": list(r.choices), "answer": r.answer,
               "subject": r.subject, "source": "toy"}
        for kind in ("cot", "fundamentals", "mistakes"):
            text = getattr(r, kind)
            row[kind] = [text] * samples if samples > 1 else text
        rows.append(json.dumps(row))
    (directory / "part-00000-of-00001.jsonl").write_text("\n".join(rows) + "\n")
    (directory / "manifest.json").write_text("{}")
    (directory / "summary.json").write_text("{}")
    return directory


def losses(workdir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # a job end to end
@pytest.mark.parametrize("variant,family", [("cot,tiny", "bloom"), ("mixed,ftcot,tiny", "opt")])
def test_student_trains_on_augmented_records_is_evaluated_and_exports(tmp_path, variant, family):
    records = load_records("synthetic", "student_train")[:64]
    augmented = write_augmented(tmp_path / "augmented" / "toy", records, samples=2 if family == "opt" else 1)
    config = finetune.get_config(variant)
    config.data.datasets = (str(augmented),)
    config.num_train_steps, config.log_every, config.checkpoint_every, config.plot = 12, 3, 12, False
    if family == "opt":
        config.model = common.model(None, family="opt", vocab_size=len(byte_tokenizer()), hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, ffn_dim=128, max_position_embeddings=320,
                                    word_embed_proj_dim=32, pad_token_id=3, bos_token_id=1, eos_token_id=2)
    export = train(config, tmp_path / "run")
    curve = losses(tmp_path / "run")
    assert curve[-1] < curve[0] - 0.5, curve

    student = tl.from_pretrained(export)
    tokenizer = tl.load_tokenizer(export)
    assert type(student).__name__ == ("Bloom" if family == "bloom" else "OPT")
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"id": r.id, "question": r.question, "choices": list(r.choices),
                                            "answer": r.answer}) + "\n"
                                for r in load_records("synthetic", "student_test")[:8]))
    mode = "generate" if "ftcot" in variant else "loglik"
    metrics = evaluate_tasks(student, tokenizer, [str(held_out)], tmp_path / "eval", mode=mode,
                             max_new_tokens=8, batch_size=4)
    task = metrics["tasks"]["held_out"]
    assert task["count"] == 8 and 0.0 <= task["accuracy"] <= 1.0
    predictions = (tmp_path / "eval" / "held_out" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 8

    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(export).eval()
    ids = np.asarray([tokenizer("Q: How many days? (A) 3 (B) 4")["input_ids"]])
    with torch.no_grad():
        expected = reference(input_ids=torch.as_tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(student(ids)), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
