"""Orbax checkpoints of a run: params, optimizer state, step and each process's data position.

Layout: WORKDIR/checkpoints/<step>/{params, opt_state, data}. Saves are asynchronous and collective
(every process calls `save`; orbax writes each array shard from the process that holds it), the last
`keep` are kept, and a half-written step is never restored (orbax finalizes a step by renaming it). A step
that cannot be read (damaged files) is passed over for the one before it and set aside in
WORKDIR/damaged_checkpoints/ (`restore_latest`).
The step and data position fix everything else: parameters are initialised from `config.seed`, and
the trainer draws no other randomness, so a restored run continues exactly.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from teacherlm_jax.intact_checkpoint import restore_newest_intact
from teacherlm_jax.paths import read_text, workdir_path
from teacherlm_jax.train.step import TrainState

log = logging.getLogger(__name__)
DAMAGED = "damaged_checkpoints"  # WORKDIR/damaged_checkpoints/<step>: steps passed over on resume


class DataStateHandler(ocp.CheckpointHandler):
    """One JSON file per process (`process_{i}-of-{n}.json`): each process reads its own data share."""

    def save(self, directory: epath.Path, args: DataStateSave) -> None:
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        (directory / name).write_text(json.dumps(args.state))

    def restore(self, directory: epath.Path, args: DataStateRestore | None = None) -> dict[str, Any]:
        path = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if not path.exists():
            found = sorted(p.name for p in directory.iterdir())
            raise FileNotFoundError(f"{path}: no data state for this process (found {found}); a run must resume "
                                    f"with the same number of processes")
        return json.loads(read_text(path))


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    state: dict[str, Any]


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass


class Checkpointer:
    """Saves every `every` steps (and on demand), keeps the last `keep`, restores the newest readable one."""

    def __init__(self, workdir: str | os.PathLike, *, every: int, keep: int, use_async: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=use_async)
        self.every = every
        self.workdir = workdir_path(workdir)
        self.manager = ocp.CheckpointManager(self.workdir / "checkpoints", options=options,
                                             item_names=("params", "opt_state", "data"))

    def should_save(self, step: int) -> bool:
        """Every `every` steps, whatever else is happening (orbax's own policy may skip a step while
        an earlier save is still writing, which would make runs depend on timing)."""
        return step % self.every == 0

    def save(self, step: int, state: TrainState, data_state: dict[str, Any]) -> bool:
        """Starts an asynchronous save of `state` (after `step` steps) and this process's data position."""
        args = ocp.args.Composite(params=ocp.args.StandardSave(state.params),
                                  opt_state=ocp.args.StandardSave(state.opt_state),
                                  data=DataStateSave(data_state))
        return self.manager.save(step, args=args, force=True)

    def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """The state at `step` placed like `target` (ShapeDtypeStructs with shardings), and the data state."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target.params), opt_state=ocp.args.StandardRestore(target.opt_state),
            data=DataStateRestore()))
        step_array = jax.device_put(jax.numpy.int32(step), target.step.sharding)
        return TrainState(step_array, restored["params"], restored["opt_state"]), restored["data"]

    def restore_latest(self, target: TrainState) -> tuple[int, TrainState, dict[str, Any]] | None:
        """(step, state, data state) of the newest checkpoint that can be read, None when there is none. Newer
        ones that cannot (warned about, naming them) are moved to WORKDIR/damaged_checkpoints/, so that the run
        saves those steps afresh; CheckpointError when none can be read."""
        found = restore_newest_intact(self.manager.all_steps(), lambda step: self.restore(step, target),
                                      os.fspath(self.workdir / "checkpoints"))
        if found is None:
            return None
        step, (state, data_state) = found
        damaged = [s for s in self.manager.all_steps() if s > step]
        if damaged:
            self._set_aside(damaged)
        return step, state, data_state

    def _set_aside(self, steps: list[int]) -> None:
        """Moves `steps` out of the checkpoints folder (process 0; every process waits for it)."""
        if jax.process_index() == 0:
            aside = self.workdir / DAMAGED
            aside.mkdir(parents=True, exist_ok=True)
            for step in steps:
                target, n = aside / str(step), 1
                while target.exists():
                    target, n = aside / f"{step}.{n}", n + 1
                (self.workdir / "checkpoints" / str(step)).rename(target)
                log.warning("moved the unreadable checkpoint of step %d to %s; delete it once inspected", step, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # no public barrier across processes

            multihost_utils.sync_global_devices("checkpoints set aside")
        self.manager.reload()

    def reached_preemption(self, step: int) -> bool:
        """True on every process at the same step once any got a preemption notice (multi-process)."""
        return self.manager.reached_preemption(step)

    def close(self) -> None:
        """Waits for pending asynchronous saves."""
        self.manager.wait_until_finished()
        self.manager.close()


class SigtermFlag:
    """Set by SIGTERM (a preemption notice) in single-process runs, where no coordination service
    watches for it; the loop then checkpoints and exits cleanly."""

    def __init__(self):
        self.raised = False
        watch = jax.process_count() == 1 and threading.current_thread() is threading.main_thread()
        self._previous = signal.signal(signal.SIGTERM, self._handle) if watch else None

    def _handle(self, signum, frame) -> None:
        log.warning("SIGTERM: saving a checkpoint after this step, then stopping")
        self.raised = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
