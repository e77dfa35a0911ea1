"""Issue 16, section 2: every fault of the CLI, the configs and the Python API is one clear error.

Config files that cannot be loaded, values no run could use, bench flags it cannot measure and arguments
of the wrong type each end in the exact error type with a message that names the key (or file, or
argument) and the fix, before anything is prepared or written. `idfer` prints any user error as one line
(`idfer: error: ...`) without a traceback (`--debug` shows it). scripts/check_bad_inputs.py --kinds=cli
runs the same cases through the command line.
"""

from __future__ import annotations

import errno
import pathlib
import subprocess
import sys
import types

import ml_collections
import pytest

from idfer_jax import api, configuration, methods
from idfer_jax.configuration import ConfigError
from tests.conftest import REPO, subprocess_env

SMOKE_FILE = REPO / "configs" / "baseline_synthetic.py"
SMOKE = f"{SMOKE_FILE}:smoke"


def smoke():
    """The smoke config, unlocked for editing (no data needed: validation runs before the data)."""
    config = api.load_config(SMOKE)
    config.unlock()
    return config


def write(tmp_path: pathlib.Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- config files that cannot be loaded ------------------------------------------------------------

CONFIG_FILE_FAULTS = {
    "syntax_error": ("broken.py", "def get_config(:\n    pass\n", r"syntax error at line 1"),
    "no_get_config": ("noget.py", "CONFIG = {}\n", r"defines no get_config\(\) function"),
    "returns_none": ("none.py", "def get_config(arg=None):\n    config = 1\n", r"forget `return config`"),
    "returns_dict": ("dict.py", "def get_config(arg=None):\n    return {'method': 'baseline'}\n",
                     r"returned dict, not an ml_collections.ConfigDict"),
    "import_fails": ("imports.py", "import nosuchmodule_xyz\n",
                     r"failed to load at line 1: ModuleNotFoundError: No module named 'nosuchmodule_xyz'"),
    "get_config_raises": ("raises.py", "def get_config(arg=None):\n    return 1 / 0\n",
                          r"get_config\(\) failed at line 2: ZeroDivisionError"),
    "not_python": ("config.yaml", "method: baseline\n", r"is not a Python file"),
}


@pytest.mark.parametrize("fault", sorted(CONFIG_FILE_FAULTS))
def test_a_config_file_that_cannot_be_loaded_is_a_config_error_naming_the_file(fault, tmp_path):
    name, text, message = CONFIG_FILE_FAULTS[fault]
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=message) as raised:
        api.load_config(path)
    assert path in str(raised.value)


def test_a_missing_config_file_names_the_path_and_the_nearest_file():
    with pytest.raises(ConfigError, match="does not exist") as raised:
        api.load_config(str(REPO / "configs" / "baseline_synthtic.py"))
    assert f"Did you mean {REPO / 'configs' / 'baseline_synthetic.py'}?" in str(raised.value)


def test_a_config_path_that_is_a_directory_says_to_give_a_file():
    with pytest.raises(ConfigError, match=r"is a directory \(from --config=.*\); give one .py file in it"):
        api.load_config(str(REPO / "configs"))


def test_an_empty_config_spec_says_what_to_pass():
    with pytest.raises(ConfigError, match="No config file given"):
        api.load_config("")


def test_a_config_argument_the_file_rejects_names_the_argument_and_the_valid_ones():
    with pytest.raises(ConfigError, match=r"get_config\('nosuchargument'\) failed.*use '' or 'smoke'.*"
                                          r"not an argument this file takes"):
        api.load_config(f"{SMOKE_FILE}:nosuchargument")


def test_a_config_argument_to_a_get_config_that_takes_none_says_to_drop_it(tmp_path):
    path = write(tmp_path, "noarg.py", "import ml_collections\ndef get_config():\n"
                 "    return ml_collections.ConfigDict()\n")
    with pytest.raises(ConfigError, match=r"get_config\(\) takes no argument, so ':smoke' cannot be passed"):
        api.load_config(f"{path}:smoke")


