"""The errors a user can fix, in one home, so every layer raises (and every caller catches) the same types.

Each message starts with where to look: a config key (`config.mesh.data=3: ...`), a data file and line
(`train.jsonl:7: ...`) or a checkpoint file (`.../config.json: ...`). Faults of the machine rather than of the
input (a full disk, a store that keeps failing) are named here too, so the CLI says them in one line.
"""
from __future__ import annotations

import errno
import re
from collections.abc import Iterator

# Python says ENOSPC / EDQUOT; tensorstore (Orbax's arrays) says it in a ValueError's text.
_NO_SPACE = re.compile(r"No space left on device|Disk quota exceeded|os_error_code='?(28|122)\b")
_QUOTED_PATH = re.compile(r'"((?:/|[a-z][a-z0-9+.-]*://)[^"]+)"')
# tensorstore (Orbax's arrays on gs://) once its own retries of a failing store are spent.
_RETRIES_SPENT = re.compile(r"All \d+ retry attempts failed")


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with the config key."""


class DataError(ValueError):
    """A malformed input row; the message starts with `file:line:`."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file and the reason."""


class StorageError(OSError):
    """A cloud object that could not be read or written, after retries; the message names the object."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """`Type: the message's first line`, cut at `limit` characters: an error inside a one-line message."""
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:limit]}"


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def disk_full(error: BaseException) -> str | None:
    """One line for a write that failed on a full disk or quota, naming the path, when `error` or an error
    that caused it is one (Orbax's threads report it wrapped in their own errors); else None."""
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = e.filename
        elif _NO_SPACE.search(str(e)):
            quoted = _QUOTED_PATH.search(str(e))
            where = quoted.group(1) if quoted else None
        else:
            continue
        return (f"{where or 'a write'}: disk full (no space left on device); free space or move the workdir to a "
                f"larger disk, then rerun the same command: it continues from the last complete checkpoint or part")
    return None


def storage_failure(error: BaseException) -> StorageError | None:
    """The StorageError that `error` is or was caused by (tensorstore's spent retries made one), if any."""
    for e in _chain(error):
        if isinstance(e, StorageError):
            return e
        if _RETRIES_SPENT.search(str(e)):
            quoted = _QUOTED_PATH.search(str(e))
            return StorageError(f"{quoted.group(1) if quoted else 'a checkpoint in the store'}: the store kept "
                                f"failing ({one_line(e)}); check its status, then rerun the same command (it "
                                f"continues from the last complete checkpoint)")
    return None


def fault_message(error: BaseException) -> str | None:
    """The one line a person needs for a machine fault (full disk, failing store) behind `error`, else None."""
    storage = storage_failure(error)
    return disk_full(error) or (str(storage) if storage is not None else None)
