"""Workdirs and outputs as one path type, `etils.epath.Path`: a local folder or a cloud URL (gs://, s3://,
az://; epath reaches them through fsspec: gcsfs for gs://, `pip install -e ".[gcs]"`).

pathlib would turn `gs://bucket/run` into the local folder `gs:/bucket/run` and a preempted TPU VM would
lose every checkpoint with its disk, so every job reads its workdir through `workdir_path`, and writes
through the helpers here where local files and object stores differ:
- `write_atomic`: all or nothing. Locally a temporary file renamed into place; on an object store one
  upload, which is atomic already (a reader sees the old object or the new one, never a part of it).
- `append_text`: object stores cannot append; the object is rewritten whole.
- `write_figure`: matplotlib writes PNG bytes to a buffer, then `write_atomic`.
- `local_dir`: for writers that take only local paths (safetensors, tokenizers): a local folder copied
  to the URL afterwards.
- `local_copy`: for readers that take only local paths (memory-mapped safetensors, tokenizers): a folder at a
  URL copied once into a local cache, reused while the folder's files (names and sizes) are unchanged.
- `read_text`, `read_bytes`, `reading`: every read of a file that may be in a bucket (a workdir's configs,
  records, parts, summaries, metadata), so that a store's passing error does not stop a job that reads it.
- `retrying`: each of these on a URL retries a store's transient errors (HTTP 408/429/5xx, connection resets,
  timeouts; gcsfs has retried each request already) with backoff for at most RETRY_TOTAL_S of waiting, then
  raises StorageError naming the object.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from etils import epath

from teacherlm_jax.errors import StorageError, one_line

log = logging.getLogger(__name__)

# epath's schemes (etils.epath.gpath): each goes through fsspec's filesystem for it.
SCHEMES = ("gs", "s3", "az")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_COPY_CHUNK = 64 * 1024 * 1024
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 30.0  # backoff between tries of one object's read or write: 1, 2, 4, ... 30 s
RETRY_TOTAL_S = 300.0  # at most this long waiting on one object, then StorageError
_sleep = time.sleep  # tests record the waits instead
T = TypeVar("T")
STORAGE_TIMEOUT_S = 15.0  # a listing answers in well under a second; the client's own retries take minutes
AUTHENTICATE = {
    "gs": "authenticate with `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a "
          "service-account key file (on a TPU VM or GCE: the VM's service account needs access to the bucket); "
          "check the bucket name and the network",
    "s3": "set AWS credentials (`aws configure`, or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY); check the bucket "
          "name and the network",
    "az": "authenticate with `az login`, or set AZURE_STORAGE_CONNECTION_STRING; check the container name and the "
          "network",
}


def url_scheme(path: str | os.PathLike) -> str | None:
    """"gs" for gs://bucket/x; None for a local path."""
    match = _URL.match(os.fspath(path))
    return match.group(1) if match else None


def is_url(path: str | os.PathLike) -> bool:
    return url_scheme(path) is not None


