"""idfer_jax: facial expression recognition that separates expression from identity and head pose."""

from __future__ import annotations

import os


def _use_fast_cpu_kernels() -> None:
    """Routes XLA:CPU's matrix products and reductions through YNNPACK (1.8x on the baseline's train step
    on 2 cores: 430 -> 770 images/s; `idfer bench` measures it). XLA reads the flag when its CPU backend
    starts, so it is set on import, before any computation; it changes nothing on GPU or TPU.

    Only for the jaxlib versions it was measured on: an XLA that does not know a flag aborts the process.
    `IDFER_JAX_XLA_CPU_FLAGS=0` leaves XLA_FLAGS alone.
    """
    flag = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"
    current = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("IDFER_JAX_XLA_CPU_FLAGS", "1") == "0" or "ynn_fusion_type" in current:
        return
    try:
        from jaxlib import version
    except ImportError:
        return
    if version.__version__.startswith("0.10."):
        os.environ["XLA_FLAGS"] = f"{current} {flag}".strip()


_use_fast_cpu_kernels()
