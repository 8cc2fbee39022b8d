"""The augment job on a tiny random BLOOM with a byte-level tokenizer: output schema and read-back,
agreement with `generate` per prompt (seeds, EOS, samples), the long-prompt rule, config errors,
and the job's guarantees: SIGKILL + rerun and two processes give exactly one uninterrupted run's files."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from reference_models import tiny_bloom
from train_subprocess import CACHE, REPO, main_command
from teacherlm_jax import from_pretrained, generate, load_tokenizer
from teacherlm_jax.augment import Settings, augment_records, resolve_dataset, run, settings_from_config
from teacherlm_jax.augment import prompt_seed
from teacherlm_jax.augment.files import HISTOGRAM, SUMMARY, read_parts
from teacherlm_jax.augment.fingerprint import teacher_fingerprint
from teacherlm_jax.augment.summary import write_summary
from teacherlm_jax.data import KINDS, load_records, teacher_prompt
from teacherlm_jax.data.examples import build_pairs, read_augmented, skipped_kinds
from teacherlm_jax.errors import ConfigError, DataError
from teacherlm_jax.generation.sampler import Sampling
from teacherlm_jax.paths import workdir_path

if str(REPO) not in sys.path:  # configs/ is imported from the repository root, as main does
    sys.path.insert(0, str(REPO))
from configs import augment as augment_config  # noqa: E402
from teacherlm_jax.tokenizers import byte_tokenizer  # noqa: E402

EOS = 2
MAX_NEW = 16


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A tiny BLOOM (256 positions) whose greedy rows sometimes end at EOS, with its tokenizer."""
    model = tiny_bloom(vocab_size=264, tie_word_embeddings=False, pad_token_id=3, bos_token_id=1, eos_token_id=EOS,
                       seq_length=256)
    with torch.no_grad():
        for p in model.transformer.h.parameters():
            p.mul_(3.0)  # varied continuations
        bias = model.transformer.ln_f.bias
        model.lm_head.weight[EOS] = bias / bias.norm() ** 2  # EOS logit ~1: the top token at ~1 position in 8
    directory = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def toy_jsonl(tmp_path_factory) -> Path:
    """24 generic multiple-choice records of varied lengths (every prompt in one length bucket, <= 128
    tokens, so the tests compile few programs), some with a gold chain of thought."""
    rows = [{"id": f"q{i}", "question": f"Is {i} plus {i} equal to {2 * i + i % 2}?" + " Think." * (i % 3),
             "choices": ["yes", "no", "maybe"][:2 + i % 2], "answer": i % 2,
             "cot": f"{i} + {i} = {2 * i}." if i % 3 == 0 else None} for i in range(24)]
    path = tmp_path_factory.mktemp("data") / "toy.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def model(teacher_dir):
    return from_pretrained(teacher_dir)


@pytest.fixture(scope="module")
def tokenizer(teacher_dir):
    return load_tokenizer(teacher_dir)


@pytest.fixture(scope="module")
def records(toy_jsonl):
    return load_records(str(toy_jsonl))


def settings(**sampling) -> Settings:
    return Settings(sampling=Sampling(**{"temperature": 0.0, "max_new_tokens": MAX_NEW, **sampling}), batch_size=3,
                    chunk_size=5)


def single_prompt(model, tokenizer, ids, seed, sampling: Sampling) -> list[tuple[str, int]]:
    """What `generate` writes for one prompt alone: (text, tokens) per sample, the ending EOS stripped."""
    out = generate(model, np.array([ids]), np.ones((1, len(ids)), np.int32), max_new_tokens=sampling.max_new_tokens,
                   temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                   num_samples=sampling.num_samples, eos_token_id=EOS, seed=[seed])
    samples = []
    for tokens, length in zip(out.tokens, out.lengths):
        kept = tokens[:length].tolist()
        kept = kept[:-1] if kept and kept[-1] == EOS else kept
        samples.append((tokenizer.decode(kept, skip_special_tokens=True), len(kept)))
    return samples