def test_override_keys_are_checked_with_either_form_of_the_config_flag():
    for argv in (["idfer", "train", f"--config={SMOKE}", "--config.train.num_stesp=3"],
                 ["idfer", "train", "--config", SMOKE, "--config.train.num_stesp=3"]):
        with pytest.raises(ConfigError, match=r"'config.train.num_stesp'.*'config.train.num_steps'"):
            configuration.check_override_flags(argv)


# --- one validation pass over the values ---------------------------------------------------------

# (key, bad value, fragment of the message): names the key, the value and what is valid.
INVALID_VALUES = [
    ("method", "basline", r"Unknown config.method \(recipe\) 'basline'. Did you mean 'baseline'\? "
                          r"Valid: baseline, fersnet, halawa, idennet, ipdfer, phanet"),
    ("model.backbone", "resnet19", r"Unknown config.model.backbone 'resnet19'. Did you mean 'resnet18'\?"),
    ("optimizer.name", "adamx", r"Unknown config.optimizer.name 'adamx'.*Valid: adam, adamw, sgd"),
    ("optimizer.schedule", "cosin", r"Did you mean 'cosine'\? Valid: constant, cosine, milestones"),
    ("dtype", "bfloat61", r"Unknown config.dtype 'bfloat61'. Did you mean 'bfloat16'\?"),
    ("adversary.formulation", "minimax", r"Valid: grl, negated_ce, ridge, uniform"),
    ("adversary.ridge_kernel", "poly", r"Valid: linear, rbf"),
    ("data.validation_fraction", 0.95, r"config.data.validation_fraction=0.95 is invalid"),
    ("model.norm", "batchnorm", r"Unknown config.model.norm 'batchnorm'. Did you mean 'batch'\?"),
    ("model.stem", "imagenett", r"Did you mean 'imagenet'\? Valid: imagenet, small"),
    ("data.protocol", "kfld", r"Did you mean 'kfold'\? Valid: kfold, loso, official"),
    ("data.partner", "neutral_face", r"Did you mean 'neutral'\?"),
    ("train.batch_size", 0, r"config.train.batch_size=0 is invalid: it must be an integer >= 1"),
    ("train.batch_size", -8, r"config.train.batch_size=-8 is invalid"),
    ("train.num_steps", 0, r"config.train.num_steps=0 is invalid: it must be an integer >= 1"),
    ("train.num_steps", -1, r"config.train.num_steps=-1 is invalid"),
    ("optimizer.learning_rate", -1.0, r"learning_rate=-1.0 is invalid: it must be a number > 0"),
    ("optimizer.learning_rate", 0.0, r"config.optimizer.learning_rate=0.0 is invalid"),
    ("optimizer.learning_rate", float("nan"), r"config.optimizer.learning_rate=nan is invalid"),
    ("optimizer.learning_rate", float("inf"), r"config.optimizer.learning_rate=inf is invalid"),
    ("eval.batch_size", 0, r"config.eval.batch_size=0"),
    ("train.log_every", 0, r"config.train.log_every=0"),
    ("train.checkpoint_every", 0, r"config.train.checkpoint_every=0"),
    ("train.keep_checkpoints", 0, r"config.train.keep_checkpoints=0"),
    ("optimizer.warmup_steps", -5, r"warmup_steps=-5 is invalid: it must be an integer >= 0"),
    ("optimizer.grad_clip", -1.0, r"config.optimizer.grad_clip=-1.0"),
    ("optimizer.weight_decay", -1e-4, r"config.optimizer.weight_decay=-0.0001"),
    ("optimizer.b1", 1.0, r"config.optimizer.b1=1.0 is invalid: it must be a number >= 0.0 and < 1.0"),
    ("optimizer.milestones", (0.3, 1.5), r"milestones must be fractions of the run in \(0, 1\)"),
    ("adversary.identity", -1.0, r"config.adversary.identity=-1.0"),
    ("adversary.pose", float("nan"), r"config.adversary.pose=nan"),
    ("adversary.steps", 0, r"config.adversary.steps=0"),
    ("data.image_size", 0, r"config.data.image_size=0"),
    ("data.worker_count", -1, r"config.data.worker_count=-1"),
    ("data.class_names", (1, 2), r"config.data.class_names=\(1, 2\) holds non-string names.*\"\('1','2'\)\""),
    ("data.class_names", ("anger", "anger", "happiness"), r"names 'anger' more than once"),
    ("data.class_names", ("anger",), r"holds 1 class; a classifier needs at least 2"),
]


