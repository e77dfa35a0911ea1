"""Where training metrics go: a JSONL file, TensorBoard event files and a progress line.

Only process 0 writes, so a multi-host run produces one log. The JSONL file is the machine-readable record
(`metrics.jsonl`, one object per log step, appended across resumptions); TensorBoard reads `tensorboard/`.
A resumed run first drops the rows of the steps it is about to redo (those after the restored checkpoint;
the file is rewritten atomically), so every step appears once in `metrics.jsonl`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping

import jax

from idfer_jax.train.checkpoint import workdir_error


def drop_rows_after(path: str, step: int) -> int:
    """Removes the rows of steps after `step` from a metrics.jsonl (atomically); returns how many.

    A resumed run redoes the steps after its checkpoint and logs them again. Unreadable lines (a row cut
    by a kill) are dropped too.
    """
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
            keep = isinstance(row, dict) and int(row.get("step", 0)) <= step
        except (ValueError, TypeError):
            keep = False
        if keep:
            kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) == len(lines):
        return 0
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(lines) - len(kept)


class MetricWriter:
    """Appends to `workdir/metrics.jsonl` and TensorBoard. `resume_step`: the step the run starts after;
    rows logged after it by an earlier attempt are dropped first (each step is then logged once)."""

    def __init__(self, workdir: str, *, enabled: bool | None = None, resume_step: int | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if self.enabled:
            self._path = os.path.join(workdir, "metrics.jsonl")
            try:
                os.makedirs(workdir, exist_ok=True)
                if resume_step is not None:
                    drop_rows_after(self._path, resume_step)
                self._jsonl = open(self._path, "a")  # noqa: SIM115
            except OSError as e:
                raise workdir_error(e, self._path, "write the metrics log") from e
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float], *, split: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, "time": time.time()}
        record.update({k: float(v) for k, v in scalars.items()})
        try:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        except OSError as e:
            raise workdir_error(e, self._path, "write the metrics log") from e
        for k, v in scalars.items():
            self._tb.add_scalar(f"{split}/{k}", float(v), int(step))
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            with contextlib.suppress(OSError):  # a full disk was reported where it happened
                self._jsonl.close()
            self._tb.close()


class Progress:
    """Measures throughput between log steps (first step excluded: it includes compilation)."""

    def __init__(self, total_steps: int, batch_size: int, start_step: int):
        self.total = int(total_steps)
        self.batch_size = int(batch_size)
        self._last_step = int(start_step)
        self._last_time = None
        self.steps_per_sec = float("nan")

    def mark_compiled(self, step: int) -> None:
        """Starts the clock after the first (compiling) step."""
        self._last_step, self._last_time = int(step), time.perf_counter()

    def line(self, step: int, scalars: Mapping[str, float]) -> str:
        now = time.perf_counter()
        if self._last_time is not None and step > self._last_step:
            self.steps_per_sec = (step - self._last_step) / (now - self._last_time)
        self._last_step, self._last_time = int(step), now
        rate = self.steps_per_sec
        eta = (self.total - step) / rate if rate == rate and rate > 0 else float("nan")
        shown = " | ".join(f"{k} {v:.4f}" for k, v in scalars.items() if k.count("/") <= 1)
        return (
            f"step {step}/{self.total} | {rate:.2f} steps/s | {rate * self.batch_size:.1f} img/s | "
            f"ETA {_duration(eta)} | {shown}"
        )


def _duration(seconds: float) -> str:
    if seconds != seconds:
        return "--"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