def test_output_schema_summary_and_read_back(model, tokenizer, records, tmp_path):
    teacher = {"init_from": "tiny", "model_type": "bloom", "dtype": "float32"}
    stats = augment_records(model, tokenizer, records, tmp_path, settings(), dataset="toy", teacher=teacher)
    assert stats["records"] == len(records) and stats["chunks_generated"] == 5 and stats["chunks_resumed"] == 0
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == [f"part-{c:05d}-of-00005.jsonl" for c in range(5)]
    rows = read_parts(tmp_path)
    assert [row["id"] for row in rows] == [r.id for r in records]
    keys = ["id", "question", "choices", "answer", "subject", "source", "gold", *KINDS, "prompts", "prompt_tokens",
            "new_tokens", "truncated", "skipped", "teacher", "sampling"]
    for row, record in zip(rows, records):
        assert list(row) == keys
        assert (row["question"], tuple(row["choices"]), row["answer"], row["source"]) == \
               (record.question, record.choices, record.answer, "toy")
        assert row["gold"] == ({"cot": record.cot} if record.cot else {})
        assert row["prompts"] == {k: teacher_prompt(record, k) for k in KINDS}
        assert row["prompt_tokens"] == {k: len(tokenizer(teacher_prompt(record, k))["input_ids"]) for k in KINDS}
        assert all(isinstance(row[k], str) and 0 <= row["new_tokens"][k] <= MAX_NEW for k in KINDS)
        assert row["truncated"] == row["skipped"] == [] and row["teacher"] == teacher
        assert row["sampling"] == {"temperature": 0.0, "top_k": 50, "top_p": 1.0, "max_new_tokens": MAX_NEW,
                                   "num_samples": 1, "stop_at_eos": True, "seed": 0}
    lengths = [row["new_tokens"][k] for row in rows for k in KINDS]
    assert min(lengths) < MAX_NEW == max(lengths), "the teacher should end some rows at EOS, not all"

    # Greedy text per prompt is what `generate` gives that prompt alone (batching and sorting change nothing).
    for row, record in list(zip(rows, records))[:4]:
        for kind in KINDS:
            ids = tokenizer(teacher_prompt(record, kind))["input_ids"]
            seed = prompt_seed(0, "toy", record.id, kind)
            assert [(row[kind], row["new_tokens"][kind])] == single_prompt(model, tokenizer, ids, seed, settings().sampling)

    summary = write_summary(tmp_path)
    assert json.loads((tmp_path / SUMMARY).read_text()) == summary
    assert (tmp_path / HISTOGRAM).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["records"] == len(records) and summary["tokens"] == sum(lengths)
    for kind in KINDS:
        assert summary["avg_tokens"][kind] == round(np.mean([row["new_tokens"][kind] for row in rows]), 2)
        assert summary["truncated"][kind] == summary["skipped"][kind] == 0
    assert summary["throughput"]["compiled_programs"] >= 1
    assert set(summary["throughput"]["program_seconds"]) == {"trace", "lower", "cache_read", "compile"}
    engine = summary["throughput"]["engine"]
    assert engine["engines"] == ["continuous"] and engine["decode_steps"] >= max(lengths)
    assert engine["kept_tokens"] == sum(lengths) + sum(n < MAX_NEW for n in lengths)  # the EOS tokens too
    assert engine["slot_occupancy"] == round(engine["kept_tokens"] / engine["slot_steps"], 4)

    items = read_augmented(tmp_path)  # what student training reads
    assert [item.record.id for item in items] == [r.id for r in records]
    assert all(item.annotations[k] == (row[k],) for item, row in zip(items, rows) for k in KINDS)


