"""One run per workdir (and per job process): two would delete each other's temporary files (augment) or
collide inside Orbax and duplicate metrics rows (train). The second refuses at start, naming the holder.

The lock is an exclusive `flock` on WORKDIR/.lock-<name>, a file holding the holder's host, pid and start
time. The kernel drops the lock when its holder dies, however (SIGKILL included), so a killed run's lock
never blocks the rerun: the rerun takes it over and logs whose it was. A run that ends releases it and
empties the file.

A cloud workdir (gs://...) cannot be flocked, and an object-store lock would outlive a preempted holder
and block the very rerun that must resume. So it is locked per machine: the flock is on a local file named
after the URL (in the temp folder), which keeps a second run on this machine out, and WORKDIR/.lock-<name>
in the bucket holds the holder's record. A rerun that finds a record left by another host says so: it
cannot tell a preempted run from a live one there; if that one still runs, stop one of them.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from etils import epath

from teacherlm_jax.paths import is_url, retrying, workdir_path, write_atomic

log = logging.getLogger(__name__)


class WorkdirLocked(RuntimeError):
    """Another live run holds the workdir's lock."""


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike, name: str) -> Iterator[epath.Path]:
    """Holds WORKDIR/.lock-<name> for the block; raises `WorkdirLocked` naming the holder when another
    process holds it. `name` tells jobs (and process indices) that may share a workdir apart."""
    workdir = workdir_path(workdir)
    path = workdir / f".lock-{name}"
    cloud = is_url(workdir)
    local = _machine_lock(workdir, name) if cloud else Path(path)
    local.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(local, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirLocked(f"{path}: {workdir} is in use by another run ({_describe(_read(fd))}); wait for "
                                f"it to end or stop it, or use another workdir") from None
        previous = retrying(path, "read", lambda: path.read_text().strip() if path.exists() else "") if cloud \
            else _read(fd)
        if previous:
            log.warning("%s: taking over the lock of a run that did not release it (%s; %s)", path,
                        _describe(previous), _whereabouts(previous, cloud))
        holder = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n"
        _write(fd, path if cloud else None, holder)
        try:
            yield path
        finally:
            _write(fd, path if cloud else None, "")  # released: the next run finds no holder to report
    finally:
        os.close(fd)  # drops the flock


def _machine_lock(workdir: epath.Path, name: str) -> Path:
    """This machine's lock file for a cloud workdir, named after its URL."""
    digest = hashlib.sha256(str(workdir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "teacherlm_jax-locks" / f"{digest}-{name}"


def _write(fd: int, record: epath.Path | None, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)
    if record is not None:
        write_atomic(record, text)  # a failing store retried


def _whereabouts(previous: str, cloud: bool) -> str:
    """Why the previous holder is gone, or that it may not be (another machine, cloud workdir)."""
    try:
        host = json.loads(previous)["host"]
    except (ValueError, KeyError, TypeError):
        host = None
    if cloud and host != socket.gethostname():
        return ("a cloud workdir is locked per machine only, so a run on another host is not seen: if that "
                "one still runs, stop one of them")
    return "it no longer holds it: killed?"


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()


def _describe(text: str) -> str:
    if not text:
        return "holder not written yet: it is starting"
    try:
        holder = json.loads(text)
        return f"host {holder['host']}, pid {holder['pid']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return f"holder unknown: the lock file holds {text[:100]!r}"
