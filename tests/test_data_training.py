"""Training batches from datasets: the records source, the byte tokenizer, the synthetic registry entry."""
import json

import ml_collections
import numpy as np
import pytest

import teacherlm_jax as tl
from teacherlm_jax.data import load_records
from teacherlm_jax.data.training import in_eval_split, load_pairs, make_records_iterator
from teacherlm_jax.errors import ConfigError
from teacherlm_jax.tokenizers import byte_tokenizer


def config_for(datasets, **overrides):
    data = dict(source="records", datasets=tuple(datasets), split="train", format="cot", style="teacherlm",
                kind_ratios={}, seq_len=96, loss_on="all", add_eos=False, skip_invalid=False, eval_fraction=0.0)
    return ml_collections.ConfigDict(dict(seed=0, batch_size=4, data={**data, **overrides}))


def test_byte_tokenizer_round_trips_any_text_and_is_builtin():
    tokenizer = tl.load_tokenizer("builtin:bytes")
    text = "Q: Café costs 3€? (A) yes (B) no A: The answer is (A)."
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))
    assert max(ids) < len(tokenizer) == 4 + 256 and tokenizer.decode(ids) == text
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == 3 and tokenizer.eos_token_id == 2
    assert byte_tokenizer()(text)["input_ids"] == ids


def test_synthetic_registry_entry_needs_no_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TEACHERLM_DATA_DIR", str(tmp_path / "absent"))
    records = load_records("synthetic", "student_test")
    assert len(records) == 600 and all(r.source == "synthetic" and r.cot for r in records)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_records_source_batches_with_target_mask(tmp_path):
    rows = [{"id": f"q{i}", "question": f"What is {i} plus one?", "choices": [str(i + 1), str(i + 2)],
             "answer": 0, "cot": f"{i} plus one is {i + 1}."} for i in range(12)]
    path = write_jsonl(tmp_path / "toy.jsonl", rows)
    tokenizer = byte_tokenizer()
    config = config_for([path], loss_on="target")
    iterator = make_records_iterator(config, tokenizer, 0, 1)
    batch = next(iterator)
    assert batch["input_ids"].shape == (4, 96)
    for row in range(4):
        length = int(batch["attention_mask"][row].sum())
        text = tokenizer.decode(batch["input_ids"][row, :length])
        target = tokenizer.decode(batch["input_ids"][row][batch["loss_mask"][row] == 1])
        assert text.endswith(target) and target.startswith(" ") and target.strip().endswith(".")
        assert "Let's think step by step." in text and "Let's think" not in target
    state = iterator.get_state()
    following = next(iterator)
    resumed = make_records_iterator(config, tokenizer, 0, 1)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["input_ids"], following["input_ids"])


def test_eval_split_is_disjoint_and_stable(tmp_path):
    rows = [{"id": f"q{i}", "question": f"Q{i}?", "choices": ["a", "b"], "answer": i % 2, "cot": "because"}
            for i in range(200)]
    path = write_jsonl(tmp_path / "toy.jsonl", rows)
    held = {r["id"] for r in rows if in_eval_split(r["id"] + "/cot", 0.2)}
    assert 20 < len(held) < 60
    config = config_for([path], eval_fraction=0.2)
    tokenizer = byte_tokenizer()
    with pytest.raises(ConfigError, match="eval_fraction"):
        make_records_iterator(config_for([path]), tokenizer, 0, 1, split="eval")
    eval_batch = next(make_records_iterator(config, tokenizer, 0, 1, split="eval"))
    eval_text = tokenizer.decode(eval_batch["input_ids"][0][eval_batch["attention_mask"][0] == 1])
    question = eval_text.split(" (A)")[0].removeprefix("Q: ")
    assert f"q{question[1:-1]}" in held


def test_truncation_keeps_the_last_tokens_and_is_logged(tmp_path, caplog):
    rows = [{"id": "long", "question": "x" * 200, "choices": ["a", "b"], "answer": 1, "cot": "the end."}] * 4
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    batch = next(make_records_iterator(config_for([path]), byte_tokenizer(), 0, 1))
    assert byte_tokenizer().decode(batch["input_ids"][0]).endswith("the end.")
    assert "4 of 4 examples were longer than config.data.seq_len=96" in caplog.text


def test_bad_data_config_names_the_key(tmp_path):
    path = write_jsonl(tmp_path / "toy.jsonl", [{"id": "a", "question": "Q?", "choices": ["x"], "answer": 0}])
    bad = ml_collections.ConfigDict({**config_for([path]).data.to_dict(), "format": "essay"})
    with pytest.raises(ConfigError, match="config.data.format='essay'"):
        load_pairs(bad)
    with pytest.raises(ValueError, match="toy:a: has no 'cot' annotation"):
        load_pairs(config_for([path]).data)
    with pytest.raises(ConfigError, match="config.tokenizer"):
        make_records_iterator(config_for([path]), None, 0, 1)


def test_instruction_format_reads_prompt_target_files(tmp_path):
    path = write_jsonl(tmp_path / "inst.jsonl", [{"id": "i1", "prompt": "Translate: hi ->", "target": " salut"}])
    data = ml_collections.ConfigDict({**config_for([path]).data.to_dict(), "format": "instruction"})
    (pair,) = load_pairs(data)
    assert (pair.prompt, pair.target) == ("Translate: hi ->", " salut")


