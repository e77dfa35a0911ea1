"""Recipes: one module per published method, each exposing `build(config, data_spec) -> Method`.

`METHODS` is the one registry of recipe names (the CLI, `idfer bench`, config validation and the tests
read it). A new recipe is a module with `build` (and, optionally, `check_config(config)` and
`GENERIC_ADVERSARIES = False`) plus its config files; `register(name, module_or_build)` adds it without
editing this file, e.g. from a notebook, after which `api.train` / `api.evaluate` / `idfer` run it by
`config.method = name` like any other.
"""

from __future__ import annotations

import difflib
import importlib
import types
from collections.abc import Callable

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
BUILT_IN = tuple(METHODS)  # the recipes this package ships, in order


def register(name: str, recipe: str | types.ModuleType | Callable[..., Method]) -> None:
    """Adds recipe `name`: a module path ('my_package.my_recipe'), a module, or a `build(config,
    data_spec) -> Method` function. Registering a built-in name again is a ValueError."""
    if name in METHODS and METHODS[name] != recipe and name in BUILT_IN:
        raise ValueError(f"{name!r} is a built-in recipe; register yours under another name.")
    if callable(recipe) and not isinstance(recipe, types.ModuleType):
        recipe = types.SimpleNamespace(__name__=name, build=recipe)
    METHODS[name] = recipe


def module(config):
    """The recipe module named by `config.method`: a registered name, or the import path of a module
    with `build(config, data_spec)` ('my_package.my_recipe': a recipe kept outside this package needs
    no registration). ConfigError naming the known recipes otherwise."""
    name = config.method
    if name not in METHODS and isinstance(name, str) and "." in name:
        return _import_recipe(name)
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"Unknown config.method {name!r}.{hint} Known methods (recipes): {', '.join(sorted(METHODS))}; "
            "set --config.method=NAME."
        )
    recipe = METHODS[name]
    return importlib.import_module(recipe) if isinstance(recipe, str) else recipe


def _import_recipe(path: str):
    try:
        recipe = importlib.import_module(path)
    except ImportError as e:
        raise ConfigError(
            f"config.method={path!r} names a module that cannot be imported ({e}). Put its package on "
            f"the Python path (pip install -e, or PYTHONPATH), or use a recipe: {', '.join(sorted(METHODS))}."
        ) from None
    if not callable(getattr(recipe, "build", None)):
        raise ConfigError(f"config.method={path!r}: the module {recipe.__file__} has no "
                          "build(config, data_spec) -> Method, so it is not a recipe.")
    return recipe


def check_config(config) -> None:
    """The recipe's own check of its `config.model` switches (`check_config(config)`, where it has one),
    so a typo fails when the config is loaded, not after the data is prepared; and the generic switches
    a recipe cannot honour (a recipe built without `common.build_recipe` sets `GENERIC_ADVERSARIES =
    False`), so that no switch is silently ignored."""
    recipe = module(config)
    if not getattr(recipe, "GENERIC_ADVERSARIES", True):
        on = [k for k in ("identity", "pose") if float(config.adversary.get(k, 0.0) or 0.0) > 0]
        if on:
            raise ConfigError(
                f"config.adversary.{on[0]} > 0 cannot apply to {config.method}: its players are a "
                "generator and a discriminator, and the identity and pose adversaries are built only for "
                "recipes composed by methods.common.build_recipe (baseline, idennet, phanet, halawa). Set "
                f"--config.adversary.{on[0]}=0, or use one of those recipes."
            )
    check = getattr(recipe, "check_config", None)
    if check is not None:
        check(config)


def build(config, data_spec: DataSpec) -> Method:
    """The Method named by `config.method`, built for the data of this run (its config checked first:
    the Trainer's own validation leaves the recipe's switches to this)."""
    check_config(config)
    return module(config).build(config, data_spec)
