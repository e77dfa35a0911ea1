"""Config files (ml_collections `get_config(arg)`) and the check of `--config.a.b=value` override keys.

Parsing and applying overrides is absl's `config_flags` (with `lock_config=True`), but it reports a
misspelled key as a bare unknown-flag error. Users misspell keys all the time, so override keys are
checked first and the error names the key and the nearest valid one.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import math
import os
import traceback
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
    """`path/to/config.py[:arg]` -> the file's `get_config(arg)`, locked against new keys.

    Every way a config file can fail to load (missing, a directory, not Python, a syntax error, no
    `get_config`, an argument it does not take or rejects) is a ConfigError naming the file and the fix.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"A config spec is a path string such as 'configs/baseline_synthetic.py:smoke'; "
                        f"got {type(spec).__name__}.")
    spec = os.fspath(spec)
    path, _, arg = spec.partition(":")
    where = f"--config={spec}"
    if not path:
        raise ConfigError(f"No config file given ({where}); pass one such as "
                          "--config=configs/baseline_synthetic.py.")
    if not os.path.exists(path):
        raise ConfigError(f"Config file {path} does not exist (from {where}).{_nearest_file(path)} "
                          "Config files are the .py files in configs/.")
    if os.path.isdir(path):
        raise ConfigError(f"Config file {path} is a directory (from {where}); give one .py file in it, "
                          "e.g. configs/baseline_synthetic.py.")
    if not path.endswith(".py"):
        raise ConfigError(f"Config file {path} is not a Python file (from {where}); a config is a .py "
                          "file whose get_config() returns an ml_collections.ConfigDict (see configs/).")
    module = _exec_config_file(path, where)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"Config file {path} defines no get_config() function; a config file returns its "
                          "ConfigDict from `def get_config(arg=None):` (see configs/baseline_synthetic.py).")
    if arg and not _takes_an_argument(get_config):
        raise ConfigError(f"Config file {path}: get_config() takes no argument, so ':{arg}' cannot be "
                          f"passed; use --config={path}.")
    try:
        config = get_config(arg) if arg else get_config()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001  (the user's config code: say where, not a traceback)
        what = f"get_config({arg!r})" if arg else "get_config()"
        hint = (f" If ':{arg}' is not an argument this file takes, pass one it does (or none)."
                if arg and isinstance(e, (ValueError, KeyError)) else "")
        raise ConfigError(f"Config file {path}: {what} failed{_line_in(path, e)}: {type(e).__name__}: "
                          f"{e} (from {where}).{hint}") from e
    if isinstance(config, ml_collections.FrozenConfigDict):
        config = config.as_configdict()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"Config file {path}: get_config() returned {type(config).__name__}, not an "
                          "ml_collections.ConfigDict" + ("; did you forget `return config`?" if config is None
                                                         else "; build it with idfer_jax.config_defaults.run "
                                                         "(see configs/baseline_synthetic.py)."))
    config.lock()
    return config


def _exec_config_file(path: str, where: str):
    module_spec = importlib.util.spec_from_file_location("idfer_config_file", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"Config file {path} has a syntax error at line {e.lineno}: {e.msg} "
                          f"(from {where}). Fix the file; `python -m py_compile {path}` shows the "
                          "spot.") from e
    except OSError as e:
        raise ConfigError(f"Config file {path} cannot be read: {e.strerror or e} (from {where}).") from e
    except Exception as e:  # noqa: BLE001  (the user's config code: say where, not a traceback)
        raise ConfigError(f"Config file {path} failed to load{_line_in(path, e)}: {type(e).__name__}: {e} "
                          f"(from {where}).") from e
    return module


