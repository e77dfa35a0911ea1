"""Recipes: one module per published method, each exposing `build(config, data_spec) -> Method`."""

from __future__ import annotations

import difflib
import importlib

from idfer_jax.data.pipeline import DataSpec
from idfer_jax.train.interface import Method

METHODS = {
    "baseline": "idfer_jax.methods.baseline",
    "idennet": "idfer_jax.methods.idennet",
    "phanet": "idfer_jax.methods.phanet",
    "halawa": "idfer_jax.methods.halawa",
    "fersnet": "idfer_jax.methods.fersnet",
    "ipdfer": "idfer_jax.methods.ipdfer",
}


def build(config, data_spec: DataSpec) -> Method:
    """The Method named by `config.method`, built for the data of this run."""
    name = config.method
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown method {name!r}.{hint} Known methods: {', '.join(sorted(METHODS))}."
        )
    return importlib.import_module(METHODS[name]).build(config, data_spec)
