"""Shared fixtures: one prepared copy of the tiny `synthetic_faces/smoke` set per test session."""

from __future__ import annotations

import os
import pathlib

import pytest

from idfer_jax.xla_cpu import use_fast_cpu_kernels

# As the `idfer` command does, before any test starts JAX (subprocesses inherit the environment).
use_fast_cpu_kernels()

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _shared_directory(tmp_path_factory, name: str):
    """A directory every pytest-xdist worker of this run shares (one per run without xdist)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    return root / name


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory) -> str:
    """A persistent XLA cache shared by this run's processes (both workers, subprocesses and notebooks):
    the same step compiled in two tests, or two workers, is compiled once."""
    directory = _shared_directory(tmp_path_factory, "jax_cache")
    directory.mkdir(exist_ok=True)
    import jax

    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return str(directory)


@pytest.fixture(scope="session")
def smoke_data_dir(tmp_path_factory, compilation_cache) -> str:
    """The tiny `synthetic_faces/smoke` set, prepared once per run (the first worker builds it while
    the other waits on the lock)."""
    import tensorflow_datasets as tfds
    from filelock import FileLock

    import idfer_jax.data.synthetic_faces  # noqa: F401  (registers the builder)

    directory = _shared_directory(tmp_path_factory, "tfds")
    with FileLock(str(directory) + ".lock"):
        tfds.builder("synthetic_faces/smoke", data_dir=str(directory)).download_and_prepare(
            file_format="array_record"
        )
    return str(directory)


@pytest.fixture
def smoke_config(smoke_data_dir):
    from idfer_jax import api

    config = api.load_config(str(REPO / "configs" / "baseline_synthetic.py") + ":smoke")
    config.data.data_dir = smoke_data_dir
    return config


def subprocess_env(compilation_cache: str, **extra: str) -> dict:
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = compilation_cache
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if "XLA_FLAGS" in extra:  # added to this process's flags (the fast CPU kernels), not instead of them
        extra = {**extra, "XLA_FLAGS": f"{env.get('XLA_FLAGS', '')} {extra['XLA_FLAGS']}".strip()}
    env.update(extra)
    return env