def _takes_an_argument(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


def _line_in(path: str, error: BaseException) -> str:
    """' at line N' of the innermost frame of `error`'s traceback that is in the config file."""
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if os.path.abspath(frame.filename) == os.path.abspath(path):
            line = frame.lineno
    return f" at line {line}" if line else ""


def _nearest_file(path: str) -> str:
    directory, name = os.path.split(path)
    try:
        siblings = [f for f in os.listdir(directory or ".") if f.endswith(".py")]
    except OSError:
        return ""
    close = difflib.get_close_matches(name, siblings, n=1)
    return f" Did you mean {os.path.join(directory, close[0])}?" if close else ""


def check_override_flags(argv: Sequence[str], flag_name: str = "config") -> None:
    """Checks every `--config.KEY=...` in argv against the config file that `--config=` names."""
    prefix = f"--{flag_name}."
    files = [a for a in argv if a.startswith(f"--{flag_name}=") or a == f"--{flag_name}"]
    if len(files) > 1:
        raise ConfigError(f"--{flag_name}=FILE is given {len(files)} times; give one config file (the "
                          f"overrides --{flag_name}.KEY=VALUE are checked against it).")
    overrides = [a[len(prefix):].split("=", 1)[0] for a in argv if a.startswith(prefix)]
    repeated = sorted({k for k in overrides if overrides.count(k) > 1})
    if repeated:
        # ml_collections would concatenate a repeated tuple override instead of keeping the last one.
        raise ConfigError(f"{', '.join(f'--{flag_name}.{k}' for k in repeated)} given more than once; give "
                          "each override once, with the value you want.")
    if not overrides:
        return
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag_name}=")), None)
    if spec is None and f"--{flag_name}" in argv[:-1]:  # `--config FILE`
        spec = argv[list(argv).index(f"--{flag_name}") + 1]
    if spec is None:
        raise ConfigError(f"--{flag_name}.KEY overrides need a config file: --{flag_name}=FILE.")
    config = load_config_file(spec)
    for key in overrides:
        check_key(config, key)


# --- the one validation pass over a config's values ------------------------------------------------

DTYPES = ("float32", "bfloat16")  # model computation dtypes (`config.dtype`)
BLOCKS = ("data", "model", "optimizer", "train", "eval")  # the blocks every run reads


