"""The XLA:CPU flag that makes training on a CPU fast, set where a process starts.

`idfer` (every subcommand, `bench` included) calls `use_fast_cpu_kernels()` before JAX starts; so do the
test suite (`tests/conftest.py`). A Python session or notebook that trains on the CPU calls it first,
before any JAX computation: XLA reads `XLA_FLAGS` once, when its CPU backend starts, so a later call
changes nothing. Importing `idfer_jax` never touches the process's environment.
"""

from __future__ import annotations

import os

# Routes XLA:CPU's matrix products and reductions through YNNPACK (1.8x on the baseline's train step on
# 2 cores: 430 -> 770 images/s; `idfer bench` measures it). It changes nothing on GPU or TPU.
FAST_CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"


def use_fast_cpu_kernels() -> bool:
    """Adds FAST_CPU_FLAG to `XLA_FLAGS` (returns whether it is now set).

    Only for the jaxlib versions it was measured on (0.10.x): an XLA that does not know a flag aborts the
    process. `IDFER_JAX_XLA_CPU_FLAGS=0` leaves XLA_FLAGS alone; a flag already there is kept as given.
    """
    current = os.environ.get("XLA_FLAGS", "")
    if "ynn_fusion_type" in current:
        return True
    if os.environ.get("IDFER_JAX_XLA_CPU_FLAGS", "1") == "0":
        return False
    try:
        from jaxlib import version
    except ImportError:
        return False
    if not version.__version__.startswith("0.10."):
        return False
    os.environ["XLA_FLAGS"] = f"{current} {FAST_CPU_FLAG}".strip()
    return True
