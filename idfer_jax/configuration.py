"""Config files (ml_collections `get_config(arg)`) and the check of `--config.a.b=value` override keys.

Parsing and applying overrides is absl's `config_flags` (with `lock_config=True`), but it reports a
misspelled key as a bare unknown-flag error. Users misspell keys all the time, so override keys are
checked first and the error names the key and the nearest valid one.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from collections.abc import Sequence

import ml_collections

from idfer_jax.errors import UserError


class ConfigError(UserError, ValueError):
    """An unknown config key or a config file that cannot be loaded."""


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        path = f"{prefix}{k}"
        keys.append(path)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(flat_keys(v, path + "."))
    return keys


def check_key(config: ml_collections.ConfigDict, dotted: str) -> None:
    """Raises ConfigError naming `dotted` and the nearest valid key when it is not in `config`."""
    keys = flat_keys(config)
    if dotted in keys:
        return
    nearest = difflib.get_close_matches(dotted, keys, n=1, cutoff=0.0)
    hint = f" The nearest valid key is 'config.{nearest[0]}'." if nearest else ""
    raise ConfigError(f"Unknown config key 'config.{dotted}'.{hint}")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py[:arg]` -> the file's `get_config(arg)`, locked against new keys."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise ConfigError(f"Config file {path} does not exist (from --config={spec}).")
    module_spec = importlib.util.spec_from_file_location("idfer_config_file", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    return config


def check_override_flags(argv: Sequence[str], flag_name: str = "config") -> None:
    """Checks every `--config.KEY=...` in argv against the config file that `--config=` names."""
    prefix = f"--{flag_name}."
    overrides = [a[len(prefix):].split("=", 1)[0] for a in argv if a.startswith(prefix)]
    if not overrides:
        return
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag_name}=")), None)
    if spec is None:
        raise ConfigError(f"--{flag_name}.KEY overrides need a config file: --{flag_name}=FILE.")
    config = load_config_file(spec)
    for key in overrides:
        check_key(config, key)
