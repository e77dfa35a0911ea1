"""Multi-host start-up: every process of a pod slice or GPU cluster runs the same command.

`initialize` calls `jax.distributed.initialize` before anything touches a device. On Cloud TPU pods, Slurm
and Open MPI, JAX finds the coordinator, the number of processes and this process's id itself; elsewhere
they come from the arguments (the CLI's `--coordinator_address`, `--num_processes`, `--process_id`) or the
environment (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`).

After it, `jax.devices()` lists every device of every host: the trainer's mesh spans them, each host's
grain loader reads its slice of every global batch (`pipeline.GlobalBatchSampler`), orbax writes one
checkpoint from all hosts, and only process 0 writes logs, reports and plots.
"""

from __future__ import annotations

import os

import jax

from idfer_jax.errors import UserError

ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # read by jax.distributed itself


class DistributedSetupError(UserError, RuntimeError):
    """The processes could not form one JAX system; the message says what to pass."""


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedSetupError(f"${name}={value!r} is not an integer.") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins this process to the multi-host JAX system (no-op if already joined)."""
    if jax.distributed.is_initialized():
        return
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)
    try:
        jax.distributed.initialize(coordinator_address or None, num_processes, process_id)
    except (ValueError, RuntimeError, TypeError) as e:
        raise DistributedSetupError(
            f"jax.distributed.initialize failed: {e}\n"
            "On a Cloud TPU pod slice run the same command on every host with no other arguments "
            "(`gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...`, see colabs/tpu_pod.md); "
            "Slurm and Open MPI are detected too. Elsewhere give every process "
            "--coordinator_address=HOST:PORT (process 0's host), --num_processes=N and "
            f"--process_id=I (or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID}). "
            "It must run before anything else uses JAX."
        ) from e
    if jax.process_index() == 0:
        print(f"jax.distributed: {jax.process_count()} processes, {jax.device_count()} devices "
              f"({jax.local_device_count()} on this host).", flush=True)
