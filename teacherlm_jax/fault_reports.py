"""What a run prints about a fault of the machine (a full disk, a failing store) besides the one line the CLI
says about it: nothing, unless --verbose. Orbax logs the traceback from each writing thread, TensorBoard's
writer thread dies with one, tensorstore's callbacks for the writes still in flight report dozens of
unraisable `Event loop is closed` errors, gcsfs logs each request it gave up on; `quiet_fault_reports` leaves
those out, and nothing else.
"""
from __future__ import annotations

import logging
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

from teacherlm_jax.errors import fault_message
from teacherlm_jax.paths import transient


class _NoFaultTracebacks(logging.Filter):
    """Drops log records that carry a machine fault's traceback, or its aftermath's (Orbax logs one per
    writing thread), or a store's passing error (gcsfs logs each it gives up on; `paths.retrying` retries it
    and says it in a line): the error line says the cause once."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or not (_aftermath(error) or transient(error) or fault_message(error))


# Errors that only follow a machine fault: a full disk aborts Orbax's save, and tensorstore's callbacks for
# the writes still in flight then find Orbax's event loop or executor shut (reported as unraisable, dozens).
AFTERMATH = ("Event loop is closed", "cannot schedule new futures after shutdown")


def _aftermath(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and str(error) in AFTERMATH


def _quiet_faults(hook: Callable[..., None], error_of: Callable[..., BaseException | None]) -> Callable[..., None]:
    """`hook` (threading's excepthook, sys's unraisablehook), silent for machine faults and their aftermath: a
    thread that dies of a full disk (TensorBoard's writer) would print a traceback; the job's own next write
    fails and says it in one line."""
    if getattr(hook, "quiet_faults", False):
        return hook

    def hook_unless_fault(*args: Any) -> None:
        error = error_of(*args)
        if error is None or not (_aftermath(error) or fault_message(error)):
            hook(*args)

    hook_unless_fault.quiet_faults = True
    return hook_unless_fault


def quiet_fault_reports() -> None:
    """Machine faults' tracebacks left out of the log and of threads' reports from now on (once: `cli.guard`
    may run again)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _NoFaultTracebacks) for f in handler.filters):
            handler.addFilter(_NoFaultTracebacks())
    threading.excepthook = _quiet_faults(threading.excepthook, lambda args: args.exc_value)
    sys.unraisablehook = _quiet_faults(sys.unraisablehook, lambda args: args.exc_value)


def quiet_exit_after_fault() -> None:
    """An aborted save's coroutines are dropped as the interpreter exits after a fault: one warning each."""
    warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
