"""idfer_jax: facial expression recognition that separates expression from identity and head pose.

Importing the package changes nothing in the process; `idfer_jax.xla_cpu.use_fast_cpu_kernels()` is the
one XLA flag the `idfer` command sets when it starts (call it first in a CPU notebook).
"""