def test_samples_are_lists_and_match_generate(model, tokenizer, records, tmp_path):
    """num_samples > 1 at temperature > 0 (Fine-tune-CoT's diverse reasoning): lists of texts, each
    sample what `generate` draws for that prompt and seed; EOS stripped."""
    chosen = records[:6]
    config = settings(temperature=0.8, top_k=0, num_samples=3, seed=7)
    augment_records(model, tokenizer, chosen, tmp_path, Settings(kinds=("cot", "mistakes"), sampling=config.sampling,
                                                                batch_size=4, chunk_size=3), dataset="toy")
    rows = read_parts(tmp_path)
    for row, record in zip(rows, chosen):
        assert "fundamentals" not in row and set(row["prompts"]) == {"cot", "mistakes"}
        for kind in ("cot", "mistakes"):
            assert isinstance(row[kind], list) and len(row[kind]) == 3
            ids = tokenizer(teacher_prompt(record, kind))["input_ids"]
            expected = single_prompt(model, tokenizer, ids, prompt_seed(7, "toy", record.id, kind), config.sampling)
            assert list(zip(row[kind], row["new_tokens"][kind])) == expected
    counts = [n for row in rows for k in ("cot", "mistakes") for n in row["new_tokens"][k]]
    assert min(counts) < MAX_NEW and len({tuple(row["cot"]) for row in rows}) > 1
    assert write_summary(tmp_path)["samples"] == {"cot": 18, "mistakes": 18}
    assert all(len(item.annotations["cot"]) == 3 for item in read_augmented(tmp_path))


@pytest.mark.parametrize("rule", ["left", "skip"])
def test_long_prompts_are_cut_or_skipped_and_counted(model, tokenizer, records, tmp_path, rule):
    limit = 100
    long = {(r.id, k) for r in records for k in KINDS if len(tokenizer(teacher_prompt(r, k))["input_ids"]) > limit}
    assert 0 < len(long) < 3 * len(records)
    config = Settings(sampling=settings().sampling, batch_size=3, chunk_size=12, max_prompt_tokens=limit,
                      truncation=rule)
    augment_records(model, tokenizer, records, tmp_path, config, dataset="toy")
    rows = read_parts(tmp_path)
    summary = write_summary(tmp_path)
    listed = "truncated" if rule == "left" else "skipped"
    for kind in KINDS:
        assert summary[listed][kind] == sum((r.id, kind) in long for r in records)
        assert summary["truncated" if rule == "skip" else "skipped"][kind] == 0
    for row in rows:
        assert row[listed] == [k for k in KINDS if (row["id"], k) in long]
    row, kind = next((row, k) for row in rows for k in KINDS if (row["id"], k) in long)
    if rule == "skip":
        assert row[kind] is None and row["new_tokens"][kind] is None
        assert kind not in next(i for i in read_augmented(tmp_path) if i.record.id == row["id"]).annotations
        items = read_augmented(tmp_path)  # a student trains on the rest of this kind; the count is reported
        assert skipped_kinds(items, kind) == {kind: summary["skipped"][kind]}
        assert len(build_pairs(items, kind)) == len(records) - summary["skipped"][kind]
    else:  # the teacher read the prompt's last `limit` tokens
        ids = tokenizer(row["prompts"][kind])["input_ids"][-limit:]
        seed = prompt_seed(0, "toy", row["id"], kind)
        assert [(row[kind], row["new_tokens"][kind])] == single_prompt(model, tokenizer, ids, seed, config.sampling)


