"""Generic JSONL, instruction JSONL, Hugging Face and TFDS readers, and bad-input handling."""
import functools
import json

import numpy as np
import pytest

from teacherlm_jax.data import LoadReport, Record, load_instructions, load_records
from teacherlm_jax.errors import DataError


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


GOOD = {"id": "q1", "question": "Is it?", "choices": ["yes", "no"], "answer": 1,
        "subject": "logic", "cot": "Because.", "fundamentals": "F.", "mistakes": "M."}


def test_generic_jsonl_reads_all_fields(tmp_path):
    path = _write(tmp_path / "mine.jsonl", [GOOD, {"id": "q2", "question": "Which?",
                                                   "choices": ["a", "b", "c"], "answer": 0}])
    records = load_records(path)
    assert records == [
        Record("q1", "Is it?", ("yes", "no"), 1, "logic", "Because.", "F.", "M.", source="mine"),
        Record("q2", "Which?", ("a", "b", "c"), 0, source="mine")]


BAD_ROWS = [
    ('{"id": "b1", "question": "Is it?", ', "bad JSON"),
    ({k: v for k, v in GOOD.items() if k != "choices"}, "missing field 'choices'"),
    ({**GOOD, "answer": 2}, "answer 2 is outside the 2 choices"),
    ({**GOOD, "answer": -1}, "answer -1 is outside the 2 choices"),
    ({**GOOD, "question": "  "}, "field 'question' is empty"),
    ({**GOOD, "answer": True}, "neither an index nor a letter"),
]


@pytest.mark.parametrize("bad,reason", BAD_ROWS)
def test_bad_row_names_file_line_and_reason(tmp_path, bad, reason):
    path = _write(tmp_path / "data.jsonl", [GOOD, bad, GOOD])
    with pytest.raises(DataError) as err:
        load_records(path)
    assert err.value.where == f"{path}:2"
    assert reason in err.value.reason
    assert str(err.value).startswith(f"{path}:2: ")


def test_skip_invalid_counts_every_skipped_row(tmp_path):
    rows = [GOOD] + [bad for bad, _ in BAD_ROWS] + [{**GOOD, "id": "q9"}]
    path = _write(tmp_path / "data.jsonl", rows)
    report = LoadReport()
    records = load_records(path, skip_invalid=True, report=report)
    assert [r.id for r in records] == ["q1", "q9"]
    assert report.num_skipped == len(BAD_ROWS)
    assert [s.where for s in report.skipped] == [f"{path}:{i}" for i in range(2, 2 + len(BAD_ROWS))]
    assert report.summary() == {"loaded": {path: 2}, "skipped": {path: len(BAD_ROWS)},
                                "num_skipped": len(BAD_ROWS)}


def test_instruction_jsonl(tmp_path):
    path = _write(tmp_path / "inst.jsonl", [{"id": "i1", "prompt": "Say hi.", "target": " hi"},
                                            {"id": "i2", "prompt": "Say yo."}])
    with pytest.raises(DataError, match=r"inst.jsonl:2: missing field 'target'"):
        load_instructions(path)
    report = LoadReport()
    (rec,) = load_instructions(path, skip_invalid=True, report=report)
    assert (rec.id, rec.prompt, rec.target) == ("i1", "Say hi.", " hi")
    assert report.summary()["skipped"] == {path: 1}


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        load_records("nope")


def test_hf_save_to_disk_dataset_and_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    csqa_like = {"question": ["Where?", "Who?"], "answerKey": ["B", "A"],
                 "choices": [{"label": ["A", "B"], "text": ["here", "there"]},
                             {"label": ["A", "B"], "text": ["me", "you"]}]}
    ds = datasets.Dataset.from_dict(csqa_like)
    ds.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "dict"))
    expected = [Record("validation-0", "Where?", ("here", "there"), 1, source="dict"),
                Record("validation-1", "Who?", ("me", "you"), 0, source="dict")]
    got = load_records(f"hf:{tmp_path / 'dict'}", "validation", fields={"answer": "answerKey"})
    assert got == expected
    single = load_records(str(tmp_path / "single"), "validation", fields={"answer": "answerKey"})
    assert [(r.question, r.choices, r.answer) for r in single] == [
        (r.question, r.choices, r.answer) for r in expected]
    with pytest.raises(DataError, match=r"columns \['answer'\] not in"):
        load_records(f"hf:{tmp_path / 'dict'}", "validation")
    with pytest.raises(DataError, match="split 'train' not in"):
        load_records(f"hf:{tmp_path / 'dict'}", "train", fields={"answer": "answerKey"})
    with pytest.raises(ValueError, match="unknown record fields"):
        load_records(f"hf:{tmp_path / 'dict'}", "validation", fields={"label": "answerKey"})


def _tiny_tfds_builder():
    tfds = pytest.importorskip("tensorflow_datasets")

    class TeacherlmTinyMc(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(), "question": tfds.features.Text(),
                "choices": tfds.features.Sequence(tfds.features.Text()), "answer": np.int64}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(3):
                yield i, {"id": f"t{i}", "question": f"Question {i}?", "choices": ["a", "b", "c"],
                          "answer": i}
    return TeacherlmTinyMc