def workdir_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path: a URL kept a URL (its filesystem checked importable now, not after hours of
    training), a local path made absolute (`~` expanded). A URL of another scheme is refused, not written
    to a local folder named after it."""
    scheme = url_scheme(path)
    if scheme is None:
        return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if scheme not in SCHEMES:
        raise ValueError(f"{path}: unsupported URL scheme {scheme}://; workdirs and outputs are local paths or "
                         f"{', '.join(s + '://' for s in SCHEMES)} URLs")
    import fsspec

    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as e:
        raise ImportError(f"{path}: {e} (for gs://: pip install -e '.[gcs]')") from None
    # fsspec caches folder listings for good, so a file another process wrote (another augment process's
    # part, a checkpoint Orbax wrote from its own threads) would stay unseen: always ask the store.
    fsspec.config.conf.setdefault(scheme, {})["use_listings_cache"] = False
    return epath.Path(os.fspath(path))


class StorageUnreachable(ConnectionError):
    """A cloud workdir whose store cannot be reached or authenticated."""


def check_workdir(path: str | os.PathLike, timeout: float = STORAGE_TIMEOUT_S) -> None:
    """Refuses, before a job starts, a local workdir that is a file (makedirs would say only `File exists`) and a
    URL whose store does not answer within `timeout` seconds (its client would retry for minutes, or wait on
    a credentials lookup), saying how to authenticate."""
    if is_url(path):
        check_reachable(workdir_path(path), timeout)
        return
    local = os.path.expanduser(os.fspath(path))
    if os.path.exists(local) and not os.path.isdir(local):
        raise NotADirectoryError(f"--workdir={path} is a file, not a folder: a workdir is a folder, absent or "
                                 f"holding a run's outputs; name another path or move the file away")


def check_reachable(url: epath.Path, timeout: float = STORAGE_TIMEOUT_S) -> None:
    """Raises StorageUnreachable unless the store behind `url` answers one request within `timeout` seconds."""
    outcome: dict[str, BaseException] = {}

    def probe() -> None:
        try:
            url.exists()  # one request: reaches the store and authenticates
        except BaseException as e:  # noqa: BLE001 (reported below, whatever the client raised)
            outcome["error"] = e

    thread = threading.Thread(target=probe, daemon=True)  # a hung client must not keep the process alive
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        cause = f"no answer within {timeout:g} s"
    elif "error" in outcome:
        cause = f"{type(outcome['error']).__name__}: {str(outcome['error']).splitlines()[0][:300]}"
    else:
        return
    raise StorageUnreachable(f"{url}: cannot reach or authenticate to the store ({cause}); "
                             f"{AUTHENTICATE[url_scheme(url)]}")


def transient(error: BaseException) -> bool:
    """Whether `error` (or one that caused it) is a store's passing failure: HTTP 408, 429 or 5xx, a connection
    reset or refused, a timeout."""
    while error is not None:
        code = getattr(error, "code", None) or getattr(error, "status", None)  # gcsfs's HttpError, aiohttp's
        code = int(code) if isinstance(code, str) and code.isdigit() else code
        if isinstance(code, int) and (code in (408, 429) or 500 <= code < 600):
            return True
        if isinstance(error, (ConnectionError, TimeoutError)) or any(
                cls.__name__ == "ClientConnectionError" for cls in type(error).__mro__):  # aiohttp's, not imported
            return True
        error = error.__cause__ or error.__context__
    return False


def retrying(path: str | os.PathLike, action: str, call: Callable[[], T]) -> T:
    """`call()`, which reads or writes `path`; on a URL its transient errors are retried with exponential backoff
    (RETRY_FIRST_S doubling to RETRY_MAX_S) while the waits add up to at most RETRY_TOTAL_S, then StorageError
    names the object. Other errors, and every error on a local path, pass at once."""
    if not is_url(path):
        return call()
    waited, wait, tries = 0.0, RETRY_FIRST_S, 0
    while True:
        tries += 1
        try:
            return call()
        except Exception as e:
            if not transient(e):
                raise
            cause = one_line(e, 200)
            if waited + wait > RETRY_TOTAL_S:
                raise StorageError(f"{path}: {action} failed {tries} times over {waited:.0f} s of retries ({cause}); "
                                   f"the store keeps failing: check its status, then rerun the same command (it "
                                   f"continues from the last complete checkpoint or part)") from e
            log.warning("%s: %s failed (%s); retrying in %.0f s", path, action, cause, wait)
            _sleep(wait)
            waited, wait = waited + wait, min(2 * wait, RETRY_MAX_S)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's bytes; on a URL through `retrying`, so a store's passing error is retried, not fatal."""
    return retrying(path, "read", epath.Path(path).read_bytes)


def read_text(path: str | os.PathLike) -> str:
    """The file's UTF-8 text, read like `read_bytes`."""
    return retrying(path, "read", lambda: epath.Path(path).read_text(encoding="utf-8"))


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """The file open for binary reads: a local file streamed; an object read whole through `retrying` first
    (a stream cut midway could not be retried from where it stopped)."""
    if not is_url(path):
        with open(path, "rb") as f:
            yield f
        return
    yield io.BytesIO(read_bytes(path))