def test_engine_batch_and_chunk_size_write_the_same_records(model, tokenizer, records, tmp_path):
    """Sampled (TeacherLM's temperature 1, top-k 50): continuous and static engines, other batch and chunk
    sizes, and two datasets sharing the slots, write the same records; continuous needs fewer decode steps."""
    sampling = Sampling(max_new_tokens=MAX_NEW, seed=3)
    outputs, engines = {}, {}
    for name, engine, batch, chunk in (("continuous", "continuous", 7, 5), ("static", "static", 7, 5),
                                       ("other", "continuous", 4, 24)):
        config = Settings(sampling=sampling, batch_size=batch, chunk_size=chunk, engine=engine)
        augment_records(model, tokenizer, records, tmp_path / name, config, dataset="toy")
        outputs[name] = [{k: v for k, v in row.items()} for row in read_parts(tmp_path / name)]
        engines[name] = write_summary(tmp_path / name)["throughput"]["engine"]
    assert outputs["continuous"] == outputs["static"] == outputs["other"]
    lengths = [row["new_tokens"][k] for row in outputs["static"] for k in KINDS]
    assert len(set(lengths)) > 2 and min(lengths) < MAX_NEW
    c, s = engines["continuous"], engines["static"]
    assert c["engines"] == ["continuous"] and s["engines"] == ["static"]
    assert c["kept_tokens"] == s["kept_tokens"] == sum(lengths) + sum(n < MAX_NEW for n in lengths)  # EOS kept
    assert c["decode_steps"] < s["decode_steps"] and 0 < s["slot_occupancy"] < c["slot_occupancy"] <= 1
    # A record's kinds share the question and its answer, prefilled once: fewer tokens than the prompts
    # hold, but at least every record's longest prompt (padding included).
    prompt_tokens = sum(row["prompt_tokens"][k] - 1 for row in outputs["static"] for k in KINDS)
    longest = sum(max(row["prompt_tokens"].values()) - 1 for row in outputs["static"])
    assert longest <= c["prefill_tokens"] < prompt_tokens and longest <= s["prefill_tokens"] < prompt_tokens

    # Two datasets in one run share one engine; each gets the records it gets alone.
    from teacherlm_jax.augment import DatasetWork, augment_datasets

    config = Settings(sampling=sampling, batch_size=3, chunk_size=5)
    works = [DatasetWork("toy", records, tmp_path / "both" / "toy"),
             DatasetWork("half", records[:12], tmp_path / "both" / "half")]
    stats = augment_datasets(model, tokenizer, works, config)
    assert read_parts(tmp_path / "both" / "toy") == outputs["continuous"]
    alone = tmp_path / "half_alone"
    augment_records(model, tokenizer, records[:12], alone, config, dataset="half")
    assert read_parts(tmp_path / "both" / "half") == read_parts(alone)
    assert stats["toy"]["records"] == len(records) and stats["half"]["records"] == 12


def config_for(teacher_dir: Path, data: Path, **overrides):
    config = augment_config.get_config("tiny")
    config.teacher.init_from = str(teacher_dir)
    config.datasets = (str(data),)
    config.max_records = 0
    config.chunk_size = 2
    config.batch_size = 3
    config.sampling.temperature = 0.0
    config.update(overrides)
    return config


@pytest.mark.parametrize("key, value, message", [
    ("datasets", ("creak", "no_such_set"), "config.datasets[1]: unknown dataset 'no_such_set'"),
    ("datasets", ("creak:validation",), "config.datasets[0]: 'creak:validation': creak has splits"),
    ("kinds", ("cot", "cots"), "config.kinds=('cot', 'cots'); expected a non-empty tuple of distinct kinds"),
    ("truncation", "right", "config.truncation='right'; expected one of ('left', 'skip')"),
])
def test_bad_config_names_the_key(tmp_path, toy_jsonl, key, value, message):
    config = config_for(tmp_path, toy_jsonl, **{key: value})
    with pytest.raises(ConfigError, match=re.escape(message)):
        run(config, str(tmp_path))  # fails before any model is loaded
    config = config_for(tmp_path, toy_jsonl)
    config.sampling.num_samples = 2
    with pytest.raises(ConfigError, match="config.sampling.num_samples=2 at temperature=0"):
        settings_from_config(config)


