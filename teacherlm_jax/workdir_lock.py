"""One run per workdir (and per job process): two would delete each other's temporary files (augment) or
collide inside Orbax and duplicate metrics rows (train). The second refuses at start, naming the holder.

The lock is an exclusive `flock` on WORKDIR/.lock-<name>, a file holding the holder's host, pid and start
time. The kernel drops the lock when its holder dies, however (SIGKILL included), so a killed run's lock
never blocks the rerun: the rerun takes it over and logs whose it was. A run that ends releases it and
empties the file.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


class WorkdirLocked(RuntimeError):
    """Another live run holds the workdir's lock."""


@contextlib.contextmanager
def workdir_lock(workdir: str | Path, name: str) -> Iterator[Path]:
    """Holds WORKDIR/.lock-<name> for the block; raises `WorkdirLocked` naming the holder when another
    process holds it. `name` tells jobs (and process indices) that may share a workdir apart."""
    path = Path(workdir) / f".lock-{name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirLocked(f"{path}: {workdir} is in use by another run ({_describe(_read(fd))}); wait for "
                                f"it to end or stop it, or use another workdir") from None
        previous = _read(fd)
        if previous:
            log.warning("%s: taking over the lock of a run that did not release it (%s; it no longer holds it: "
                        "killed?)", path, _describe(previous))
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # released: the next run finds no holder to report
    finally:
        os.close(fd)  # drops the flock


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
