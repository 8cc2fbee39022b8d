"""Writes docs/colab/*.ipynb from the cell sources below: `python docs/colab/make_notebooks.py`.

The notebooks are committed (Colab opens them from the repository); this script is their source, so
edit the cells here and regenerate. tests/test_notebooks.py checks the committed files match it and
executes both in their tiny configuration.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# Cells both notebooks start with: parameters, runtime detection before jax is imported (the install
# picks jax's TPU or CUDA build by it), then the install itself.
PARAMETERS = '''\
# Parameters. TEACHERLM_NOTEBOOK_TINY=1 forces the tiny CPU configuration on any runtime.
import os

TINY_FORCED = os.environ.get("TEACHERLM_NOTEBOOK_TINY", "0") == "1"
# Where the code comes from when it is not installed yet (a Colab runtime): your clone of teacherlm_jax.
REPO_URL = os.environ.get("TEACHERLM_REPO_URL", "https://github.com/YOUR_ORG/teacherlm_jax.git")
# The real datasets (shared/data/README.md); MMLU is read from here when present.
DATA_DIR = os.environ.get("TEACHERLM_DATA_DIR")'''

DETECT = '''\
# Which accelerator this machine has, looked up without importing jax (the install below depends on it).
import glob
import shutil


def detect_accelerator() -> str:
    if os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_ACCELERATOR_TYPE") or glob.glob("/dev/accel*") \\
            or glob.glob("/dev/vfio/[0-9]*"):
        return "tpu"
    if shutil.which("nvidia-smi"):
        return "gpu"
    return "cpu"


ACCELERATOR = detect_accelerator()
# A CPU runtime gets XLA's TPU compiler (libtpu) too: it compiles for TPU slices (the plan below), while jax
# computes on the CPU only.
EXTRA = {"gpu": "[gpu]"}.get(ACCELERATOR, "[tpu]")
if ACCELERATOR == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
print("accelerator:", ACCELERATOR)'''

INSTALL = '''\
# Install teacherlm_jax (with jax's TPU or CUDA build) unless it is already importable.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("teacherlm_jax") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"teacherlm_jax{EXTRA} @ git+{REPO_URL}"],
                   check=True)
else:
    print("teacherlm_jax is importable; skipping the install")'''

DEVICES = '''\
import jax

RUNTIME = jax.default_backend()  # "tpu", "gpu" or "cpu"
TINY = TINY_FORCED or RUNTIME == "cpu"
print(f"runtime {RUNTIME}, {jax.device_count()} devices, tiny configuration: {TINY}")
for device in jax.devices():
    print(" ", device)'''


def quickstart() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# teacherlm_jax on a Colab TPU: quickstart\n\n"
            "Loads a BLOOM checkpoint into JAX, has it write TeacherLM's three annotations (chain of thought, "
            "fundamentals, common mistakes) for a few questions, and scores a few MMLU questions by answer-letter "
            "log-likelihood.\n\n"
            "Runtime: *Runtime > Change runtime type > TPU* (or a GPU). On a CPU runtime, or with "
            "`TEACHERLM_NOTEBOOK_TINY=1`, it uses a tiny random BLOOM and the built-in byte tokenizer instead "
            "of `bigscience/bloom-560m`: every step runs, but the texts are noise. "
            "Docs: [getting started](../getting_started.md), [reproducing TeacherLM](../reproducing.md)."),
        new_code_cell(PARAMETERS),
        new_code_cell(DETECT),
        new_code_cell(INSTALL),
        new_markdown_cell("## Devices\n`jax.default_backend()` names the runtime: `tpu`, `gpu` or `cpu`."),
        new_code_cell(DEVICES),
        new_markdown_cell(
            "## Load a BLOOM checkpoint\n"
            "`from_pretrained` reads a Hugging Face directory or hub id. Parameters are placed on a data-parallel "
            "mesh over every device (`teacherlm_jax.sharding`), so generation and scoring split rows over the "
            "devices. The tiny configuration saves a random 2-layer BLOOM with `save_pretrained` and loads it "
            "back the same way."),
        new_code_cell('''\
import tempfile

from flax import nnx

import teacherlm_jax as tl
from teacherlm_jax.models.bloom import Bloom, BloomConfig
from teacherlm_jax.sharding import DEFAULT_RULES, make_mesh

mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})  # every device data parallel
if TINY:
    CHECKPOINT = tempfile.mkdtemp(prefix="tiny_bloom_")
    tiny = BloomConfig(vocab_size=260, hidden_size=64, n_layer=2, n_head=4, max_position_embeddings=512)
    tl.save_pretrained(Bloom(tiny, rngs=nnx.Rngs(0)), CHECKPOINT)
    TOKENIZER, DTYPE, MAX_NEW_TOKENS = "builtin:bytes", "float32", 16
else:
    CHECKPOINT = TOKENIZER = "bigscience/bloom-560m"
    DTYPE, MAX_NEW_TOKENS = "bfloat16", 128
model = tl.from_pretrained(CHECKPOINT, dtype=DTYPE, mesh=mesh, rules=DEFAULT_RULES)
tokenizer = tl.load_tokenizer(TOKENIZER)  # left padding, for generation and scoring
print(CHECKPOINT, model.config)'''),
        new_markdown_cell(
            "## The three augmentations\n"
            "TeacherLM's teacher reads the question, its options and the answer, then one of three prompts "
            "(`teacherlm_jax.data.KIND_PROMPTS`). True/false statements are asked as "
            "`Determine the correctness of the following sentence. ...` with options `True` / `False`. "
            "Sampling as the authors' generation: temperature 1, top-k 50. The real teacher's weights are not "
            "public, so a base BLOOM's texts show the mechanics, not TeacherLM's quality."),
        new_code_cell('''\
from teacherlm_jax.data import KINDS, Record, teacher_prompt

questions = [
    Record(id="creak-1", question="Determine the correctness of the following sentence. "
           "Marlon Brando played Vito Corleone in The Godfather.", choices=("True", "False"), answer=0),
    Record(id="csqa-1", question="Where would you put a plate after washing and drying it?",
           choices=("cupboard", "table", "sink", "dishwasher", "restaurant"), answer=0),
]
prompts = [teacher_prompt(q, kind) for q in questions for kind in KINDS]
print(prompts[0])'''),
        new_code_cell('''\
batch = tokenizer(prompts, return_tensors="np", padding=True)
out = tl.generate(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=MAX_NEW_TOKENS,
                  temperature=1.0, top_k=50, eos_token_id=tokenizer.eos_token_id, seed=0,
                  mesh=mesh, rules=DEFAULT_RULES)
texts = [tokenizer.decode(tokens[:n], skip_special_tokens=True) for tokens, n in zip(out.tokens, out.lengths)]
assert len(texts) == len(questions) * len(KINDS)
for i, question in enumerate(questions):
    print(f"\\n=== {question.id}: {question.question}")
    for j, kind in enumerate(KINDS):
        print(f"--- {kind}: {texts[i * len(KINDS) + j].strip()!r}")'''),
        new_markdown_cell(
            "## Score MMLU questions\n"
            "Zero-shot, as TeacherLM's evaluation: the context ends `A: The answer is (`, each option's letter is "
            "scored as its continuation, and the prediction is the letter with the highest mean log-probability. "
            "MMLU contexts start with `The following are multiple choice questions (with answers) about "
            "{subject}.` Real MMLU is read from the shared data folder when it is there "
            "(`TEACHERLM_DATA_DIR`); otherwise two inline questions stand in. The full benchmark is the `eval` "
            "job (`configs/eval.py`)."),
        new_code_cell('''\
from pathlib import Path

from teacherlm_jax.data import default_data_dir, eval_context, load_records
from teacherlm_jax.eval.job import evaluate_records

data_dir = DATA_DIR or default_data_dir()
if Path(data_dir, "mmlu_canonical_reformatted").is_dir():
    mmlu = load_records("mmlu", split="test", data_dir=data_dir)[::1000]  # 15 questions across subjects
else:
    print(f"no MMLU under {data_dir}; using inline questions")
    mmlu = [
        Record(id="astronomy-0", subject="astronomy", question="Which planet is closest to the Sun?",
               choices=("Venus", "Mercury", "Earth", "Mars"), answer=1),
        Record(id="high_school_mathematics-0", subject="high_school_mathematics", question="What is 7 * 8",
               choices=("54", "56", "58", "64"), answer=1),
    ]
print(eval_context(mmlu[0], mmlu=True))
predictions, acc = evaluate_records(model, tokenizer, mmlu, mmlu=True, batch_size=8, mesh=mesh, rules=DEFAULT_RULES)
for p in predictions:
    print(f"{p.id:40s} predicted {'ABCD'[p.prediction]}, answer {'ABCD'[p.answer]}")
print(f"accuracy {acc:.3f} on {len(predictions)} questions (chance 0.25)")'''),
        new_markdown_cell(
            "## Plan a TPU slice before renting it\n"
            "XLA's TPU compiler (libtpu) compiles for any TPU slice from any runtime, a CPU one included. Here "
            "the augment engine's and the eval job's programs for this checkpoint are compiled for a slice, with "
            "each program's memory per chip and a roofline bound (a lower bound on its time from the chip's "
            "published peak figures, not a measurement). From a checkout, the compile job does this for the "
            "training step too (`python -m teacherlm_jax.main --config configs/compile.py:bloom-7b1 --workdir DIR "
            "--config.topology=v5e-8`), and `--dry_run --config.topology=v5e-8` on `configs/pipeline.py` plans "
            "every step of the recipe ([scaling.md](../scaling.md))."),
        new_code_cell('''\
from teacherlm_jax.compile.programs import compile_and_report, generation_programs
from teacherlm_jax.compile.topology import parse_slice

SLICE = "v5e:2x2" if TINY else "v5e-8"
tpu = parse_slice(SLICE)
plan_mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, tpu.devices())
programs = generation_programs({"init_from": CHECKPOINT, "dtype": DTYPE}, plan_mesh, DEFAULT_RULES, slots=16,
                               prompt_tokens=64 if TINY else 512, max_new_tokens=MAX_NEW_TOKENS)
print(f"{SLICE}: {tpu.chips} chips of {tpu.chip.device_kind}, {tpu.chip.hbm_gib:g} GiB each")
for name, lowered in programs.items():
    report = compile_and_report(lowered, tpu.chip, int(tpu.chip.hbm_gib * 2**30))[1]
    print(f"{name:13s} peak {report.peak_bytes / 2**20:9.1f} MiB/chip  fits {report.fits}  "
          f"bound {report.roofline_seconds * 1e6:9.1f} us")'''),
        new_markdown_cell(
            "## Next\n"
            "- The whole pipeline on synthetic data, with a report: [demo_pipeline.ipynb](demo_pipeline.ipynb).\n"
            "- Every job and config key: [getting started](../getting_started.md), [configs](../configs.md).\n"
            "- Multi-host TPU pods: [launch.md](../launch.md); memory per chip: [scaling.md](../scaling.md)."),
    ]
    return _notebook(cells)


def demo_pipeline() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# The TeacherLM demo pipeline\n\n"
            "Runs `configs/demo.py` end to end: a synthetic reasoning suite, a small BLOOM teacher trained in "
            "TeacherLM's three stages, the teacher's augmentation of the students' questions, students trained on "
            "answers only and on the teacher's texts, and the evaluation of all of them, then shows the report "
            "(`report.md`, `report.json`, loss curves and accuracies).\n\n"
            "On a TPU or GPU runtime it runs the demo as configured; on CPU, or with `TEACHERLM_NOTEBOOK_TINY=1`, "
            "the `tiny` variant. `TEACHERLM_DEMO_ARGS` adds config overrides (e.g. "
            "`--config.teacher.stage2.num_train_steps=300`). Rerunning the cell resumes a stopped demo and skips "
            "finished steps; after an override only the steps it changes (and those after them) rerun."),
        new_code_cell(PARAMETERS + '''
WORKDIR = os.environ.get("TEACHERLM_DEMO_WORKDIR", "/content/teacherlm_demo" if os.path.isdir("/content")
                         else os.path.expanduser("~/teacherlm_demo"))
DEMO_ARGS = os.environ.get("TEACHERLM_DEMO_ARGS", "")'''),
        new_code_cell(DETECT),
        new_markdown_cell("## The code\nThe demo runs from a checkout (it needs `configs/`): the one this notebook "
                          "sits in, else a clone of `REPO_URL`, installed in editable mode."),
        new_code_cell('''\
import subprocess
import sys
from pathlib import Path


def find_checkout() -> Path | None:
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "configs" / "demo.py").is_file() and (folder / "teacherlm_jax").is_dir():
            return folder
    return None


REPO_DIR = find_checkout()
if REPO_DIR is None:
    REPO_DIR = Path("/content/teacherlm_jax" if os.path.isdir("/content") else "~/teacherlm_jax").expanduser()
    subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(REPO_DIR)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{REPO_DIR}{EXTRA}"], check=True)
print("checkout:", REPO_DIR)'''),
        new_code_cell(DEVICES),
        new_markdown_cell(
            "## Run the demo\n"
            "The same command works in a terminal: `python -m teacherlm_jax.main --config configs/demo.py[:tiny] "
            "--workdir DIR`. Its log streams below."),
        new_code_cell('''\
import shlex

config = "configs/demo.py:tiny" if TINY else "configs/demo.py"
command = [sys.executable, "-m", "teacherlm_jax.main", "--config", config, "--workdir", WORKDIR,
           *shlex.split(DEMO_ARGS)]
print(shlex.join(command))
log = []
with subprocess.Popen(command, cwd=REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as job:
    for line in job.stdout:
        log.append(line)
        if " done in " in line or "pipeline done" in line:  # one line per finished step, one at the end
            print(line.rstrip())
if job.returncode:
    print("".join(log[-40:]))
    raise RuntimeError(f"the demo exited with status {job.returncode} (its last lines above)")'''),
        new_markdown_cell("## The report"),
        new_code_cell('''\
import json

from IPython.display import Image, Markdown, display

report = json.loads(Path(WORKDIR, "report.json").read_text())
print(f"teacher {report['teacher']:.3f}; chance", ", ".join(f"{t} {c:.3f}" for t, c in report["chance"].items()))
for name, accuracy in report["students"].items():
    print(f"student {name:16s} {accuracy:.3f}")
print("best student on the teacher's texts:", report["best_augmented"], f"(gain {report['gain']:+.3f})")
display(Markdown(Path(WORKDIR, "report.md").read_text()))'''),
        new_code_cell('''\
for image in ("loss_curves.png", "accuracy.png"):
    display(Image(filename=str(Path(WORKDIR, image))))'''),
        new_markdown_cell(
            "In the tiny configuration the models train for a few steps only: the numbers show that every "
            "step ran, not TeacherLM's effect. See [getting started](../getting_started.md) for the jobs one by "
            "one and [reproducing.md](../reproducing.md) for real models."),
    ]
    return _notebook(cells)


def _notebook(cells: list) -> nbformat.NotebookNode:
    for i, cell in enumerate(cells):
        cell.id = f"cell-{i}"  # fixed ids: regenerating gives the same file
    notebook = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "accelerator": "TPU",
        "colab": {"provenance": []},
    })
    nbformat.validate(notebook)
    return notebook


NOTEBOOKS = {"tpu_quickstart.ipynb": quickstart, "demo_pipeline.ipynb": demo_pipeline}


def render(name: str) -> str:
    """The notebook file's exact text."""
    return nbformat.writes(NOTEBOOKS[name](), version=4) + "\n"


def main() -> None:
    for name in NOTEBOOKS:
        (HERE / name).write_text(render(name), encoding="utf-8")
        print("wrote", HERE / name, file=sys.stderr)


if __name__ == "__main__":
    main()