def test_rerun_with_other_settings_is_refused(model, tokenizer, records, tmp_path):
    augment_records(model, tokenizer, records[:2], tmp_path, settings(), dataset="toy")
    with pytest.raises(ValueError, match=r"manifest.json: .* other settings \(chunk_size: 5 -> 4; max_prompt"):
        augment_records(model, tokenizer, records[:2], tmp_path,
                        Settings(sampling=settings().sampling, chunk_size=4, max_prompt_tokens=50), dataset="toy")


def test_changed_records_regenerate_only_their_parts(model, tokenizer, records, tmp_path, caplog):
    """An edited question regenerates its chunk's part (the log names the part, record and input); the
    others are kept; the result is what a fresh run on the edited records writes."""
    augment_records(model, tokenizer, records[:10], tmp_path / "out", settings(), dataset="toy")
    edited = [*records[:7], dataclasses.replace(records[7], question="Is 7 plus 7 equal to 15?"), *records[8:10]]
    with caplog.at_level(logging.INFO, logger="teacherlm_jax.augment.runner"):
        stats = augment_records(model, tokenizer, edited, tmp_path / "out", settings(), dataset="toy")
    assert (stats["chunks_generated"], stats["chunks_resumed"]) == (1, 1)
    assert "inputs changed since its parts were written: records_sha256" in caplog.text
    assert "regenerating 1 parts (part-00001-of-00002.jsonl): record 'q7': question, prompts changed" in caplog.text
    augment_records(model, tokenizer, edited, tmp_path / "fresh", settings(), dataset="toy")
    assert read_parts(tmp_path / "out") == read_parts(tmp_path / "fresh")


def test_manifest_of_an_older_version_is_migrated(model, tokenizer, records, tmp_path, caplog):
    """A manifest with the retired `ids_sha256` (record ids only) is migrated, not refused: its parts are
    checked row by row against the records, kept where they hold them, and the manifest rewritten."""
    augment_records(model, tokenizer, records[:10], tmp_path, settings(), dataset="toy")
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    current = manifest.pop("records_sha256")
    manifest["ids_sha256"] = hashlib.sha256(json.dumps([r.id for r in records[:10]]).encode()).hexdigest()
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    with caplog.at_level(logging.INFO, logger="teacherlm_jax.augment"):
        stats = augment_records(model, tokenizer, records[:10], tmp_path, settings(), dataset="toy")
    assert (stats["chunks_generated"], stats["chunks_resumed"]) == (0, 2)
    assert "written by an older version (ids_sha256" in caplog.text
    migrated = json.loads(path.read_text())
    assert "ids_sha256" not in migrated and migrated["records_sha256"] == current


def test_changed_teacher_or_sampling_regenerates_every_part(model, tokenizer, records, tmp_path, caplog):
    """Same path, other weights (their fingerprint differs), or other sampling: every part is regenerated."""
    teacher = {"init_from": "tiny", "weights": {"sha256": "a" * 64, "method": "file bytes (sha256)"}}
    augment_records(model, tokenizer, records[:10], tmp_path, settings(), dataset="toy", teacher=teacher)
    retrained = {**teacher, "weights": {**teacher["weights"], "sha256": "b" * 64}}
    with caplog.at_level(logging.INFO, logger="teacherlm_jax.augment.runner"):
        stats = augment_records(model, tokenizer, records[:10], tmp_path, settings(), dataset="toy", teacher=retrained)
    assert (stats["chunks_generated"], stats["chunks_resumed"]) == (2, 0)
    assert "regenerating 2 parts (part-00000-of-00002.jsonl, part-00001-of-00002.jsonl): teacher changed" \
        in caplog.text
    assert all(row["teacher"] == retrained for row in read_parts(tmp_path))
    with caplog.at_level(logging.INFO, logger="teacherlm_jax.augment.runner"):
        stats = augment_records(model, tokenizer, records[:10], tmp_path, settings(seed=1), dataset="toy",
                                teacher=retrained)
    assert (stats["chunks_generated"], stats["chunks_resumed"]) == (2, 0)
    assert "sampling changed" in caplog.text and all(row["sampling"]["seed"] == 1 for row in read_parts(tmp_path))