def validate(config, *, recipes: bool = True) -> None:
    """Raises ConfigError naming the key, its value and the fix for the first value no run could use.

    Runs when a config is loaded by the CLI and at the start of `api.train` / `evaluate` / `crossval` and
    of every Trainer, before anything is prepared or written. The valid names come from the registries
    that use them (recipes, backbones, optimizers, schedules, adversary formulations), never from copies.
    Checks that need the data (batch vs devices, batch vs training set) are the Trainer's.
    `recipes=False` leaves out `config.method` and the recipe's own switches: the Trainer runs any
    method its `build_method` makes (a notebook's own, too), so only the API and the CLI, which build
    from the recipe registry, check them.
    """
    from idfer_jax import methods
    from idfer_jax.data import datasets, pipeline
    from idfer_jax.methods import adversaries
    from idfer_jax.models import backbones, resnet
    from idfer_jax.train import optim

    if not isinstance(config, ml_collections.ConfigDict):
        raise TypeError(f"config must be an ml_collections.ConfigDict; got {type(config).__name__}.")
    missing = [k for k in ("method", *BLOCKS) if k not in config]
    if missing:
        raise ConfigError(f"The config has no {', '.join(repr(k) for k in missing)}; build it with "
                          "idfer_jax.config_defaults.run (see configs/baseline_synthetic.py).")
    if recipes and not (isinstance(config.method, str) and "." in config.method):
        check_choice(config, "method", methods.METHODS, "recipe")  # a module path is checked on import
    check_choice(config, "dtype", DTYPES)
    if "backbone" in config.model:
        check_choice(config, "model.backbone", backbones.BACKBONES)
        _check_fine_tuning(config, backbones)
    if config.model.get("norm"):
        check_choice(config, "model.norm", resnet.NORMS)
    if config.model.get("stem"):  # '' = the backbone preset's own stem
        check_choice(config, "model.stem", resnet.STEMS)
    check_choice(config, "data.partner", pipeline.PARTNER_MODES)
    check_choice(config, "data.test.align", datasets.CROSS_DATASET_ALIGN)
    test = config.data.get("test")
    if not (test is not None and test.get("name")):  # a cross-dataset run has its own split
        check_choice(config, "data.protocol", datasets.PROTOCOLS)
    check_choice(config, "optimizer.name", optim.OPTIMIZERS)
    check_choice(config, "optimizer.schedule", optim.SCHEDULES)
    for key in ("train.batch_size", "train.num_steps", "eval.batch_size", "train.log_every",
                "train.checkpoint_every", "train.keep_checkpoints", "eval.reader_steps"):
        _number(config, key, minimum=1, integer=True)
    _number(config, "optimizer.learning_rate", minimum=0.0, strict=True)
    for key in ("optimizer.weight_decay", "optimizer.grad_clip", "optimizer.momentum"):
        _number(config, key, minimum=0.0)
    _number(config, "optimizer.warmup_steps", minimum=0, integer=True)
    for key in ("optimizer.b1", "optimizer.b2"):
        _number(config, key, minimum=0.0, below=1.0)
    _number(config, "optimizer.milestone_factor", minimum=0.0, strict=True)
    _number(config, "optimizer.backbone_lr_multiplier", minimum=0.0)
    if config.optimizer.get("backbone_lr_multiplier", 1.0) != 1.0 and "backbone" not in config.model:
        raise ConfigError(
            f"config.optimizer.backbone_lr_multiplier={config.optimizer.backbone_lr_multiplier} applies to "
            f"recipes built on config.model.backbone; {config.method!r} has none. Remove it.")
    test = config.data.get("test")
    if test is not None and not test.get("name"):
        stray = [k for k in ("config", "manual_dir", "pattern", "manifest", "class_map") if test.get(k)]
        if stray:
            raise ConfigError(
                f"config.data.test.{stray[0]} is set but config.data.test.name is not: a test set is used "
                "only in a cross-dataset run. Set --config.data.test.name=DATASET (e.g. image_folder) or "
                "remove it.")
    if test is not None and test.get("name") and test.name != "image_folder":
        stray = [k for k in ("pattern", "manifest") if test.get(k)]
        if stray:
            raise ConfigError(
                f"config.data.test.{stray[0]} labels an image_folder test set, but config.data.test.name="
                f"{test.name!r}. Set --config.data.test.name=image_folder or remove it.")
    if "milestones" in config.optimizer:
        optim.check_milestones(config.optimizer.milestones)
    if config.get("adversary") is not None:
        check_choice(config, "adversary.formulation", adversaries.FORMULATIONS)
        for key in ("adversary.identity", "adversary.pose", "adversary.learning_rate"):
            _number(config, key, minimum=0.0)
        _number(config, "adversary.steps", minimum=1, integer=True)
        _number(config, "adversary.hidden", minimum=1, integer=True)
        _number(config, "adversary.depth", minimum=0, integer=True)
        _number(config, "adversary.replay", minimum=0, integer=True)
        replay = _lookup(config, "adversary.replay")
        if (_lookup(config, "adversary.formulation") == "ridge" and replay not in (_ABSENT, None, 0)
                and _lookup(config, "adversary.ridge_kernel") == "rbf"):
            raise ConfigError(
                "config.adversary.ridge_kernel='rbf' applies to the in-batch fit; with config.adversary."
                f"replay={replay} the ridge adversary is fitted linearly on the buffer. Set "
                "--config.adversary.ridge_kernel=linear, or --config.adversary.replay=0 for the rbf fit.")
        check_choice(config, "adversary.ridge_kernel", adversaries.RIDGE_KERNELS)
        alphas = _lookup(config, "adversary.ridge_alphas")
        if alphas is not _ABSENT and (not isinstance(alphas, (tuple, list)) or not alphas or any(
                isinstance(a, bool) or not isinstance(a, (int, float)) or not a > 0 for a in alphas)):
            raise ConfigError(f"config.adversary.ridge_alphas={alphas!r} must be a non-empty tuple of "
                              "positive numbers, e.g. --config.adversary.ridge_alphas=\"(0.1, 1.0, 10.0)\".")
    _number(config, "data.image_size", minimum=1, integer=True)
    for key, below in (("resized_crop_scale", 1.000001), ("grey", 1.000001), ("erasing", 1.000001),
                       ("contrast", 1.000001), ("rotation", 180.000001), ("aspect_ratio", None),
                       ("brightness", None), ("saturation", None)):
        _number(config, f"data.augment.{key}", minimum=0.0, below=below)
    _number(config, "data.validation_fraction", minimum=0.0, below=0.9)
    for key in ("data.crop_padding", "data.worker_count", "data.fold", "data.subjects_per_batch"):
        _number(config, key, minimum=0, integer=True)
    _check_subjects_per_batch(config)
    class_names = _lookup(config, "data.class_names")
    if class_names is not _ABSENT and class_names:
        _check_class_names(tuple(class_names))
    if recipes:
        methods.check_config(config)


