"""The `idfer` command.

    idfer train    --config=configs/baseline_synthetic.py --workdir=DIR [--config.a.b=value ...]
    idfer evaluate --config=configs/baseline_synthetic.py --workdir=DIR
    idfer crossval --config=configs/baseline_ckplus.py --workdir=DIR [--folds=N]
    idfer bench    --config=configs/baseline_synthetic.py --workdir=DIR [--recipes=all] [--devices=1,all]
                   [--dtypes=float32,bfloat16] [--inputs=memory,pipeline] [--steps=20] [--torch=false]

Multi-host (a TPU pod slice, a GPU cluster): run the same command on every host with `--multihost`; on TPU
pods, Slurm and Open MPI nothing else is needed, elsewhere add `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` (colabs/tpu_pod.md has the exact commands).

`train` resumes from the newest checkpoint in DIR when there is one, so an interrupted run continues when
the same command is run again; `crossval` trains and evaluates every fold in DIR/fold_<i> and resumes fold
by fold the same way.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections.config_flags import config_flags

from idfer_jax.configuration import ConfigError, check_override_flags
from idfer_jax.errors import UserError

COMMANDS = ("train", "evaluate", "crossval", "bench")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/baseline_synthetic.py[:smoke].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and reports.")
_FOLDS = flags.DEFINE_integer(
    "folds", None, "crossval: number of subject-independent folds (sets config.data.num_folds; "
    "k-fold protocol only)."
)
_RECIPES = flags.DEFINE_string(
    "recipes", "own", "bench: 'own' (CONFIG's recipe), 'all', or a comma list; the others' configs are "
    "CONFIG's siblings with the same dataset (configs/<recipe>_<dataset>.py), on CONFIG's data and batch.")
_DEVICES = flags.DEFINE_string("devices", "1,all", "bench: device counts, e.g. 1,2,4,all.")
_DTYPES = flags.DEFINE_string("dtypes", "float32,bfloat16", "bench: computation dtypes.")
_INPUTS = flags.DEFINE_string(
    "inputs", "memory,pipeline", "bench: in-memory batches (the step alone) and/or the real pipeline.")
_STEPS = flags.DEFINE_integer("steps", 20, "bench: timed steps per measurement (after the first).")
_TORCH = flags.DEFINE_bool(
    "torch", True, "bench: also time the PyTorch reference of the baseline (needs torch installed).")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Join a multi-host JAX system (jax.distributed.initialize) before anything else: "
    "TPU pods, Slurm and Open MPI need nothing more; elsewhere give the three flags below."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: process 0's HOST:PORT (implies --multihost).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: the number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's id, 0 .. N-1.")


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        check_override_flags(argv)
    except ConfigError as e:
        print(f"idfer: error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"idfer: error: {e}\nUsage: idfer {{{'|'.join(COMMANDS)}}} --config=FILE "
              "--workdir=DIR", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> None:
    commands = argv[1:]
    if len(commands) != 1 or commands[0] not in COMMANDS:
        raise app.UsageError(
            f"Give exactly one command: {' | '.join(COMMANDS)} (got {commands or 'none'})."
        )
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("Both --config=FILE and --workdir=DIR are required.")
    if not flags.FLAGS["verbosity"].present:
        # orbax and grain log every checkpoint step at INFO; the progress line is what users read.
        logging.set_verbosity(logging.WARNING)

    config, workdir = _CONFIG.value, _WORKDIR.value
    if _FOLDS.value is not None:
        if commands[0] != "crossval":
            raise app.UsageError("--folds is a crossval option; use --config.data.fold to pick a fold.")
        if config.data.protocol != "kfold":
            raise app.UsageError(
                f"--folds sets the number of k-fold folds, but config.data.protocol is "
                f"{config.data.protocol!r}, whose folds are fixed; drop --folds."
            )
        with config.unlocked():
            config.data.num_folds = _FOLDS.value
    try:
        if _MULTIHOST.value or _COORDINATOR.value:
            from idfer_jax.train import distributed

            distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        _run_command(commands[0], config, workdir)
    except UserError as e:
        # The user's data or workdir, not a bug: the message says what to do, a traceback would bury it.
        print(f"idfer: error: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)


def _run_command(command: str, config, workdir: str) -> None:
    from idfer_jax import api
    from idfer_jax.train.writers import announce  # process 0 speaks for a multi-host run

    if command == "train":
        api.train(config, workdir)
    elif command == "crossval":
        summary = api.crossval(config, workdir)
        acc = summary["mean_std"]["accuracy"]
        announce(f"Accuracy {acc['mean']:.4f} +- {acc['std']:.4f} over {summary['num_folds']} folds; "
                 f"report: {workdir}/crossval_report.md")
    elif command == "bench":
        from ml_collections import config_flags

        from idfer_jax.bench import run as bench

        bench.bench(config_flags.get_config_filename(flags.FLAGS["config"]), config, workdir,
                    recipes=_RECIPES.value, devices=_DEVICES.value, dtypes=_DTYPES.value,
                    inputs=_INPUTS.value, steps=_STEPS.value, with_torch=_TORCH.value)
    else:
        results = api.evaluate(config, workdir)
        identity = results["identity_leakage"]
        leakage = (f"identity probe (linear) {identity['linear_acc']:.4f} vs chance "
                   f"{identity['chance']:.4f}" if "linear_acc" in identity
                   else f"identity leakage not measured ({identity.get('skipped')})")
        announce(f"Held-out accuracy {results['accuracy']:.4f} on {results['num_test_subjects']} "
                 f"subjects; {leakage}; report: {workdir}/report.md")


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
