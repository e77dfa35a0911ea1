"""Train-step throughput of any recipe: compile time and images/s, with in-memory batches (the step alone)
and with the real grain pipeline feeding it (so an input-bound run shows), plus the pipeline alone.

Everything runs through the trainer's own pieces (`Trainer`, `make_train_step`, `to_global`), so what is
measured is what `idfer train` runs. Timings block on the step's outputs; the first call (compilation)
is timed apart from the steady state.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from idfer_jax.data import pipeline
from idfer_jax.train import trainer as trainer_lib

INPUTS = ("memory", "pipeline")


@dataclasses.dataclass
class Measurement:
    recipe: str
    input: str  # memory | pipeline | pipeline_only (the loader without a step)
    dtype: str
    devices: int
    batch_size: int
    image_size: int
    compile_s: float
    step_s: float
    images_per_s: float
    framework: str = "jax"

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def random_batch(trainer: trainer_lib.Trainer, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A global batch with every key the recipe reads, drawn at random (labels in range)."""
    rng = np.random.default_rng(seed)
    spec = trainer.dataset.spec
    template = trainer.sample_batch()
    batch = {}
    for key, value in template.items():
        shape = (batch_size, *value.shape[1:])
        if key in ("expression", "partner_expression"):
            batch[key] = rng.integers(0, spec.num_classes, shape).astype(np.int32)
        elif key == "subject":
            subjects = np.asarray(spec.train_subjects or (0,), np.int32)
            batch[key] = subjects[rng.integers(0, len(subjects), shape)]
        elif key == "partner_mask":
            batch[key] = np.ones(shape, np.float32)
        elif value.ndim == 4:
            batch[key] = rng.uniform(-1, 1, shape).astype(np.float32)
        else:  # pose angles in degrees
            batch[key] = rng.uniform(-30, 30, shape).astype(np.float32)
    return batch


def _local(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n, i = jax.process_count(), jax.process_index()
    size = len(next(iter(batch.values()))) // n
    return {k: v[i * size:(i + 1) * size] for k, v in batch.items()}


def measure(config, build_method, *, input: str, steps: int, devices=None,
            trainer: trainer_lib.Trainer | None = None) -> Measurement:
    """Times `steps` train steps of `config`'s recipe after one compiling step."""
    if input not in INPUTS:
        raise ValueError(f"Unknown bench input {input!r}; use one of {INPUTS}.")
    trainer = trainer or trainer_lib.Trainer(config, build_method, devices)
    batch_size = int(config.train.batch_size)
    state = trainer.initial_state()
    step_fn = trainer.jitted_train_step()
    if input == "memory":
        fixed = trainer_lib.to_global(_local(random_batch(trainer, batch_size)), trainer.batch_sharding)

        def next_batch():
            return fixed
    else:
        iterator = iter(pipeline.train_loader(trainer.dataset, config.data, global_batch_size=batch_size,
                                              seed=config.seed))

        def next_batch():
            return trainer_lib.to_global(next(iterator), trainer.batch_sharding)

    start = time.perf_counter()
    state, metrics = step_fn(state, next_batch())
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, next_batch())
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - start
    return Measurement(
        recipe=config.method, input=input, dtype=str(config.dtype), devices=trainer.mesh.size,
        batch_size=batch_size, image_size=int(trainer.dataset.spec.image_shape[0]), compile_s=compile_s,
        step_s=seconds / steps, images_per_s=batch_size * steps / seconds,
    )


def measure_pipeline(config, dataset: pipeline.Dataset, *, batches: int) -> Measurement:
    """Images/s the grain loader alone delivers to this process (decode, augment, batch)."""
    batch_size = int(config.train.batch_size)
    iterator = iter(pipeline.train_loader(dataset, config.data, global_batch_size=batch_size,
                                          seed=config.seed))
    start = time.perf_counter()
    next(iterator)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    local = batch_size // jax.process_count()
    return Measurement(
        recipe=config.method, input="pipeline_only", dtype="-", devices=0, batch_size=batch_size,
        image_size=int(dataset.spec.image_shape[0]), compile_s=first_s, step_s=seconds / batches,
        images_per_s=local * batches / seconds * jax.process_count(),
    )
