"""Training metrics: WORKDIR/metrics.jsonl, TensorBoard events, a progress bar or log lines, a
loss-curve PNG, and the MFU estimate. `next_token_accuracy` is the share of target tokens the model's argmax
predicts (not a task's answer accuracy, which the eval job measures). Only process 0 writes; others get a writer that does nothing.
WORKDIR may be a cloud URL (`teacherlm_jax.paths`)."""
from __future__ import annotations

import io
import json
import logging
import os
import time

import jax
from etils import epath

from teacherlm_jax import report_json
from teacherlm_jax.console import count, duration, terminal_bar
from teacherlm_jax.errors import DataError
from teacherlm_jax.figures import pyplot
from teacherlm_jax.paths import append_text, is_url, read_text, url_scheme, workdir_path, write_atomic, write_figure

log = logging.getLogger(__name__)

# Dense bfloat16 peak FLOP/s per chip, matched on the start of `device.device_kind`.
PEAK_FLOPS = (
    ("TPU v6 lite", 918e12), ("TPU v5 lite", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12),
    ("TPU v4", 275e12), ("TPU v3", 123e12), ("NVIDIA H200", 989e12), ("NVIDIA H100", 989e12),
    ("NVIDIA GH200", 989e12), ("NVIDIA A100", 312e12), ("NVIDIA L4", 121e12),
)


def peak_flops(device: jax.Device) -> float | None:
    """The chip's bf16 peak, or None when unknown (CPU, unlisted chips): then no MFU is reported."""
    return next((flops for kind, flops in PEAK_FLOPS if device.device_kind.startswith(kind)), None)


def flops_per_token(num_params: int, n_layer: int, hidden_size: int, seq_len: int) -> float:
    """Training FLOPs per token (PaLM, appendix B): 6N for the weights plus 12*layers*hidden*seq for attention."""
    return 6.0 * num_params + 12.0 * n_layer * hidden_size * seq_len


class StepTimer:
    """Step time, tokens/s and MFU over the steps since the last `mark`; the first step (which
    compiles) is left out by marking after it."""

    def __init__(self, tokens_per_step: int, flops_per_step: float):
        peak = peak_flops(jax.devices()[0])
        self.tokens_per_step, self.flops_per_step = tokens_per_step, flops_per_step
        self.peak = None if peak is None else peak * jax.device_count()
        self.since: tuple[float, int] | None = None

    def mark(self, step: int) -> None:
        self.since = (time.perf_counter(), step)

    def measure(self, step: int) -> dict[str, float]:
        if self.since is None or step <= self.since[1]:
            return {}
        step_time = (time.perf_counter() - self.since[0]) / (step - self.since[1])
        out = {"step_time_s": step_time, "tokens_per_s": self.tokens_per_step / step_time}
        if self.peak is not None:
            out["mfu"] = self.flops_per_step / step_time / self.peak
        return out


