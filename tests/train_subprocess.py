"""Helpers for tests that run jax in subprocesses (fake device counts must be set before jax starts)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Compiled programs are shared between the subprocesses of a test run: most of a tiny run is compiling.
CACHE = Path(tempfile.gettempdir()) / "teacherlm_jax_test_xla_cache"


def jax_env(devices: int = 1, **extra: str) -> dict[str, str]:
    """Environment for a CPU jax subprocess with `devices` fake devices; XLA's LLVM optimisation is off,
    which makes tiny programs compile ~3x faster (they run slower, which tiny runs do not notice)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0",
               JAX_COMPILATION_CACHE_DIR=str(CACHE), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.update(extra)
    return env


def main_command(config: str, workdir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "teacherlm_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]


def run_checked(cmd: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs to completion; on failure the assertion shows the subprocess's output tail."""
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def launch_processes(config: str, workdir: Path, *overrides: str, processes: int = 2, devices: int = 1,
                     **popen) -> list[subprocess.Popen]:
    """`processes` jax processes of one job under jax.distributed on localhost (gloo collectives), each with
    `devices` fake CPU devices; `popen` goes to each Popen (default: text pipes)."""
    import portpicker

    port = portpicker.pick_unused_port()
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return [subprocess.Popen(
        main_command(config, workdir, *overrides, f"--config.distributed.coordinator_address=localhost:{port}",
                     f"--config.distributed.num_processes={processes}", f"--config.distributed.process_id={i}"),
        cwd=REPO, env=jax_env(devices=devices, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo"), **popen)
        for i in range(processes)]
