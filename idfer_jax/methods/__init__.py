"""Recipes: one module per published method, each exposing `build(config, data_spec) -> Method`."""

from __future__ import annotations

import difflib
import importlib

from idfer_jax.configuration import ConfigError
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


def module(config):
    """The recipe module named by `config.method` (ConfigError naming the known recipes otherwise)."""
    name = config.method
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"Unknown config.method {name!r}.{hint} Known methods (recipes): {', '.join(sorted(METHODS))}; "
            "set --config.method=NAME."
        )
    return importlib.import_module(METHODS[name])


def check_config(config) -> None:
    """The recipe's own check of its `config.model` switches (`check_config(config)`, where it has one),
    so a typo fails when the config is loaded, not after the data is prepared."""
    check = getattr(module(config), "check_config", None)
    if check is not None:
        check(config)


def build(config, data_spec: DataSpec) -> Method:
    """The Method named by `config.method`, built for the data of this run."""
    return module(config).build(config, data_spec)
