"""Where training metrics go: a JSONL file, TensorBoard event files and a progress line.

Only process 0 writes, so a multi-host run produces one log. The JSONL file is the machine-readable record
(`metrics.jsonl`, one object per log step, appended across resumptions); TensorBoard reads `tensorboard/`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

import jax


def announce(message: str) -> None:
    """Prints a progress message once per run: on process 0 of a multi-host system."""
    if jax.process_index() == 0:
        print(message, flush=True)


class MetricWriter:
    def __init__(self, workdir: str, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float], *, split: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, "time": time.time()}
        record.update({k: float(v) for k, v in scalars.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for k, v in scalars.items():
            self._tb.add_scalar(f"{split}/{k}", float(v), int(step))
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
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