@pytest.mark.parametrize("key, value, message", INVALID_VALUES,
                         ids=[f"{k}={v}" for k, v, _ in INVALID_VALUES])
def test_every_invalid_value_is_a_config_error_naming_the_key_and_the_fix(key, value, message):
    config = smoke()
    block, _, leaf = key.rpartition(".")
    (config[block] if block else config)[leaf] = value
    with pytest.raises(ConfigError, match=message) as raised:
        configuration.validate(config)
    assert f"config.{key}" in str(raised.value)


@pytest.mark.parametrize("spec, key, value, message", [
    ("idennet", "model.fusion", "add", r"config.model.fusion 'add'; use one of sum, max, concat, conv"),
    ("phanet", "model.pose", "angles", r"Unknown config.model.pose 'angles'"),
    ("fersnet", "model.identity.kind", "arcface", r"Unknown config.model.identity.kind 'arcface'"),
    ("fersnet", "data.partner", "", r"--config.data.partner=other_expression"),
    ("ipdfer", "model.loss_weights.nosuch", 1.0, r"Unknown IPD-FER loss weights \['nosuch'\]"),
    ("idennet", "model.fusion_stage", 5, r"fusion_stage=5 is outside the 3 stages of 'resnet_tiny'"),
    ("phanet", "model.attention_stages", 4, r"config.model.attention_stages=4: 'resnet_tiny' has 3 stages"),
    ("halawa", "model.branch_stage", 0, r"config.model.branch_stage=0 must leave the trunk at least one"),
])
def test_a_recipe_switch_typo_fails_when_the_config_is_loaded(spec, key, value, message):
    config = api.load_config(str(REPO / "configs" / f"{spec}_synthetic.py") + ":smoke")
    config.unlock()
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    node.unlock()
    node[leaf] = value
    with pytest.raises(ConfigError, match=message):
        configuration.validate(config)


def test_the_trainer_runs_a_method_the_recipe_registry_does_not_know():
    # A notebook's own method (compose_your_own_method.ipynb) goes through Trainer with its own
    # build_method: only the API and the CLI, which build from the registry, check config.method.
    config = smoke()
    config.method = "fused_grl"
    configuration.validate(config, recipes=False)
    with pytest.raises(ConfigError, match="Unknown config.method"):
        configuration.validate(config)


@pytest.mark.parametrize("argv, message", [
    (["idfer", "train", f"--config={SMOKE}", "--config.data.class_names=('anger','happiness')",
      "--config.data.class_names=('fear','sadness')"],
     r"--config.data.class_names given more than once; give each override once"),
    (["idfer", "train", f"--config={SMOKE}", f"--config={SMOKE_FILE}", "--config.train.num_steps=2"],
     r"--config=FILE is given 2 times; give one config file"),
])
def test_an_override_or_config_given_twice_is_refused(argv, message):
    # ml_collections would concatenate a repeated tuple override; two files leave it unclear which one the
    # overrides are checked against.
    with pytest.raises(ConfigError, match=message):
        configuration.check_override_flags(argv)


