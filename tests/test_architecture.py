"""The layering contract (.importlinter; docs/architecture.md, "Layers") holds, and would catch a violation; no
module imports one that leads back to it, inside a package too (which the layers contract, between packages,
does not see).

CI runs only pytest, so the contract is checked here: `lint-imports` from the repository root, and the import
graph it reads (grimp's, every import statement, those inside functions included)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the teacherlm_jax package and .importlinter under `root` (found first on the path)."""
    script = Path(sys.executable).with_name("lint-imports")
    command = [str(script if script.exists() else shutil.which("lint-imports")), "--no-cache"]
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_layers_import_downward_only():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 1 kept, 0 broken." in proc.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(REPO / "teacherlm_jax", tmp_path / "teacherlm_jax", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path)
    layers = tmp_path / "teacherlm_jax" / "models" / "layers.py"
    layers.write_text(layers.read_text() + "\nfrom teacherlm_jax.data import records  # models importing data\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "teacherlm_jax.models.layers -> teacherlm_jax.data.records" in proc.stdout
    assert "Contracts: 0 kept, 1 broken." in proc.stdout


def import_cycles(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """Every import a -> b from which b leads back to a, as the chain a -> b -> ... -> a."""
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycles.append((importer, *back))
    return cycles


def test_no_import_cycle_anywhere():
    cycles = import_cycles(grimp.build_graph("teacherlm_jax", cache_dir=None))
    assert cycles == [], "\n".join(" -> ".join(chain) for chain in cycles)


def test_a_cycle_inside_a_package_is_found():
    graph = grimp.ImportGraph()
    for importer, imported in [("p.report", "p.ablation"), ("p.ablation", "p.plot"), ("p.plot", "p.report"),
                               ("p.report", "p.plan")]:
        graph.add_import(importer=importer, imported=imported)
    assert import_cycles(graph) == [("p.ablation", "p.plot", "p.report", "p.ablation"),
                                    ("p.plot", "p.report", "p.ablation", "p.plot"),
                                    ("p.report", "p.ablation", "p.plot", "p.report")]