def _check_fine_tuning(config, backbones) -> None:
    """config.model.pretrained / input_size / freeze_until against the backbone they apply to."""
    m = config.model
    name = m.backbone
    pretrained = m.get("pretrained", "")
    if not isinstance(pretrained, str):
        raise ConfigError(f"config.model.pretrained={pretrained!r} must be a string: '' (the shipped "
                          "weights), 'none' (random init) or the path of a converted checkpoint.")
    if name not in backbones.PRETRAINED_BACKBONES:
        if pretrained not in ("", "none"):
            raise ConfigError(
                f"config.model.pretrained={pretrained!r}: pretrained weights exist for "
                f"{', '.join(backbones.PRETRAINED_BACKBONES)}, not for {name!r}. Set "
                "--config.model.backbone=facenet (or mini_xception), or leave pretrained ''.")
        if m.get("freeze_until", 0):
            raise ConfigError(
                f"config.model.freeze_until={m.freeze_until}: {name!r} starts from random weights, so "
                f"freezing its stages trains on random features. Freeze a pretrained encoder "
                f"({', '.join(backbones.PRETRAINED_BACKBONES)}), or remove it.")
        if m.get("input_size", 0):
            raise ConfigError(
                f"config.model.input_size={m.input_size} applies to the pretrained backbones "
                f"({', '.join(backbones.PRETRAINED_BACKBONES)}); a ResNet sees data.image_size. Remove it.")
    _number(config, "model.input_size", minimum=0, integer=True)
    if name == "facenet" and 0 < m.get("input_size", 0) < 75:
        raise ConfigError(f"config.model.input_size={m.input_size}: FaceNet needs at least 75 px (0 = its "
                          "own 160). Set --config.model.input_size=96 or more.")
    stages = backbones.num_stages(name)
    freeze = m.get("freeze_until", 0)
    if not (isinstance(freeze, int) and not isinstance(freeze, bool) and -1 <= freeze <= stages):
        raise ConfigError(f"config.model.freeze_until={freeze!r}: {name!r} has {stages} stages; use 0 "
                          f"(train all), 1..{stages} (freeze stages 1..k) or -1 (freeze the whole backbone: "
                          "a linear probe).")


def _check_subjects_per_batch(config) -> None:
    """data.subjects_per_batch = P must split train.batch_size into P equal groups (the subject count of
    the fold is checked by the pipeline, which has the data)."""
    p, batch = _lookup(config, "data.subjects_per_batch"), _lookup(config, "train.batch_size")
    if p == 1:
        raise ConfigError(
            "config.data.subjects_per_batch=1 puts one subject in every batch: nothing in a batch then "
            "tells subjects apart (an identity adversary sees no identity). Use 0 (plain shuffled batches) "
            "or at least 2, e.g. --config.data.subjects_per_batch=16 with batch 64.")
    if p is _ABSENT or batch is _ABSENT or not p or batch % p == 0:
        return
    divisors = [d for d in range(2, batch + 1) if batch % d == 0]
    raise ConfigError(
        f"config.data.subjects_per_batch={p} does not divide config.train.batch_size={batch}: each batch "
        f"holds P subjects x K images. Set --config.train.batch_size to a multiple of {p} (e.g. "
        f"{max(p, batch // p * p)} or {batch // p * p + p}) or --config.data.subjects_per_batch to a "
        f"divisor of {batch} ({', '.join(map(str, divisors))}).")


def _check_class_names(names: tuple) -> None:
    """The run's classes: at least two distinct names (strings: a label that is a number is quoted)."""
    if not all(isinstance(n, str) for n in names):
        quoted = ",".join(repr(str(n)) for n in names)
        raise ConfigError(
            f"config.data.class_names={names!r} holds non-string names; class names are strings, also when "
            f"the labels are numbers: --config.data.class_names=\"({quoted})\" (or map codes to names "
            "with --config.data.class_map=1:surprise,...)."
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"config.data.class_names names {', '.join(map(repr, repeated))} more than once; give each class "
            "once (merge dataset classes with --config.data.class_map=from:to)."
        )
    if len(names) < 2:
        raise ConfigError(
            f"config.data.class_names={names!r} holds {len(names)} class; a classifier needs at least 2. "
            "Add the classes to tell apart, e.g. --config.data.class_names=\"('happiness','sadness')\"."
        )


def _lookup(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


_ABSENT = object()


def check_choice(config, dotted: str, valid, what: str = "") -> None:
    """ConfigError (with the closest valid name) unless `config.<dotted>`, where set, is one of `valid`."""
    value = _lookup(config, dotted)
    if value is _ABSENT:
        return
    names = sorted(valid)
    if value in names:
        return
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    kind = f" ({what})" if what else ""
    raise ConfigError(f"Unknown config.{dotted}{kind} {value!r}.{hint} Valid: {', '.join(names)}; set "
                      f"--config.{dotted}=NAME.")


def _number(config, dotted: str, *, minimum, strict: bool = False, integer: bool = False,
            below: float | None = None) -> None:
    """config.<dotted> must be a finite number >= minimum (> minimum if strict, < below if given)."""
    value = _lookup(config, dotted)
    if value is _ABSENT or value is None:
        return
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
        if below is not None:
            ok = ok and value < below
    if ok:
        return
    bound = f"> {minimum}" if strict else f">= {minimum}"
    if below is not None:
        bound += f" and < {below}"
    raise ConfigError(f"config.{dotted}={value!r} is invalid: it must be {kind} {bound}. Set "
                      f"--config.{dotted} to such a value.")
