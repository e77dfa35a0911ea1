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
    """Adds recipe `name`: a module path ('my_package.my_recipe', imported now), a module, or a
    `build(config, data_spec) -> Method` function. ConfigError for a module without `build` or a path
    that does not import; registering a built-in name again is a ValueError."""
    if name in METHODS and METHODS[name] != recipe and name in BUILT_IN:
        raise ValueError(f"{name!r} is a built-in recipe; register yours under another name.")
    if isinstance(recipe, str):
        recipe = _import_recipe(recipe, f"methods.register({name!r}, {recipe!r})")
    elif isinstance(recipe, types.ModuleType):
        _check_is_recipe(recipe, f"methods.register({name!r}, ...)")
    elif callable(recipe):
        recipe = types.SimpleNamespace(__name__=name, build=recipe)
    else:
        raise ConfigError(f"methods.register({name!r}, ...) takes a module path, a module or a build "
                          f"function; got {type(recipe).__name__}.")
    METHODS[name] = recipe


def module(config):
    """The recipe module named by `config.method`: a registered name, or the import path of a module
    with `build(config, data_spec)` ('my_package.my_recipe': a recipe kept outside this package needs
    no registration). ConfigError naming the known recipes otherwise."""
    name = config.method
    if name not in METHODS and isinstance(name, str) and "." in name:
        return _import_recipe(name, f"config.method={name!r}")
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"Unknown config.method {name!r}.{hint} Known methods (recipes): {', '.join(sorted(METHODS))}; "
            "set --config.method=NAME."
        )
    recipe = METHODS[name]
    return importlib.import_module(recipe) if isinstance(recipe, str) else recipe


def _import_recipe(path: str, where: str):
    if path.startswith(".") or path == __name__:
        raise ConfigError(f"{where}: give the absolute import path of a recipe module (e.g. "
                          f"'my_package.my_recipe'), or a recipe: {', '.join(sorted(METHODS))}.")
    try:
        recipe = importlib.import_module(path)
    except ImportError as e:
        raise ConfigError(
            f"{where} names a module that cannot be imported ({e}). Put its package on the Python path "
            f"(pip install -e, or PYTHONPATH), or use a recipe: {', '.join(sorted(METHODS))}."
        ) from None
    except Exception as e:  # noqa: BLE001  (the recipe module's own code failed: the user's to fix)
        raise ConfigError(f"{where}: importing the module raised {type(e).__name__}: {e}. The error is "
                          "in that module (run `python -c 'import " + path + "'` to see the traceback)."
                          ) from None
    _check_is_recipe(recipe, where)
    return recipe


def _check_is_recipe(recipe: types.ModuleType, where: str) -> None:
    if not callable(getattr(recipe, "build", None)) or recipe.__name__ == __name__:
        location = getattr(recipe, "__file__", None) or recipe.__name__
        raise ConfigError(f"{where}: the module {location} has no build(config, data_spec) -> Method, so "
                          "it is not a recipe.")


def _adversaries_on(config) -> list[str]:
    block = config.get("adversary") or {}
    return [k for k in ("identity", "pose", "replay") if float(block.get(k, 0.0) or 0.0) > 0]


def check_config(config) -> None:
    """The recipe's own check of its `config.model` switches (`check_config(config)`, where it has one),
    so a typo fails when the config is loaded, not after the data is prepared; and the generic switches
    a recipe cannot honour (a recipe built without `common.build_recipe` sets `GENERIC_ADVERSARIES =
    False`), so that no switch is silently ignored."""
    recipe = module(config)
    on = _adversaries_on(config)
    if on and not getattr(recipe, "GENERIC_ADVERSARIES", True):
        raise ConfigError(
            f"config.adversary.{on[0]} > 0 cannot apply to {config.method}: its players are a "
            "generator and a discriminator, and the identity and pose adversaries are built only for "
            "recipes composed by methods.common.build_recipe (baseline, idennet, phanet, halawa). Set "
            f"--config.adversary.{on[0]}=0, or use one of those recipes."
        )
    check = getattr(recipe, "check_config", None)
    if check is not None:
        check(config)


_ADVERSARY_KEYS = {"identity": "subject", "pose": "yaw"}


def build(config, data_spec: DataSpec) -> Method:
    """The Method named by `config.method`, built for the data of this run (its config checked first:
    the Trainer's own validation leaves the recipe's switches to this)."""
    check_config(config)
    method = module(config).build(config, data_spec)
    from idfer_jax.methods import adversaries

    on = [k for k in _adversaries_on(config) if k != "replay"]
    if on and adversaries.settings(config).formulation in adversaries.CLOSED_FORM:
        # A closed-form adversary has no player; its labels' batch key shows that it was built.
        built = all(_ADVERSARY_KEYS[name] in method.batch_keys for name in on)
    else:
        built = "adversary" in [p.name for p in method.players]
    if on and not built:
        # A recipe that does not say so (a registered build function) but ignores the switch.
        raise ConfigError(
            f"config.adversary.{on[0]} > 0, but {config.method} built no adversary player (it is not "
            f"composed by methods.common.build_recipe). Set --config.adversary.{on[0]}=0, or build the "
            "recipe with common.build_recipe."
        )
    _check_evaluations(method)
    return method


def _check_evaluations(method: Method) -> None:
    from idfer_jax.train.evaluate import check_evaluations

    check_evaluations(method)