def write_atomic(path: epath.Path, data: str | bytes) -> None:
    """`data` (text as UTF-8) at `path`, all or nothing, whatever kills the process."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    if is_url(path):
        retrying(path, "write", lambda: path.write_bytes(data))  # one upload: atomic; stores rename by copying
        return
    tmp = Path(path).with_name(f"{path.name}.tmp{os.getpid()}")  # unique to this process
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk: no partial file left behind
        tmp.unlink(missing_ok=True)
        raise


def append_text(path: epath.Path, text: str) -> None:
    """`text` added at the end of `path` (created if missing). An object store cannot append: the object is
    read and written whole, atomically, which is fine for files of log lines."""
    if is_url(path):
        write_atomic(path, retrying(path, "read", lambda: path.read_text() if path.exists() else "") + text)
        return
    with open(path, "ab") as f:
        size = f.tell()
        try:
            f.write(text.encode("utf-8"))
            f.flush()
        except BaseException:  # a full disk: the file is cut back, no torn line left
            f.truncate(size)
            raise


def write_figure(fig, path: epath.Path, **savefig_kwargs) -> None:
    """A matplotlib figure as a PNG at `path` (matplotlib writes local files only: through a buffer)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **savefig_kwargs)
    write_atomic(path, buffer.getvalue())


@contextlib.contextmanager
def local_dir(out: epath.Path) -> Iterator[Path]:
    """A local folder for `out`: `out` itself when it is local; for a URL a temporary folder whose files
    are copied (streamed) under `out` when the block ends without an error."""
    if not is_url(out):
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="teacherlm_jax-") as tmp:
        yield Path(tmp)
        for file in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
            target = out / file.relative_to(tmp).as_posix()
            retrying(target, "upload", lambda file=file, target=target: _copy(file, target))


def file_sizes(folder: str | os.PathLike) -> dict[str, int]:
    """{path relative to `folder`: size in bytes} of every file below it (on an object store: one listing)."""
    folder = workdir_path(folder)
    if is_url(folder):
        import fsspec

        fs, root = fsspec.core.url_to_fs(os.fspath(folder))
        found = retrying(folder, "list", lambda: fs.find(root, detail=True))
        return {name[len(root):].lstrip("/"): int(info["size"]) for name, info in found.items()}
    return {os.path.relpath(os.path.join(parent, name), folder): os.path.getsize(os.path.join(parent, name))
            for parent, _, names in os.walk(folder) for name in names}


def _copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """One file copied whole (streamed), either side local or a URL."""
    with epath.Path(source).open("rb") as src, epath.Path(target).open("wb") as dst:
        shutil.copyfileobj(src, dst, _COPY_CHUNK)


def _files_under(folder: epath.Path) -> Iterator[epath.Path]:
    """Every file below `folder` (epath's rglob refuses object stores: one listing per folder instead)."""
    for child in folder.iterdir():
        if child.is_dir():
            yield from _files_under(child)
        else:
            yield child


def local_copy(url: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """The folder at `url` in a local cache (default `$TEACHERLM_CACHE`, else ~/.cache/teacherlm_jax), copied
    once: a later call reuses the copy while the listing (file names and sizes) is the same, so a checkpoint
    rewritten in the bucket is fetched again."""
    source = workdir_path(url)
    try:
        files = retrying(source, "list", lambda: sorted(
            (str(p.relative_to(source)), p.stat().length) for p in _files_under(source)))
    except FileNotFoundError:
        files = []
    if not files:
        raise FileNotFoundError(f"{url}: no such folder, or no files in it")
    root = Path(cache or os.environ.get("TEACHERLM_CACHE") or Path.home() / ".cache" / "teacherlm_jax")
    target = root / "remote" / hashlib.sha256(os.fspath(url).encode()).hexdigest()[:24]
    listing = json.dumps(files)
    if (target / ".listing.json").is_file() and (target / ".listing.json").read_text() == listing:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    for name, _ in files:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        retrying(source / name, "download", lambda name=name: _copy(source / name, tmp / name))
    (tmp / ".listing.json").write_text(listing)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)  # another process's finished copy of the same files is replaced by an equal one
    return target