def truncate_jsonl(path: epath.Path, last_step: int) -> None:
    """Keeps the records of steps <= last_step: a resumed run rewrites the steps after its checkpoint. A last
    line cut short (a kill mid-write) is dropped with a warning; any other line that does not read is an error."""
    if not path.exists():
        return
    lines = [line for line in read_text(path).splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            if number < len(lines):
                raise DataError(f"{path}:{number}", f"not a metrics record ({e}); remove the line") from None
            log.warning("%s:%d: a line cut short (%s), dropped: its step is trained again", path, number, e)
            continue
        if step <= last_step:
            kept.append(line)
    write_atomic(path, "".join(line + "\n" for line in kept))


class ObjectEventFile:
    """tensorboardX's event file on an object store, through epath (tensorboardX's own gs:// writer needs
    google-cloud-storage and its own credentials; this uses the workdir's filesystem): events gather in
    memory and each flush writes the whole object, as object stores cannot append."""

    def __init__(self, path: str):
        self.path, self.buffer = epath.Path(path), io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        write_atomic(self.path, self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _ObjectEventFiles:
    """tensorboardX's writer factory interface for one URL scheme."""

    def open(self, path: str) -> ObjectEventFile:
        return ObjectEventFile(path)

    def directory_check(self, path: str) -> None:
        """Object stores need no folders."""


def summary_writer(logdir: epath.Path):
    """A tensorboardX SummaryWriter for `logdir`, local or a cloud URL."""
    from tensorboardX import SummaryWriter, record_writer

    if is_url(logdir):
        record_writer.register_writer_factory(url_scheme(logdir), _ObjectEventFiles())
    return SummaryWriter(os.fspath(logdir))


HEADLINE = (("loss", "loss"), ("next_token_accuracy", "next-token accuracy"), ("eval_loss", "eval loss"),
            ("eval_next_token_accuracy", "eval next-token accuracy"))


def headline(metrics: dict[str, float]) -> dict[str, str]:
    """The losses and next-token accuracies in `metrics`, by their console names: {"loss": "2.314", ...}."""
    return {name: f"{100 * metrics[key]:.1f}%" if key.endswith("accuracy") else f"{metrics[key]:.4g}"
            for key, name in HEADLINE if key in metrics}


def progress_figures(step: int, total: int, metrics: dict[str, float]) -> str:
    """`loss 2.314  next-token accuracy 41.2%  3.1 steps/s  12.4k tokens/s  ETA 4m43s` (and eval figures, MFU):
    the rates are the timer's, over the last logging window without the compile or evals, and ETA follows them."""
    parts = [f"{name} {value}" for name, value in headline(metrics).items()]
    if "step_time_s" in metrics:
        parts += [f"{count(1 / metrics['step_time_s'])} steps/s", f"{count(metrics['tokens_per_s'])} tokens/s"]
        if "mfu" in metrics:
            parts.append(f"MFU {100 * metrics['mfu']:.1f}%")
        parts.append(f"ETA {duration((total - step) * metrics['step_time_s'])}")
    return "  ".join(parts)


def progress_line(step: int, total: int, metrics: dict[str, float]) -> str:
    """`step 120/1000 (12%)  loss 2.314  ...`: a log line of `progress_figures`."""
    return f"step {step}/{total} ({100 * step // total}%)  {progress_figures(step, total, metrics)}"


class MetricsWriter:
    """`write(step, metrics)` appends to metrics.jsonl, logs to TensorBoard (tags are the keys), and shows the
    progress: a bar with `progress_figures` on a terminal, else a `progress_line` log line."""

    def __init__(self, workdir: str | os.PathLike, *, start_step: int, total_steps: int):
        self.enabled = jax.process_index() == 0
        self.path = workdir_path(workdir) / "metrics.jsonl"
        self.total = total_steps
        self.tb = self.bar = None
        if not self.enabled:
            return
        truncate_jsonl(self.path, start_step)
        self.tb = summary_writer(workdir_path(workdir) / "tensorboard")
        self.bar = terminal_bar(total_steps, initial=start_step, desc="train", unit="step")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        append_text(self.path, report_json.dumps(record) + "\n")
        for key, value in metrics.items():
            self.tb.add_scalar(key, value, step)
        self.tb.flush()
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(progress_figures(step, self.total, metrics))
        else:
            log.info("%s", progress_line(step, self.total, metrics))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()


def plot_loss_curve(workdir: str | os.PathLike) -> epath.Path | None:
    """WORKDIR/loss_curve.png from metrics.jsonl (train and eval loss by step); process 0 only."""
    path = workdir_path(workdir) / "metrics.jsonl"
    if jax.process_index() != 0 or not path.exists():
        return None
    plt = pyplot()

    records = [json.loads(line) for line in read_text(path).splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss", "eval_loss"):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points), label=key, marker="." if key == "eval_loss" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    out = path.with_name("loss_curve.png")
    write_figure(fig, out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out
