"""Bad-input cases of kind 'cli' (commands, configs, overrides) for scripts/check_bad_inputs.py."""

from __future__ import annotations

import pathlib

from scripts.bad_inputs import Case

SMOKE_FILE = pathlib.Path(__file__).resolve().parents[2] / "configs" / "baseline_synthetic.py"


def _config_file(name: str, text: str):
    """argv builder: writes `text` to ctx.tmp/name and trains with it."""

    def argv(ctx):
        path = ctx.tmp / name
        path.write_text(text)
        return ["train", f"--config={path}", f"--workdir={ctx.tmp / 'run'}"]

    return argv


def _smoke(*extra: str, command: str = "train"):
    return lambda ctx: [command, *ctx.smoke(None, *extra)]


def _nothing_written(ctx, proc):
    """A refused config must leave no workdir behind (nothing is written before the config check)."""
    return "the workdir was created" if (ctx.tmp / "run").exists() else None


def _value(name: str, key: str, value: str, expect: str) -> Case:
    return Case(name, _smoke(f"--config.{key}={value}"), expect=expect, check=_nothing_written)


CASES: list[Case] = [
    # --- the config file --------------------------------------------------------------------------
    Case("config file that does not exist",
         lambda ctx: ["train", "--config=configs/nosuch.py", f"--workdir={ctx.tmp / 'run'}"],
         expect="does not exist"),
    Case("config file that does not exist, no other flag",
         lambda ctx: ["train", "--config=nosuch.py"], expect="nosuch.py does not exist"),
    Case("config path misspelled",
         lambda ctx: ["train", f"--config={SMOKE_FILE.parent / 'baseline_synthtic.py'}",
                      f"--workdir={ctx.tmp / 'run'}"],
         expect="did you mean"),
    Case("config path is a directory",
         lambda ctx: ["train", f"--config={ctx.tmp}", f"--workdir={ctx.tmp / 'run'}"],
         expect="is a directory"),
    Case("config file is not Python (YAML)", _config_file("config.yaml", "method: baseline\n"),
         expect="not a Python file"),
    Case("config file with a syntax error", _config_file("broken.py", "def get_config(:\n    pass\n"),
         expect="syntax error at line 1"),
    Case("config file without get_config", _config_file("noget.py", "CONFIG = {}\n"),
         expect="defines no get_config"),
    Case("config file whose get_config returns None",
         _config_file("none.py", "def get_config(arg=None):\n    config = 1\n"),
         expect="forget `return config`"),
    Case("config file that fails on import",
         _config_file("imports.py", "import nosuchmodule_xyz\n"), expect="nosuchmodule_xyz"),
    Case("config argument the file rejects (:nosuchargument)",
         lambda ctx: ["train", f"--config={SMOKE_FILE}:nosuchargument", f"--workdir={ctx.tmp / 'run'}"],
         expect="':nosuchargument' is not an argument this file takes"),
    Case("config argument to a get_config() that takes none",
         lambda ctx: _config_file("noarg.py", "def get_config():\n    return None\n")(ctx)[:1]
         + [f"--config={ctx.tmp / 'noarg.py'}:smoke", f"--workdir={ctx.tmp / 'run'}"],
         expect="takes no argument"),
    # --- the command line -----------------------------------------------------------------------
    Case("unknown override key", _smoke("--config.train.num_stesp=3"), expect="config.train.num_steps"),
    Case("override value of the wrong type", _smoke("--config.train.batch_size=abc"),
         expect="--config.train.batch_size=abc", exit_code=2),
    Case("no command", lambda ctx: ctx.smoke(), expect="train | evaluate", exit_code=2),
    Case("misspelled command", lambda ctx: ["trian", *ctx.smoke()], expect="got trian", exit_code=2),
    Case("no --workdir", lambda ctx: ["train", ctx.smoke()[0]], expect="missing --workdir", exit_code=2),
    Case("misspelled flag (--worksdir)", lambda ctx: ["train", ctx.smoke()[0], f"--worksdir={ctx.tmp}"],
         expect="did you mean: workdir", exit_code=2),
    Case("--folds with train", _smoke("--folds=3"), expect="crossval option", exit_code=2),
    # --- names the registries know --------------------------------------------------------------
    _value("unknown method", "method", "basline", "did you mean 'baseline'"),
    _value("unknown model.backbone", "model.backbone", "resnet_tiniest", "did you mean 'resnet_tiny'"),
    _value("unknown optimizer.name", "optimizer.name", "adamx", "valid: adam, adamw, sgd"),
    _value("unknown optimizer.schedule", "optimizer.schedule", "cosin", "did you mean 'cosine'"),
    _value("dtype typo", "dtype", "bfloat61", "did you mean 'bfloat16'"),
    _value("unknown adversary.formulation", "adversary.formulation", "minimax", "negated_ce"),
    Case("recipe switch out of range (idennet model.fusion_stage=5)",
         lambda ctx: ["train", f"--config={SMOKE_FILE.parent / 'idennet_synthetic.py'}:smoke",
                      *ctx.smoke(None, "--config.model.fusion_stage=5")[1:]],
         expect="config.model.fusion_stage=5 is outside the 3 stages", check=_nothing_written),
    # --- values ----------------------------------------------------------------------------------
    _value("train.batch_size=0", "train.batch_size", "0", "config.train.batch_size=0"),
    _value("train.num_steps=0", "train.num_steps", "0", "config.train.num_steps=0"),
    _value("train.num_steps=-1", "train.num_steps", "-1", "config.train.num_steps=-1"),
    _value("learning rate -1", "optimizer.learning_rate", "-1", "config.optimizer.learning_rate=-1"),
    _value("learning rate nan", "optimizer.learning_rate", "nan", "config.optimizer.learning_rate=nan"),
    _value("learning rate inf", "optimizer.learning_rate", "inf", "config.optimizer.learning_rate=inf"),
    _value("eval.batch_size=0", "eval.batch_size", "0", "config.eval.batch_size=0"),
    _value("train.checkpoint_every=0", "train.checkpoint_every", "0", "config.train.checkpoint_every=0"),
    _value("optimizer.warmup_steps=-5", "optimizer.warmup_steps", "-5", "config.optimizer.warmup_steps=-5"),
    _value("optimizer.weight_decay=-1", "optimizer.weight_decay", "-1", "config.optimizer.weight_decay=-1"),
    _value("adversary.identity=-1", "adversary.identity", "-1", "config.adversary.identity=-1"),
    _value("class_names of numbers", "data.class_names", "(1,2)", "holds non-string names"),
    _value("class_names naming a class twice", "data.class_names", "('anger','anger','happiness')",
           "more than once"),
    _value("class_names of one class", "data.class_names", "('anger',)", "needs at least 2"),
    Case("a tuple override given twice",
         _smoke("--config.data.class_names=('anger','happiness')",
                "--config.data.class_names=('fear','sadness')"),
         expect="given more than once", check=_nothing_written),
    # --- what only the data and the devices tell -------------------------------------------------
    Case("batch not divisible by the device count", _smoke("--config.train.batch_size=3"),
         expect="not divisible by the 2 devices",
         env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, check=_nothing_written),
    Case("batch larger than the training set", _smoke("--config.train.batch_size=100000"),
         expect="larger than the 1008 training images", check=_nothing_written),
    Case("a command typo (idfer trian)", _smoke(command="trian"), expect="Did you mean `idfer train`?",
         exit_code=2),
    Case("a bench-only flag on train (--steps=5)", _smoke("--steps=5"),
         expect="--steps is not an option of `idfer train`", exit_code=2, check=_nothing_written),
    # --- bench flags ------------------------------------------------------------------------------
    Case("bench --devices=abc", _smoke("--devices=abc", command="bench"), expect="--devices takes"),
    Case("bench --devices=0", _smoke("--devices=0", command="bench"), expect="asks for 0 devices"),
    Case("bench --dtypes=float16", _smoke("--dtypes=float16", command="bench"), expect="--dtypes takes"),
    Case("bench --steps=0", _smoke("--steps=0", command="bench"), expect="at least 1 timed step"),
    Case("bench --recipes=basline", _smoke("--recipes=basline", command="bench"), expect="unknown recipes"),
    # --- Ctrl-C before training (loading the config and JAX; preparing a fresh data dir) ---------------
    Case("Ctrl-C while the config loads", lambda ctx: ["train", *ctx.smoke()],
         expect="interrupted (ctrl-c)", exit_code=130, signal_after=1.0, check=_nothing_written),
    Case("Ctrl-C while the data is prepared",
         lambda ctx: ["train", *ctx.smoke(None, f"--config.data.data_dir={ctx.tmp / 'fresh_tfds'}")],
         expect="interrupted (ctrl-c)", exit_code=130, signal_after=8.0),
]