@pytest.mark.parametrize("path", sorted(str(p.name) for p in (REPO / "configs").glob("*.py")))
def test_every_shipped_config_passes_validation(path):
    for arg in ("", ":smoke") if "synthetic" in path else ("",):
        configuration.validate(api.load_config(str(REPO / "configs" / path) + arg))


def test_a_config_missing_a_block_names_it():
    config = ml_collections.ConfigDict({"method": "baseline", "model": {}, "data": {}})
    with pytest.raises(ConfigError, match=r"has no 'optimizer', 'train', 'eval'"):
        configuration.validate(config)


@pytest.mark.parametrize("run", ["train", "evaluate", "crossval"])
def test_an_invalid_config_is_refused_before_anything_is_prepared_or_written(run, tmp_path):
    config = smoke()
    config.data.data_dir = str(tmp_path / "tfds")  # would be prepared here
    config.train.num_steps = 0
    with pytest.raises(ConfigError, match="config.train.num_steps=0"):
        getattr(api, run)(config, str(tmp_path / "run"))
    assert list(tmp_path.iterdir()) == []


# --- what only the data and the devices can tell (Trainer.__init__) ---------------------------------

def _trainer_with(batch_size: int, devices: int, train_images: int):
    from idfer_jax.train.trainer import Trainer

    trainer = object.__new__(Trainer)
    config = smoke()
    config.train.batch_size = batch_size
    config.eval.batch_size = 2 * devices
    trainer.config = config
    trainer.mesh = types.SimpleNamespace(size=devices)
    trainer.dataset = types.SimpleNamespace(train_indices=range(train_images))
    return trainer


def test_a_batch_not_divisible_by_the_device_count_names_the_multiples():
    with pytest.raises(ConfigError, match=r"config.train.batch_size=3 is not divisible by the 2 devices of "
                                          r"the mesh; set --config.train.batch_size to a multiple of 2 "
                                          r"\(e.g. 2 or 4\)"):
        _trainer_with(batch_size=3, devices=2, train_images=100)._check_batch_sizes()
    _trainer_with(batch_size=4, devices=2, train_images=100)._check_batch_sizes()  # and a fit one passes


def test_a_batch_larger_than_the_training_set_names_both_sizes():
    with pytest.raises(ConfigError, match=r"config.train.batch_size=64 is larger than the 50 training images "
                                          r"of fold 0 \(synthetic_faces\); set --config.train.batch_size to "
                                          r"at most 48"):
        _trainer_with(batch_size=64, devices=4, train_images=50)._check_batch_sizes()
    _trainer_with(batch_size=48, devices=4, train_images=50)._check_batch_sizes()


def test_the_trainer_refuses_a_batch_larger_than_the_real_training_set(smoke_config):
    from idfer_jax.train.trainer import Trainer

    smoke_config.train.batch_size = 100_000
    with pytest.raises(ConfigError, match=r"batch_size=100000 is larger than the 1008 training images"):
        Trainer(smoke_config, methods.build)


# --- the Python API's arguments ----------------------------------------------------------------------

@pytest.mark.parametrize("run", ["train", "evaluate", "crossval"])
@pytest.mark.parametrize("bad", [{"method": "baseline"}, None, 42],
                         ids=["dict", "None", "int"])
def test_the_api_names_a_config_of_the_wrong_type(run, bad, tmp_path):
    with pytest.raises(TypeError, match=r"`config` must be a config file path .* or an "
                                        rf"ml_collections.ConfigDict .*got {type(bad).__name__}") as raised:
        getattr(api, run)(bad, str(tmp_path))
    if isinstance(bad, dict):
        assert "ml_collections.ConfigDict(d)" in str(raised.value)


@pytest.mark.parametrize("run", ["train", "evaluate", "crossval"])
@pytest.mark.parametrize("bad", [None, 42, b"/tmp/run"], ids=["None", "int", "bytes"])
def test_the_api_names_a_workdir_of_the_wrong_type(run, bad):
    with pytest.raises(TypeError, match=rf"`workdir` must be a directory path \(str or os.PathLike\); got "
                                        rf"{type(bad).__name__}"):
        getattr(api, run)(smoke(), bad)