def test_kinds_the_augment_job_skipped_give_no_example_and_are_counted(tmp_path, caplog):
    """augment with truncation="skip" writes a too-long kind as null and lists it under `skipped`: a
    student still trains on the rest; a kind missing for any other reason is still an error."""
    base = {"question": "Q?", "choices": ["x", "y"], "answer": 0, "truncated": []}
    rows = [{**base, "id": "a", "cot": "c", "mistakes": "m", "skipped": []},
            {**base, "id": "b", "cot": None, "mistakes": "m", "skipped": ["cot"]},
            {**base, "id": "c", "cot": None, "mistakes": None, "skipped": ["cot", "mistakes"]},
            {**base, "id": "d", "cot": "cut", "mistakes": "m", "skipped": [], "truncated": ["cot"]}]
    out = tmp_path / "augmented" / "toy"
    out.mkdir(parents=True)
    write_jsonl(out / "part-00000-of-00001.jsonl", rows)
    with caplog.at_level("WARNING"):
        cot = load_pairs(config_for([str(out)]).data)
    assert [p.id for p in cot] == ["a/cot", "d/cot"] and cot[1].target == " cut"  # truncated: used as written
    assert f"{out}: 2 of 4 records have no 'cot' text (the augment job skipped it" in caplog.text
    mixed = load_pairs(config_for([str(out)], format="mixed").data)
    assert [p.id for p in mixed] == ["a/cot", "a/mistakes", "b/mistakes", "d/cot", "d/mistakes"]
    assert "1 of 4 records have no 'mistakes' text" in caplog.text
    batch = next(make_records_iterator(config_for([str(out)]), byte_tokenizer(), 0, 1))  # trains
    assert batch["input_ids"].shape == (4, 96)
    with pytest.raises(ValueError, match="toy:a: has no 'fundamentals' annotation"):
        load_pairs(config_for([str(out)], format="fundamentals").data)


def test_unset_seq_len_is_the_longest_example_rounded_up_and_nothing_is_cut(tmp_path, caplog):
    targets = [" a", " bb", " " + "c" * 23]  # byte tokenizer: one token per byte; the longest is 4 + 24 = 28
    path = write_jsonl(tmp_path / "inst.jsonl", [{"id": f"i{i}", "prompt": "Say:", "target": t}
                                                 for i, t in enumerate(targets * 4)])
    config = config_for([path], format="instruction", seq_len=None)
    report: dict = {}
    iterator = make_records_iterator(config, byte_tokenizer(), 0, 1, report=report, max_positions=512)
    assert iterator.seq_len == 32 and next(iterator)["input_ids"].shape == (4, 32)
    assert report["seq_len"] == 32 and report["longest_example"] == 28 and report["truncated_examples"] == 0
    texts = {byte_tokenizer().decode(row[row != 3]) for _ in range(3) for row in next(iterator)["input_ids"]}
    assert texts == {"Say:" + t for t in targets}  # whole examples
    assert "longer than" not in caplog.text


def test_unset_seq_len_is_capped_at_the_model_positions(tmp_path, caplog):
    path = write_jsonl(tmp_path / "inst.jsonl", [{"id": f"i{i}", "prompt": "Say:", "target": " " + "x" * (10 * i)}
                                                 for i in range(1, 5)])
    config = config_for([path], format="instruction", seq_len=None)
    iterator = make_records_iterator(config, byte_tokenizer(), 0, 1, max_positions=30)
    assert iterator.seq_len == 30 and next(iterator)["input_ids"].shape == (4, 30)
    assert "2 of 4 examples were longer than the model's max_position_embeddings=30" in caplog.text
    with pytest.raises(ConfigError, match="config.data.seq_len is unset"):
        make_records_iterator(config, byte_tokenizer(), 0, 1)


def test_hugging_face_dataset_with_other_column_names_and_missing_stage2_kinds(tmp_path):
    import datasets

    saved = tmp_path / "hf_mc"
    datasets.Dataset.from_dict({"uid": ["q1", "q2"], "query": ["Is ice cold?", "Is fire cold?"],
                                "options": [["yes", "no"], ["yes", "no"]], "label": ["A", "B"],
                                "why": ["Ice is frozen water.", "Fire is hot."]}).save_to_disk(str(saved))
    fields = {"id": "uid", "question": "query", "choices": "options", "answer": "label", "cot": "why"}
    pairs = load_pairs(config_for([f"hf:{saved}"], format="answer", fields=fields).data)
    assert [(p.id, p.target) for p in pairs] == [("q1", "A)."), ("q2", "B).")]
    with pytest.raises(ValueError, match="pass fields"):
        load_pairs(config_for([f"hf:{saved}"], format="answer").data)
    # Stage 2 asked to teach kinds no dataset has stops, instead of teaching chain of thought alone.
    mixed = config_for([f"hf:{saved}"], format="mixed", fields=fields,
                       kind_ratios={"cot": 1.0, "fundamentals": 1.0, "mistakes": 0.0})
    with pytest.raises(ConfigError, match=r"config.data.kind_ratios asks for \['fundamentals'\]"):
        load_pairs(mixed.data)
    mixed.data.kind_ratios = {"cot": 1.0}
    assert len(load_pairs(mixed.data)) == 2
