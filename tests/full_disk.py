"""A full disk for tests, without mounting one: Python's file writes under a folder fail with ENOSPC once a byte
budget is spent, as on a small filesystem. Writes by native code (tensorstore, safetensors) are not counted;
Orbax's own metadata files and every file the project writes go through Python.

    python tests/full_disk.py FOLDER BYTES -m teacherlm_jax.main --config ... --workdir FOLDER/run
"""
from __future__ import annotations

import builtins
import errno
import io
import os
import runpy
import sys
from collections.abc import Callable
from typing import Any

_open = io.open


class _Budget:
    def __init__(self, folder: str, budget: int):
        self.folder, self.left = os.path.abspath(folder) + os.sep, budget

    def spend(self, path: str, size: int) -> None:
        if size > self.left:
            self.left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        self.left -= size


class _CountedFile:
    """A file object whose writes spend the budget; everything else is the file's own."""

    def __init__(self, file: Any, path: str, budget: _Budget):
        self._file, self._path, self._budget = file, path, budget

    def write(self, data):
        self._budget.spend(self._path, len(data.encode() if isinstance(data, str) else data))
        return self._file.write(data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def __iter__(self):
        return iter(self._file)

    def __getattr__(self, name: str):
        return getattr(self._file, name)


def counted_open(folder: str, budget: int) -> Callable[..., Any]:
    """`open` whose writes under `folder` share `budget` bytes, then fail with ENOSPC."""
    state = _Budget(folder, budget)

    def open_counted(file, mode="r", *args, **kwargs):
        handle = _open(file, mode, *args, **kwargs)
        path = os.path.abspath(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else ""
        if any(c in mode for c in "wax+") and path.startswith(state.folder):
            return _CountedFile(handle, path, state)
        return handle

    return open_counted


def install(folder: str, budget: int, monkeypatch=None) -> None:
    """From now on, this process's Python writes under `folder` share `budget` bytes (until `monkeypatch`
    undoes it, when given)."""
    opener = counted_open(folder, budget)
    for module in (builtins, io):
        if monkeypatch is None:
            setattr(module, "open", opener)
        else:
            monkeypatch.setattr(module, "open", opener)


if __name__ == "__main__":
    folder, budget, flag, module, *args = sys.argv[1:]
    assert flag == "-m", "usage: full_disk.py FOLDER BYTES -m MODULE ARGS..."
    install(folder, int(budget))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