def test_the_api_refuses_an_empty_workdir():
    with pytest.raises(ValueError, match="`workdir` is empty"):
        api.train(smoke(), "")


def test_the_api_takes_a_config_path_a_pathlike_and_a_frozen_config():
    from_path = api.as_config(SMOKE)
    assert from_path.method == "baseline" and from_path.train.num_steps == 800  # the :smoke argument
    assert api.as_config(pathlib.Path(SMOKE_FILE)).data.image_size == 64  # no argument: the full run
    frozen = api.as_config(ml_collections.FrozenConfigDict(from_path))
    assert isinstance(frozen, ml_collections.ConfigDict) and frozen.train.num_steps == 800
    assert api.as_workdir(pathlib.Path("/tmp/run")) == "/tmp/run"
    with pytest.raises(ConfigError, match="does not exist"):
        api.train("configs/nosuch.py", "/tmp/unused")


@pytest.mark.slow
def test_api_train_runs_from_a_config_path_and_a_pathlike_workdir(smoke_data_dir, tmp_path):
    path = write(tmp_path, "tiny.py", f"""
from idfer_jax import config_defaults
from idfer_jax.methods import baseline

def get_config(arg=None):
    c = config_defaults.synthetic_run("baseline", baseline.model_config(), arg)
    c.data.data_dir = {smoke_data_dir!r}
    c.train.update(num_steps=2, checkpoint_every=2, log_every=1)
    return c
""")
    result = api.train(f"{path}:smoke", tmp_path / "run")
    assert int(result.state.step) == 2
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()


# --- bench flags -----------------------------------------------------------------------------------

@pytest.mark.parametrize("devices, message", [
    ("abc", r"--devices takes device counts or 'all', e.g. --devices=1,2,all; got 'abc'"),
    ("1,two", r"got 'two'"),
    ("", r"--devices is empty"),
    ("0", r"--devices asks for 0 devices"),
    ("999", r"--devices asks for 999 devices; this system has"),
])
def test_bench_devices_typos_are_bench_errors(devices, message):
    from idfer_jax.bench import run as bench

    with pytest.raises(bench.BenchError, match=message):
        bench.device_counts(devices)


@pytest.mark.parametrize("flag, value, message", [
    ("dtypes", "float16", r"--dtypes takes a comma list of float32, bfloat16; got 'float16'"),
    ("dtypes", "", r"--dtypes takes"),
    ("inputs", "disk", r"--inputs takes a comma list of"),
    ("steps", 0, r"--steps=0: give at least 1 timed step"),
    ("devices", "abc", r"--devices takes device counts"),
])
def test_bench_flag_typos_are_bench_errors_before_anything_runs(flag, value, message, tmp_path):
    from idfer_jax.bench import run as bench

    with pytest.raises(bench.BenchError, match=message):
        bench.bench(SMOKE, smoke(), str(tmp_path / "bench"), **{flag: value})
    assert not (tmp_path / "bench").exists()


# --- how `idfer` reports them --------------------------------------------------------------------------

def _main_exits_with(monkeypatch, capsys, error: BaseException) -> tuple[int, str]:
    from idfer_jax import main

    def fail(argv):
        raise error

    monkeypatch.setattr(main, "_main", fail)
    with pytest.raises(SystemExit) as exited:
        main.main(["idfer", "train"])
    return exited.value.code, capsys.readouterr().err


def test_a_user_error_is_one_line_with_its_exit_code(monkeypatch, capsys):
    from idfer_jax.errors import Interrupted

    code, err = _main_exits_with(monkeypatch, capsys, ConfigError("Unknown config.method 'x'.\nSet it."))
    assert (code, err) == (1, "idfer: error: Unknown config.method 'x'. Set it.\n")
    code, err = _main_exits_with(monkeypatch, capsys, Interrupted("Stopped at step 3."))
    assert (code, err) == (130, "idfer: error: Stopped at step 3.\n")