def test_tfds_array_record_without_tensorflow(tmp_path):
    builder = _tiny_tfds_builder()(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    records = load_records("tfds:teacherlm_tiny_mc", "train", data_dir=str(tmp_path))
    assert sorted(records, key=lambda r: r.id) == [
        Record(f"t{i}", f"Question {i}?", ("a", "b", "c"), i, source="teacherlm_tiny_mc")
        for i in range(3)]
    with pytest.raises(DataError, match="cannot open as a TFDS data source"):
        load_records("tfds:teacherlm_tiny_mc", "nosuchsplit", data_dir=str(tmp_path))


def test_registry_readers_locate_bad_rows(tmp_path):
    (tmp_path / "creak").mkdir()
    good = {"ex_id": "train_0", "sentence": "Soup is wet.", "explanation": "It is.", "label": "true"}
    bad = {**good, "ex_id": "train_1", "label": "maybe"}
    path = _write(tmp_path / "creak" / "train.json", [good, bad])
    with pytest.raises(DataError, match=rf"{path}:2: label must be true/false, got 'maybe'"):
        load_records("creak", "train", data_dir=str(tmp_path))
    report = LoadReport()
    (rec,) = load_records("creak", "train", data_dir=str(tmp_path), skip_invalid=True, report=report)
    assert rec.question == "Determine the correctness of the following sentence. Soup is wet."
    assert (rec.choices, rec.answer, rec.cot) == (("True", "False"), 0, "It is.")
    assert report.summary()["skipped"] == {"creak/train": 1}

    mmlu = tmp_path / "mmlu" / "data" / "dev"
    mmlu.mkdir(parents=True)
    (mmlu / "anatomy_dev.csv").write_text('"What?",a,b,c,d,B\n"Who?",a,b,c,E\n')
    with pytest.raises(DataError, match=r"anatomy_dev.csv:2: expected 6 columns"):
        load_records("mmlu_2020", "dev", data_dir=str(tmp_path))


def _latin1_file(path, lines):
    """`lines` as UTF-8, except a Latin-1 "é" (byte 0xe9, not UTF-8) in the second line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(data.replace("é".encode(), b"\xe9"))
    return path


def _load(name, **kwargs):
    return lambda tmp_path: load_records(name, "train" if name != "mmlu_2020" else "dev",
                                         data_dir=str(tmp_path), **kwargs)


def _undecodable_files():
    """(files to write, how to read them, the file whose line 2 is bad) for every reader of data files."""
    from teacherlm_jax.augment.files import read_parts
    from teacherlm_jax.data.examples import read_augmented

    dumps = functools.partial(json.dumps, ensure_ascii=False)
    creak = {"ex_id": "t0", "sentence": "Soup is wet.", "explanation": "It is.", "label": "true"}
    csqa = {"id": "c0", "question": {"stem": "What?", "choices": [{"label": "A", "text": "a"}]}, "answerKey": "A"}
    return {
        "generic jsonl": ({"mine.jsonl": [dumps(GOOD), dumps({**GOOD, "question": "Café?"})]},
                          lambda d: load_records(str(d / "mine.jsonl"), skip_invalid=True), "mine.jsonl"),
        "instruction jsonl": ({"ins.jsonl": ['{"id": "1", "prompt": "p", "target": "t"}',
                                             '{"id": "2", "prompt": "é", "target": "t"}']},
                              lambda d: load_instructions(str(d / "ins.jsonl")), "ins.jsonl"),
        "registry jsonl": ({"creak/train.json": [dumps(creak), dumps({**creak, "sentence": "é"})]},
                           _load("creak", skip_invalid=True), "creak/train.json"),
        "json array": ({"strategyqa/train.json": ["[", '{"qid": "é"}', "]"],
                        "teacherlm_eval/strategy_qa/test.derived.jsonl": []},
                       _load("strategyqa"), "strategyqa/train.json"),
        "id list": ({"commonsenseqa/train_rand_split.jsonl": [dumps(csqa)],
                     "commonsenseqa/dev_rand_split.jsonl": [],
                     "ecqa/author_split/train_ids.txt": ["c0", "é"]},
                    _load("ecqa"), "ecqa/author_split/train_ids.txt"),
        "csv": ({"mmlu/data/dev/anatomy_dev.csv": ['"What?",a,b,c,d,B', '"Qué?",a,b,c,d,B']},
                _load("mmlu_2020"), "mmlu/data/dev/anatomy_dev.csv"),
        "augment output": ({"aug/part.jsonl": ['{"id": "a", "question": "Q?", "choices": ["x"], "answer": 0}',
                                               '{"id": "b", "question": "Qé?", "choices": ["x"], "answer": 0}']},
                           lambda d: read_augmented(d / "aug"), "aug/part.jsonl"),
        "augment parts": ({"out/manifest.json": ['{"chunks": 1}'],
                           "out/part-00000-of-00001.jsonl": ['{"id": "a"}', '{"id": "é"}']},
                          lambda d: read_parts(d / "out"), "out/part-00000-of-00001.jsonl"),
    }


@pytest.mark.parametrize("reader", list(_undecodable_files()))
def test_undecodable_byte_names_file_and_line(tmp_path, reader):
    """Not a bare UnicodeDecodeError, and never skipped (even with skip_invalid)."""
    files, read, bad = _undecodable_files()[reader]
    for name, lines in files.items():
        _latin1_file(tmp_path / name, lines)
    with pytest.raises(DataError) as err:
        read(tmp_path)
    assert err.value.where == f"{tmp_path / bad}:2"
    assert "not UTF-8: byte 0xe9" in err.value.reason