def test_teacher_fingerprint_follows_content_not_path(teacher_dir, tmp_path):
    """Retraining at the same path changes the fingerprint; a hub download's blob names are reused."""
    copy = tmp_path / "teacher"
    shutil.copytree(teacher_dir, copy)
    before = teacher_fingerprint(copy)
    assert before == teacher_fingerprint(copy) and before["method"] == "file bytes (sha256)"
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one weight's last bit
    weights.write_bytes(bytes(data))
    assert teacher_fingerprint(copy)["sha256"] != before["sha256"]
    hub = tmp_path / "models--x--y"  # the hub cache's layout: snapshot files link to blobs named by their hash
    (hub / "blobs").mkdir(parents=True)
    (hub / "snapshots").mkdir()
    for name, digest in (("config.json", "1" * 40), ("model.safetensors", "2" * 64)):
        (hub / "blobs" / digest).write_text("never read")
        (hub / "snapshots" / name).symlink_to(hub / "blobs" / digest)
    assert teacher_fingerprint(hub / "snapshots")["method"] == "hub blob names"


def cli(workdir: Path, config, *extra: str) -> list[str]:
    overrides = [f"--config.teacher.init_from={config.teacher.init_from}", f"--config.datasets={config.datasets!r}",
                 f"--config.max_records={config.max_records}", f"--config.chunk_size={config.chunk_size}",
                 f"--config.batch_size={config.batch_size}", "--config.sampling.temperature=0.0"]
    return main_command("configs/augment.py:tiny", workdir, *overrides, *extra)


