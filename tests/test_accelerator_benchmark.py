"""benchmarks/accelerator.py --reduced runs on CPU and prints its three tables, their counts finite numbers;
the augment part generates texts that end at EOS (the benchmark's EOS-calibrated random model). Timings are
the benchmark's to report, not this test's to judge: no timing column is read here."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here starts job processes

ROOT = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = 128


def tables(output: str) -> dict[str, list[dict[str, str]]]:
    """{part: rows as {column: cell}} for every `## part: ...` section's markdown table."""
    found: dict[str, list[dict[str, str]]] = {}
    for section in re.split(r"^## ", output, flags=re.M)[1:]:
        part = section.split(":", 1)[0]
        lines = [line for line in section.splitlines() if line.startswith("|")]
        if len(lines) < 3:
            continue
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
        found[part] = [dict(zip(cells[0], row)) for row in cells[2:]]
    return found


def number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%BM"))


# Columns that hold times, rates or fractions of a peak: what the benchmark measures, unchecked here.
TIMINGS = {"ms/step", "roofline ms", "% of roofline", "step s", "tokens/s", "records/s", "MFU"}


@pytest.fixture(scope="module")
def output(shared_data_dir: Path) -> str:
    if not (shared_data_dir / "creak").is_dir():
        pytest.skip(f"CREAK not found in {shared_data_dir} (the augment part reads creak/dev)")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), "TEACHERLM_DATA_DIR": str(shared_data_dir)}
    proc = subprocess.run([sys.executable, "benchmarks/accelerator.py", "--reduced"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def test_three_tables_with_their_columns(output: str):
    assert output.startswith("# Accelerator benchmark: ")
    found = tables(output)
    assert set(found) == {"decode", "augment", "train"}, output
    for part, rows in found.items():
        assert rows, f"{part}: empty table"
        for row in rows:
            for column, cell in row.items():
                if column not in TIMINGS and re.fullmatch(r"-?[\d,.]+[%BM]?", cell):
                    assert math.isfinite(number(cell)), f"{part}: {column}={cell}"
    assert [int(r["batch"]) for r in found["decode"]] == [1, 4]
    (train,) = found["train"]
    assert train["MFU"] == "n/a"  # no bf16 peak is known for a CPU: no made-up fraction of one


def test_augment_generates_texts_that_end_at_eos(output: str):
    (row,) = tables(output)["augment"]
    assert int(row["generated tokens"]) > 0
    assert row["records x kinds"] == "6 x 3"
    assert 0 < number(row["mean tokens/text"]) < MAX_NEW_TOKENS, row
    if row["ended at EOS"] != "n/a":  # read from the part files, if their format is still the current one
        assert number(row["ended at EOS"]) > 50, row
