"""The augment job: the teacher writes cot / fundamentals / mistakes for every record of datasets.

    python -m teacherlm_jax.main --config configs/augment.py --workdir DIR \
        --config.teacher.init_from=TEACHER --config.datasets="('creak', 'strategyqa:dev', '/data/x.jsonl')"

Modules: `job` (config -> run), `runner` (chunks -> `teacherlm_jax.generation`'s engine -> parts), `chunks` (records <-> prompts and output records), `settings`, `files`
(parts, manifest, atomic writes), `fingerprint` (the teacher's identity by content), `summary`
(summary.json, lengths.png, the progress bar) and `export` (parquet shards and the dataset card).

Per dataset, DIR/augmented/<dataset>/ (<dataset>: the registry name, `<name>_<split>` when a split is
named as `name:split`, the file stem for a .jsonl file) holds
  part-<chunk>-of-<chunks>.jsonl  one JSON object per input record, in input order (schema below);
  manifest.json                   the settings the parts were cut with (a rerun must match them) and the
                                  inputs they were generated from (records' hash, sampling, teacher);
  runs/<process>-<time>.json      each finished run's timing and engine figures, for the summary;
  summary.json, lengths.png       once every part exists (`summary.write_summary`); summary.json's `quality`
                                  counts each kind's texts that are empty, cut at max_new_tokens, degenerate
                                  and (cot) answer-consistent, and what each training filter keeps
                                  (`teacherlm_jax.data.quality`);
  data/train-*-of-*.parquet,      the same records as a Hugging Face dataset, with a `quality` column, and its
  README.md                       dataset card rendered from the summary (`export`), written with it.

Engine (`config.engine`, `teacherlm_jax.generation.scheduler`): "continuous" (default) keeps `batch_size`
prompts' decode slots busy: the device decodes rounds of many steps, and between rounds the slots of rows
that ended (EOS or max_new_tokens) take the next prompts, prefilled into those slots' cache rows in one
call, so decode steps approach generated tokens / slots; the host writes parts while the next round runs. Prompts of every kind and dataset in
this process's chunks feed the same slots. "static" decodes batches of `batch_size` prompts, each until
its longest row ends. Continuous batching moves the job's last rows to fewer slots once no prompt
waits (see `engine`). The teacher is loaded once, with listed layers that its decode layout shares
(its weights are held once). summary.json's `throughput.engine` and the progress bar report decode
steps, slot occupancy (the fraction of slot-steps that produced a kept token), prefill tokens
(padding included) and compiled programs, beside records/s and tokens/s.

Resumable: records are cut, in input order, into chunks of `chunk_size`. A chunk's part is written once
its last row ends, to a temporary file renamed into place (`os.replace` is atomic; on a gs:// workdir
one object upload, atomic too: `teacherlm_jax.paths`), so a part is complete or absent; a run killed at
any moment (SIGKILL included) and started again with the same command skips the parts that exist and
redoes the others. A row's tokens depend only on the teacher,
its prompt and its key: the hash of (seed, dataset, record id, kind) and the sample number, with the
step counted per row. So the parts do not depend on the engine, the batch size, the chunk size's
batching, where a run was killed, the number of processes or which process wrote them. A part is kept
only while its rows hold the current inputs (`chunks.record_inputs`: the record, its prompts, the
sampling and the teacher, its weights fingerprinted by content, see `fingerprint`): a rerun after an
edited question regenerates that record's part, after a retrained teacher or other sampling every
part, and logs which parts and why. A second run of the same process index on the workdir refuses at
start (`teacherlm_jax.workdir_lock`).

Processes: chunk c belongs to process c % process_count (`config.process_index`/`process_count`, by
default jax's). Each process generates its chunks on a mesh of its own local devices (data parallel
over slots, tensor parallel over heads/mlp/vocab for teachers larger than a chip), so processes never
wait on each other. A teacher larger than a host takes `config.mesh_scope="global"`: one mesh over every
process's devices, every process decoding every chunk together, process 0 alone writing. The summary is written once all parts exist: after a barrier by process 0 under
jax.distributed, else (processes started independently, e.g. `--config.process_index=1
--config.process_count=2`) by each process that finishes and finds every part written.

Long prompts: a prompt longer than `max_prompt_tokens` (0: the model's max_position_embeddings minus
max_new_tokens) keeps its last tokens (truncation="left": the start of the question is lost, the
answer and the kind's cue stay) or is not generated (truncation="skip": that kind is null for that
record; student training gives that record no example of it and logs the count). Either way the record
lists the kind under `truncated` or `skipped` and summary.json counts it.

Output record: `id, question, choices, answer, subject, source` (the input record), `gold` {kind: the
record's own annotation}, one key per generated kind (`cot`, `fundamentals`, `mistakes`: the
continuation's text, without the EOS; a list of `num_samples` texts when num_samples > 1; null when
skipped), `prompts` {kind: full prompt}, `prompt_tokens` {kind: tokens before truncation},
`new_tokens` {kind: generated tokens without the EOS, a list when num_samples > 1}, `truncated` and
`skipped` (lists of kinds), `teacher` {init_from, checkpoint, model_type, dtype, tokenizer, weights:
{sha256, method, files, bytes}} and
`sampling` {temperature, top_k, top_p, max_new_tokens, num_samples, stop_at_eos, seed}.
`teacherlm_jax.data.examples.read_augmented` reads it back for student training, from the parts or the
parquet shards alike.
"""
from teacherlm_jax.augment.job import read_settings, resolve_dataset, run, settings_from_config, validate
from teacherlm_jax.augment.runner import DatasetWork, augment_datasets, augment_records
from teacherlm_jax.augment.settings import Settings, prompt_seed

__all__ = ["DatasetWork", "Settings", "augment_datasets", "augment_records",
           "prompt_seed", "read_settings", "resolve_dataset", "run", "settings_from_config", "validate"]
