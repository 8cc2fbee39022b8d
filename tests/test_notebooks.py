"""The Colab notebooks (docs/colab/) are what their generator writes, and both run to the end in their
tiny CPU configuration (nbclient, kernel python3), so they cannot rot."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
COLAB = ROOT / "docs" / "colab"
# The demo notebook runs configs/demo.py:tiny shrunk further (2 steps per stage, a handful of questions,
# stage 3 at stage 1's learning rate so it reuses stage 1's compiled step from the demo's compilation
# cache): this checks that every step of the notebook runs, in about a minute and a half on 2 cores.
DEMO_SMOKE_ARGS = " ".join([
    "--config.suite.n_teacher_per_family=10", "--config.suite.n_train_per_family=6",
    "--config.suite.n_test_per_family=4", "--config.teacher.stage3.optimizer.learning_rate=0.003",
    *(f"--config.teacher.{stage}.{key}=2" for stage in ("stage1", "stage2", "stage3")
      for key in ("num_train_steps", "optimizer.warmup_steps")),
    *(f"--config.students.{s}.train.{key}=2" for s in ("answers_only", "finetune_cot")
      for key in ("num_train_steps", "optimizer.warmup_steps")),
    "--config.augment.sampling.max_new_tokens=8", "--config.eval.max_new_tokens=8",
])


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", COLAB / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _execute(name: str, monkeypatch, **env: str) -> nbformat.NotebookNode:
    monkeypatch.setenv("TEACHERLM_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports this checkout: the install cell skips
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(COLAB / name, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(COLAB)}}).execute()
    return notebook


def _text(notebook: nbformat.NotebookNode) -> str:
    """Every stream and text/plain output of the executed notebook."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.parametrize("name", ["tpu_quickstart.ipynb", "demo_pipeline.ipynb"])
def test_committed_notebook_is_generated(name):
    generator = _generator()
    assert (COLAB / name).read_text(encoding="utf-8") == generator.render(name), \
        f"docs/colab/{name} is stale: run python docs/colab/make_notebooks.py"


@pytest.mark.slow
def test_quickstart_runs_tiny(monkeypatch):
    text = _text(_execute("tpu_quickstart.ipynb", monkeypatch))
    assert "skipping the install" in text
    assert "tiny configuration: True" in text
    # One annotation per question and kind, each after its TeacherLM prompt.
    for kind in ("cot", "fundamentals", "mistakes"):
        assert text.count(f"--- {kind}: ") == 2, kind
    assert "A: The answer is (A). Let's think step by step." in text
    assert "The following are multiple choice questions (with answers) about" in text
    assert "accuracy " in text and " questions (chance 0.25)" in text
    # The plan: every engine and eval program compiled for a TPU slice by libtpu from this CPU kernel.
    assert "v5e:2x2: 4 chips of TPU v5 lite, 16 GiB each" in text
    for program in ("insert", "decode_round", "shrink", "scoring", "generate"):
        assert re.search(rf"^{program} +peak +[\d.]+ MiB/chip  fits True  bound +[\d.]+ us$", text, re.M), program


@pytest.mark.slow
def test_demo_notebook_runs_tiny(monkeypatch, tmp_path):
    workdir = tmp_path / "demo"
    notebook = _execute("demo_pipeline.ipynb", monkeypatch, TEACHERLM_DEMO_WORKDIR=str(workdir),
                        TEACHERLM_DEMO_ARGS=DEMO_SMOKE_ARGS)
    text = _text(notebook)
    assert "configs/demo.py:tiny" in text
    report = json.loads((workdir / "report.json").read_text())
    for name, accuracy in report["students"].items():
        assert f"student {name:16s} {accuracy:.3f}" in text
    # The report is shown: its markdown and both figures.
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert any("# TeacherLM demo" in o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