def env() -> dict[str, str]:
    """This process's XLA flags (the subprocesses must compute the same numbers), compiled programs
    shared between the subprocesses."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "JAX_COMPILATION_CACHE_DIR": str(CACHE),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def output_files(workdir: Path | str) -> dict[str, bytes]:
    """Every output file but summary.json (its throughput varies): parts, manifest, card, parquet shards."""
    out = workdir_path(workdir) / "augmented" / "toy"
    files = [p for p in sorted(out.iterdir()) if p.is_file() and p.name != SUMMARY]
    assert list(out.glob("data/*.parquet")) and (out / "README.md").is_file()
    return {str(p.relative_to(out)): p.read_bytes() for p in files + sorted(out.glob("data/*.parquet"))}


def summary_without_throughput(workdir: Path | str) -> dict:
    summary = json.loads((workdir_path(workdir) / "augmented" / "toy" / SUMMARY).read_text())
    return {k: v for k, v in summary.items() if k != "throughput"}


@pytest.fixture(scope="module")
def reference_run(teacher_dir, toy_jsonl, tmp_path_factory) -> Path:
    """One uninterrupted greedy run of the job (in this process: `run` is what main calls)."""
    workdir = tmp_path_factory.mktemp("reference")
    run(config_for(teacher_dir, toy_jsonl), str(workdir))
    return workdir


def test_job_records_the_teacher_fingerprint_and_its_method(teacher_dir, reference_run):
    manifest = json.loads((reference_run / "augmented" / "toy" / "manifest.json").read_text())
    assert manifest["teacher"]["weights"] == teacher_fingerprint(teacher_dir)
    assert manifest["teacher"]["weights"]["method"] == "file bytes (sha256)"
    assert all(row["teacher"] == manifest["teacher"] for row in read_parts(reference_run / "augmented" / "toy"))


def test_job_ends_with_one_summary_line(teacher_dir, toy_jsonl, tmp_path, capsys):
    run(config_for(teacher_dir, toy_jsonl, kinds=("cot",), max_records=2), str(tmp_path))
    tokens = json.loads((tmp_path / "augmented" / "toy" / SUMMARY).read_text())["tokens"]
    took = r"(?:\d+s|\d+m\d\ds|\d+h\d\dm)"  # console.duration: 12s, 1m04s, 2h05m
    assert re.fullmatch(rf"augment done: toy 2 records x 1 kind \(cot\) written this run, {tokens} tokens, in {took} "
                        rf"\| toy {re.escape(str(tmp_path / 'augmented' / 'toy'))}",
                        capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["local", "gcs"])
def test_sigkill_then_rerun_equals_uninterrupted_run(teacher_dir, toy_jsonl, reference_run, tmp_path, request,
                                                     storage):
    """Also with a gs:// workdir (a local GCS emulator): parts, manifest, runs, summary and histogram in
    the bucket are the local uninterrupted run's files."""
    config = config_for(teacher_dir, toy_jsonl)
    workdir = f"{request.getfixturevalue('gcs_bucket')}/{tmp_path.name}" if storage == "gcs" else str(tmp_path)
    out = workdir_path(workdir) / "augmented" / "toy"
    proc = subprocess.Popen(cli(workdir, config), cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not list(out.glob("part-*.jsonl")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the job ended before the kill:\n{stderr.decode()[-3000:]}"
    written = len(list(out.glob("part-*.jsonl")))
    assert 1 <= written < 12 and not (out / SUMMARY).exists()

    run(config, workdir)  # the same command again
    assert output_files(workdir) == output_files(reference_run)
    assert summary_without_throughput(workdir) == summary_without_throughput(reference_run)
    assert not list(out.glob("*.tmp*")) and not (REPO / "gs:").exists()


@pytest.mark.slow
def test_two_processes_write_the_single_process_files(teacher_dir, toy_jsonl, reference_run, tmp_path):
    config = config_for(teacher_dir, toy_jsonl)
    other = subprocess.Popen(cli(tmp_path, config, "--config.process_index=1", "--config.process_count=2"),
                             cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run(config_for(teacher_dir, toy_jsonl, process_index=0, process_count=2), str(tmp_path))
    _, stderr = other.communicate(timeout=300)
    assert other.returncode == 0, stderr.decode()[-3000:]
    assert output_files(tmp_path) == output_files(reference_run)
    assert summary_without_throughput(tmp_path) == summary_without_throughput(reference_run)
    runs = [json.loads(p.read_text()) for p in (tmp_path / "augmented" / "toy" / "runs").glob("*.json")]
    assert sorted((r["process_index"], r["chunks_generated"]) for r in runs) == [(0, 6), (1, 6)]
    assert json.loads((tmp_path / "augmented" / "toy" / SUMMARY).read_text())["throughput"]["processes"] == 2


def test_output_folder_is_the_dataset_name():
    assert resolve_dataset("creak").name == "creak" and resolve_dataset("creak").split == "train"
    assert resolve_dataset("creak:dev").name == "creak_dev"
    assert resolve_dataset("teacherlm_ecqa").split == "test"


def test_empty_dataset_is_an_error_naming_it(tmp_path):
    """0 records is not a successful run that did nothing; it fails before any model is loaded."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=re.escape(f"{empty}: 0 records: nothing to augment for dataset 'empty'")):
        run(config_for(tmp_path / "no_teacher_here", empty), str(tmp_path / "work"))


@pytest.mark.parametrize("damage", ["a line cut short", "bytes that are not UTF-8"])
def test_a_damaged_part_is_regenerated_saying_so(teacher_dir, toy_jsonl, reference_run, tmp_path, caplog, damage):
    """Not only a torn last line: a part damaged anywhere is generated again, with a warning naming it."""
    shutil.copytree(reference_run / "augmented", tmp_path / "augmented")
    part = tmp_path / "augmented" / "toy" / "part-00002-of-00012.jsonl"
    first, *rest = part.read_bytes().splitlines(keepends=True)
    part.write_bytes((first[:len(first) // 2] + b"\n" if damage == "a line cut short" else b"\xff\xfe\n") + b"".join(rest))
    with caplog.at_level(logging.WARNING):
        run(config_for(teacher_dir, toy_jsonl), str(tmp_path))
    assert f"toy: regenerating 1 parts (part-00002-of-00012.jsonl): damaged: {part}:1: " in caplog.text
    assert output_files(tmp_path) == output_files(reference_run)


@pytest.mark.parametrize("stop", ["among the parts", "after the parts"])
def test_a_full_disk_stops_the_job_naming_the_path_and_the_rerun_completes(teacher_dir, toy_jsonl, reference_run,
                                                                          tmp_path, monkeypatch, stop):
    import full_disk
    from teacherlm_jax.errors import fault_message

    out = reference_run / "augmented" / "toy"
    parts = sum(p.stat().st_size for p in out.glob("part-*.jsonl"))
    before = (reference_run / "config.json").stat().st_size + (out / "manifest.json").stat().st_size
    full_disk.install(str(tmp_path), before + (parts // 3 if stop == "among the parts" else parts), monkeypatch)
    with pytest.raises(Exception) as failed:
        run(config_for(teacher_dir, toy_jsonl), str(tmp_path))
    monkeypatch.undo()
    message = fault_message(failed.value)
    assert message is not None and message.startswith(str(tmp_path)) and "disk full" in message, failed.value
    assert not list(tmp_path.rglob("*.tmp*")) and not (tmp_path / "augmented" / "toy" / SUMMARY).exists()
    run(config_for(teacher_dir, toy_jsonl), str(tmp_path))
    assert output_files(tmp_path) == output_files(reference_run)


def test_a_flaky_bucket_is_retried_and_one_that_keeps_failing_named(teacher_dir, toy_jsonl, reference_run, tmp_path,
                                                                     gcs_bucket, flaky_store):
    from teacherlm_jax.errors import StorageError

    failures, waits = flaky_store
    config, workdir = config_for(teacher_dir, toy_jsonl), f"{gcs_bucket}/{tmp_path.name}"
    failures["upload"] = 10 ** 6  # the bucket refuses every write
    with pytest.raises(StorageError, match=f"^{re.escape(workdir)}/[^ ]+: write failed "):
        run(config, workdir)
    failures["upload"] = 5  # then answers again, after a few more failures
    run(config, workdir)
    assert failures["upload"] == 0 and output_files(workdir) == output_files(reference_run)


def test_a_resume_on_a_flaky_bucket_retries_every_read_and_one_that_keeps_failing_is_named(
        teacher_dir, toy_jsonl, reference_run, tmp_path, gcs_bucket, flaky_store):
    """The rerun reads its config, manifest, parts and runs from the bucket: each read fails once and is retried;
    reads that keep failing stop it with one error naming the object, and nothing is regenerated for it."""
    from teacherlm_jax.errors import StorageError

    failures, waits = flaky_store
    config, workdir = config_for(teacher_dir, toy_jsonl), f"{gcs_bucket}/{tmp_path.name}"
    run(config, workdir)
    out = workdir_path(workdir) / "augmented" / "toy"
    (out / "part-00002-of-00012.jsonl").unlink()  # a part to generate again, and the summary to write again
    (out / SUMMARY).unlink()
    failures["read"] = 10 ** 6
    with pytest.raises(StorageError, match=f"^{re.escape(workdir)}/[^ ]+: read failed .*ConnectionResetError"):
        run(config, workdir)
    assert not (out / "part-00002-of-00012.jsonl").exists() and not (out / SUMMARY).exists()
    failures["read"], waits[:] = 0, []
    failures["each_read_once"] = True
    run(config, workdir)
    failures["each_read_once"] = False
    assert output_files(workdir) == output_files(reference_run)
    assert len(waits) > 12 and set(waits) == {1.0}  # a retry for every part read, among others