@pytest.mark.parametrize("error, line", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/run"),
     "idfer: error: /data/run: Permission denied; check the permissions of the path"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/data/run/folds.json"),
     "idfer: error: /data/run/folds.json: Is a directory; a directory is in the way of a file"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/run/checkpoints"),
     "idfer: error: /data/run/checkpoints: No space left on device; free some space"),
    (FileNotFoundError("No checkpoint in /data/run/checkpoints. Train first."),
     "idfer: error: No checkpoint in /data/run/checkpoints. Train first."),
])
def test_an_os_error_is_one_line_naming_the_path_and_the_problem(monkeypatch, capsys, error, line):
    code, err = _main_exits_with(monkeypatch, capsys, error)
    assert code == 1 and err.startswith(line) and err.count("\n") == 1 and "Traceback" not in err


def test_ctrl_c_outside_training_is_one_line_and_exit_130(monkeypatch, capsys):
    code, err = _main_exits_with(monkeypatch, capsys, KeyboardInterrupt())
    assert code == 130 and err.count("\n") == 1
    assert err.startswith("idfer: error: Interrupted (Ctrl-C)")
    assert "run the same command again" in err.lower()


def test_a_bug_keeps_its_traceback_and_says_it_is_a_bug(monkeypatch, capsys):
    code, err = _main_exits_with(monkeypatch, capsys, RuntimeError("boom"))
    assert code == 1 and "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("idfer: error: internal error (RuntimeError: boom). This is a bug")


@pytest.mark.slow
def test_the_cli_prints_config_faults_as_one_line_and_debug_shows_the_traceback(tmp_path):
    env = subprocess_env(str(tmp_path / "cache"))

    def idfer(*args):
        return subprocess.run([sys.executable, "-m", "idfer_jax.main", *args], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=120)

    broken = write(tmp_path, "broken.py", "def get_config(:\n")
    for args, fragment in [
        (["train", "--config=nosuch.py"], "nosuch.py does not exist"),
        (["train", f"--config={broken}", f"--workdir={tmp_path}"], "syntax error at line 1"),
    ]:
        result = idfer(*args)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("idfer: error: ") and fragment in result.stderr
        assert result.stderr.count("\n") == 1
    debug = idfer("train", "--config=nosuch.py", f"--workdir={tmp_path}", "--debug")
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr
    assert "ConfigError" in debug.stderr


def test_ctrl_c_while_the_config_loads_is_one_line_and_exit_130(monkeypatch, capsys):
    from idfer_jax import main

    def interrupted_while_parsing(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(main.app, "run", interrupted_while_parsing)
    monkeypatch.setattr(main.atexit, "register", lambda fn: None)  # not pytest's own exit code
    monkeypatch.setattr(sys, "argv", ["idfer", "train"])
    with pytest.raises(SystemExit) as exited:
        main.run()
    err = capsys.readouterr().err
    assert exited.value.code == 130 and err.startswith("idfer: error: Interrupted (Ctrl-C)")
    assert err.count("\n") == 1


def test_ctrl_c_exits_at_once_during_start_up_and_raises_again_for_the_command(monkeypatch):
    """A KeyboardInterrupt raised while JAX's extension modules import can abort the interpreter or be
    swallowed, so start-up exits at once on SIGINT; the command itself gets KeyboardInterrupt back."""
    import signal

    from idfer_jax import main

    seen = []
    monkeypatch.setattr(main.app, "run", lambda *args, **kwargs: seen.append(signal.getsignal(signal.SIGINT)))
    monkeypatch.setattr(main.atexit, "register", lambda fn: None)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main.run()
        assert seen == [main._exit_on_ctrl_c]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, main._exit_on_ctrl_c)
        main._ctrl_c_raises()  # what _main does right before running the command
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
