"""The `idfer` command.

    idfer train    --config=configs/baseline_synthetic.py --workdir=DIR [--config.a.b=value ...]
    idfer evaluate --config=configs/baseline_synthetic.py --workdir=DIR   (--config may be left out: the
                   newest checkpoint's own config is used)
    idfer crossval --config=configs/baseline_ckplus.py --workdir=DIR [--folds=N]
    idfer bench    --config=configs/baseline_synthetic.py --workdir=DIR [--recipes=all] [--devices=1,all]
                   [--dtypes=float32,bfloat16] [--inputs=memory,pipeline] [--steps=20] [--torch=false]
    idfer sweep    --config=FILE --workdir=DIR --sweep=adversary.identity=0,1,3 [--select=identity|pose]
                   (a crossval per value; the value to report is chosen on held-out training subjects)
    idfer compare  DIR [NAME=DIR ...]   (finished crossval workdirs: one table, mean +- std over folds)
    idfer predict  --workdir=DIR INPUT... [--output=FILE|-] [--format=csv|jsonl] [--annotate=DIR]
                   [--batch_size=64] [--fps=1] [--no-detect] [--step=N]
                   (images, folders, videos: one row per face; the model's config comes from its checkpoint)
    idfer export   --workdir=DIR --format=saved_model|tflite [--output=DIR] [--step=N] [IMAGE...]

Multi-host (a TPU pod slice, a GPU cluster): run the same command on every host with `--multihost`; on TPU
pods, Slurm and Open MPI nothing else is needed, elsewhere add `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` (colabs/tpu_pod.md has the exact commands).

Errors: anything the user can fix (a config file or value, the data, the workdir, the filesystem) is one
line on stderr, `idfer: error: <what is wrong> <how to fix it>`, exit code 1 (2 when the command line
itself is wrong: a missing command or flag, an unknown flag; 130 after Ctrl-C). `--debug` shows the
traceback instead. Any other exception is a bug: its traceback is kept and the last line says so.

`train` resumes from the newest checkpoint in DIR when there is one, so an interrupted run continues when
the same command is run again; `crossval` trains and evaluates every fold in DIR/fold_<i> and resumes fold
by fold the same way.
"""

from __future__ import annotations

import atexit
import difflib
import os
import signal
import sys
import traceback

from absl import app, flags, logging
from ml_collections.config_flags import config_flags

from idfer_jax import configuration
from idfer_jax.errors import UserError

COMMANDS = ("train", "evaluate", "crossval", "sweep", "bench", "compare", "predict", "export")
# Commands that read the model's config from its checkpoint (no --config) and take positional inputs.
MODEL_COMMANDS = ("predict", "export")
# Flags that only some commands read; given to another, they would be silently ignored.
COMMAND_FLAGS = {"recipes": ("bench",), "devices": ("bench",), "dtypes": ("bench",), "inputs": ("bench",),
                 "steps": ("bench",), "torch": ("bench",), "restart": ("train", "crossval", "sweep"),
                 "sweep": ("sweep",), "select": ("sweep",), "tolerance": ("sweep",),
                 "step": MODEL_COMMANDS, "output": MODEL_COMMANDS, "format": MODEL_COMMANDS,
                 "annotate": ("predict",), "batch_size": ("predict",), "fps": ("predict",),
                 "detect": ("predict",), "dataset_crop": ("predict",)}
USAGE = (f"idfer {{{'|'.join(c for c in COMMANDS if c not in ('compare', *MODEL_COMMANDS))}}} --config=FILE "
         "--workdir=DIR [--config.KEY=VALUE ...], idfer predict --workdir=DIR INPUT..., idfer export "
         "--workdir=DIR --format=saved_model|tflite, or idfer compare DIR [NAME=DIR ...]")


INTERRUPTED = ("Interrupted (Ctrl-C) outside the training loop; nothing of yours was lost. Run the same "
               "command again (train and crossval resume from the last checkpoint in --workdir).")


class UsageError(UserError):
    """The command line itself cannot be understood (a flag, a command, a required flag missing)."""

    exit_code = 2  # as for any command whose arguments are wrong


class _ConfigFileParser(config_flags.ConfigFileFlagParser):
    """`--config=FILE[:arg]` through `configuration.load_config_file`, so a missing file, a syntax error,
    no get_config or a rejected argument is a ConfigError at once (ml_collections' own parser defers a
    missing file to the first attribute access, then raises a bare OSError)."""

    def parse(self, path):
        return configuration.load_config_file(path)


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/baseline_synthetic.py[:smoke].", lock_config=True
)
flags.FLAGS["config"].parser = _ConfigFileParser("config", lock_config=True)
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
_SWEEP = flags.DEFINE_string(
    "sweep", None, "sweep: KEY=V1,V2,... one config key and its values, e.g. adversary.identity=0,1,3,10 "
    "(include 0, the baseline).")
_SELECT = flags.DEFINE_string(
    "select", "", "sweep: the leakage the reported value minimises on the validation subjects: identity "
    "or pose ('' = pose for a key named *pose*, else identity).")
_TOLERANCE = flags.DEFINE_float(
    "tolerance", 0.01, "sweep: the validation accuracy the chosen value may lose against the baseline.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Join a multi-host JAX system (jax.distributed.initialize) before anything else: "
    "TPU pods, Slurm and Open MPI need nothing more; elsewhere give the three flags below."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: process 0's HOST:PORT (implies --multihost).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: the number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's id, 0 .. N-1.")
_RESTART = flags.DEFINE_bool(
    "restart", False, "train / crossval: when every checkpoint in --workdir is unreadable, start over from "
    "step 0 (they are moved to DIR/corrupt_checkpoints/, never deleted) instead of refusing.")
_STEP = flags.DEFINE_integer("step", None, "predict / export: the checkpoint's step (default the newest).")
_OUTPUT = flags.DEFINE_string(
    "output", None, "predict: the rows' file ('-' = stdout, the default); export: the folder (default "
    "DIR/export).")
_FORMAT = flags.DEFINE_string(
    "format", None, "predict: csv (default) or jsonl; export: saved_model (default) or tflite.")
_ANNOTATE = flags.DEFINE_string(
    "annotate", "", "predict: write each image with its face boxes and labels into this folder.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "predict: faces per model call.")
_FPS = flags.DEFINE_float("fps", 1.0, "predict: video frames read per second of video (0 = every frame).")
_DETECT = flags.DEFINE_bool(
    "detect", True, "predict: find and align the faces of each image as the training data was framed (needs "
    "the [align] extra); --no-detect takes each image as one face crop.")
_DATASET_CROP = flags.DEFINE_bool(
    "dataset_crop", False, "predict, with --no-detect: first cut the training dataset's fixed box out of "
    "each image, as its builder did (for that dataset's raw files, e.g. JAFFE's).")
_DEBUG = flags.DEFINE_bool(
    "debug", False, "Show the full Python traceback of an error instead of the one-line message.")


_exit_code_at_shutdown: list[int] = []


def _fail(message: str, exit_code: int) -> None:
    """The one way `idfer` reports an error: one line on stderr, then exit."""
    message = " ".join(str(message).split())  # one line, whatever the message held
    print(f"idfer: error: {message}", file=sys.stderr, flush=True)
    if exit_code == 130:
        _exit_code_at_shutdown.append(exit_code)
    sys.exit(exit_code)


def _keep_the_exit_code() -> None:
    """CPython re-raises SIGINT at exit (status -2, not 130) once a KeyboardInterrupt has crossed a
    C-level `PyRun_*` call, as one raised while an extension module imports can, even when idfer caught it
    and said so. Registered first, this runs after every other exit handler, so cleanup still happens."""
    if _exit_code_at_shutdown:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_code_at_shutdown[-1])


def _debug_requested(argv: list[str] | None = None) -> bool:
    if argv is not None:  # before the flags are parsed
        return any(a in ("--debug", "-debug", "--debug=true", "--debug=True", "--debug=1") for a in argv)
    return bool(flags.FLAGS["debug"].present and _DEBUG.value)


def _user_error_in(error: BaseException) -> UserError | None:
    """The UserError that caused `error` (absl recasts a ValueError raised while parsing a flag)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    debug = _debug_requested(argv)
    # The spelling users expect for a negated switch; absl's own is --nodetect.
    end = argv.index("--") if "--" in argv else len(argv)  # after "--" every word is an input
    argv = [{"--no-detect": "--nodetect", "--no_detect": "--nodetect"}.get(a, a) if i < end else a
            for i, a in enumerate(argv)]
    command = next((a for a in argv[1:] if not a.startswith("-")), None)
    if command in MODEL_COMMANDS and any(a.split("=")[0] in ("--config", "-config") or
                                         a.startswith("--config.") for a in argv[1:]):
        # Before the config file is read: these commands take the config saved with the model.
        if debug:
            raise UsageError(f"idfer {command} reads the model's config from its checkpoint; drop --config.")
        _fail(f"`idfer {command}` reads the model and its config from the checkpoint in --workdir; drop "
              f"--config and any --config.KEY=VALUE. Usage: {USAGE}", UsageError.exit_code)
    try:
        configuration.check_override_flags(argv)
        return flags.FLAGS(argv)
    except UserError as e:
        if debug:
            raise
        _fail(e, e.exit_code)
    except (flags.Error, ValueError) as e:  # absl raises a bare ValueError for e.g. --nodetect=false
        if debug:
            raise
        cause = _user_error_in(e)
        if cause is not None:
            _fail(cause, cause.exit_code)
        message = str(e).rstrip()
        message += "" if message.endswith((".", "?", "!")) else "."
        _fail(f"{message} Usage: {USAGE} (idfer --helpfull lists the flags; config values are set with "
              "--config.KEY=VALUE, e.g. --config.train.num_steps=100).", UsageError.exit_code)


def main(argv: list[str]) -> None:
    try:
        _main(argv)
    except UserError as e:
        # The user's data, config or workdir, not a bug: the message says what to do, a traceback
        # would bury it (--debug shows it).
        if _debug_requested():
            raise
        _fail(e, e.exit_code)
    except KeyboardInterrupt:
        # Ctrl-C inside the training loop is an `Interrupted` (a UserError) that names the step it resumes
        # from; this is Ctrl-C anywhere else (start-up, preparing data, evaluation).
        if _debug_requested():
            raise
        _fail(INTERRUPTED, 130)
    except OSError as e:
        # The filesystem refused (permission denied, a directory where a file should be, no space
        # left...): name the path and the problem.
        if _debug_requested():
            raise
        _fail(_os_error_line(e), 1)
    except Exception as e:  # noqa: BLE001
        # Not the user's doing: keep the traceback for the bug report, and say so in the last line.
        traceback.print_exc()
        _fail(f"internal error ({type(e).__name__}: {e}). This is a bug in idfer, not in your input: "
              "please report it with the traceback above (rerun with --debug for the full chain).", 1)


def _os_error_line(e: OSError) -> str:
    if e.filename is None:
        return f"{e.strerror or e}."
    path = e.filename if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    problem = e.strerror or str(e)
    fixes = {13: "check the permissions of the path (or choose another --workdir)",
             28: "free some space or choose another --workdir / data dir",
             30: "the filesystem is read-only; choose another --workdir / data dir",
             21: "a directory is in the way of a file; choose another path",
             20: "a file is in the way of a directory; choose another path",
             2: "check the path"}
    fix = fixes.get(e.errno, "check the path")
    return f"{path}: {problem}; {fix}."


def _main(argv: list[str]) -> None:
    commands = argv[1:]
    if commands and commands[0] == "compare":
        given = [f"--{name}" for name in ("config", "workdir", "folds", "multihost", "coordinator_address",
                                          "num_processes", "process_id", *COMMAND_FLAGS)
                 if flags.FLAGS[name].present]
        if given:
            raise UsageError(f"`idfer compare` takes crossval workdirs, not {', '.join(given)}: "
                             "idfer compare DIR [NAME=DIR ...].")
        if len(commands) == 1:
            raise UsageError("Give at least one crossval workdir: idfer compare DIR [NAME=DIR ...].")
        from idfer_jax.train import crossval

        print(crossval.compare(commands[1:]))
        return
    if commands and commands[0] in MODEL_COMMANDS:
        _run_model_command(commands[0], commands[1:])
        return
    if len(commands) != 1 or commands[0] not in COMMANDS:
        close = difflib.get_close_matches(commands[0], COMMANDS, n=1) if len(commands) == 1 else []
        hint = f" Did you mean `idfer {close[0]}`?" if close else ""
        raise UsageError(
            f"Give exactly one command: {' | '.join(COMMANDS)} (got {' '.join(commands) or 'none'}).{hint} "
            f"Usage: {USAGE}"
        )
    wrong = [f"--{name}" for name, commands_of in COMMAND_FLAGS.items()
             if flags.FLAGS[name].present and commands[0] not in commands_of]
    if wrong:
        raise UsageError(
            f"{', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not an option of `idfer {commands[0]}` "
            "and would be ignored; drop it (config values are set with --config.KEY=VALUE, e.g. "
            "--config.train.num_steps=100)."
        )
    config = _CONFIG.value
    if config is None and commands[0] == "evaluate" and _WORKDIR.value:
        config = _saved_config(_WORKDIR.value)  # the checkpoint says how it was trained
    if config is None or not _WORKDIR.value:
        missing = [f for f, v in (("--config=FILE", config), ("--workdir=DIR", _WORKDIR.value))
                   if not v]
        raise UsageError(f"Both --config=FILE and --workdir=DIR are required; missing "
                         f"{' and '.join(missing)}. Usage: {USAGE}")
    if not flags.FLAGS["verbosity"].present:
        # orbax and grain log every checkpoint step at INFO; the progress line is what users read.
        logging.set_verbosity(logging.WARNING)

    workdir = _WORKDIR.value
    if commands[0] == "sweep" and not _SWEEP.value:
        raise UsageError("idfer sweep needs --sweep=KEY=V1,V2,..., e.g. --sweep=adversary.identity=0,1,3,10.")
    if _FOLDS.value is not None:
        if commands[0] not in ("crossval", "sweep"):
            raise UsageError("--folds is a crossval option; use --config.data.fold to pick a fold.")
        if config.data.protocol != "kfold":
            raise UsageError(
                f"--folds sets the number of k-fold folds, but config.data.protocol is "
                f"{config.data.protocol!r}, whose folds are fixed; drop --folds."
            )
        with config.unlocked():
            config.data.num_folds = _FOLDS.value
    # Every value, once the overrides are applied and before anything starts.
    configuration.validate(config)
    if _MULTIHOST.value or _COORDINATOR.value:
        from idfer_jax.train import distributed

        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from idfer_jax import api  # noqa: F401  (the library's imports, while Ctrl-C still exits at once)

    _ctrl_c_raises()
    _run_command(commands[0], config, workdir)


def _saved_config(workdir: str):
    """`idfer evaluate --workdir=DIR` without --config: the config of the newest checkpoint in DIR."""
    from idfer_jax.inference import predictor
    from idfer_jax.train import checkpoint

    step, saved = checkpoint.newest_saved_config(os.path.join(workdir, "checkpoints"))
    if saved is None:
        raise UsageError(f"{workdir} holds no checkpoint whose config reads, so --config=FILE is needed "
                         f"(the training config). Usage: {USAGE}")
    return predictor.config_from_saved(saved)


def _run_model_command(command: str, inputs: list[str]) -> None:
    """predict / export: the model's config is its checkpoint's, so --config and overrides are refused."""
    wrong = [f"--{name}" for name, commands_of in COMMAND_FLAGS.items()
             if flags.FLAGS[name].present and command not in commands_of]
    wrong += ["--config"] if flags.FLAGS["config"].present else []
    wrong += ["--folds"] if flags.FLAGS["folds"].present else []
    if wrong:
        raise UsageError(
            f"{', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not an option of `idfer {command}`: it "
            "reads the model and its config from the checkpoint in --workdir. Usage: " + USAGE)
    if not _WORKDIR.value:
        raise UsageError(
            f"idfer {command} needs --workdir=DIR, the directory of a trained run. Usage: {USAGE}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from idfer_jax.inference import export as export_lib
    from idfer_jax.inference import predict_files

    fmt = _FORMAT.value
    if command == "predict":
        if not inputs:
            raise UsageError(
                "Give the images, folders or videos to read: idfer predict --workdir=DIR INPUT...")
        fmt = fmt or "csv"
        if fmt not in predict_files.FORMATS:
            raise UsageError(f"--format={fmt} is not an output of idfer predict; use csv or jsonl.")
        if _BATCH_SIZE.value < 1:
            raise UsageError(f"--batch_size={_BATCH_SIZE.value}: give at least 1.")
        try:
            predict_files.check_fps(_FPS.value)
        except ValueError as e:
            raise UsageError(f"--fps={_FPS.value}: {e}") from None
        if _DATASET_CROP.value and _DETECT.value:
            raise UsageError("--dataset_crop replaces face detection by the training dataset's fixed box; "
                             "add --no-detect.")
    else:
        fmt = fmt or "saved_model"
        if fmt not in export_lib.FORMATS:
            raise UsageError(
                f"--format={fmt} is not an export format; use {' or '.join(export_lib.FORMATS)}.")
    from idfer_jax import api

    _ctrl_c_raises()
    predictor = api.load(_WORKDIR.value, step=_STEP.value)
    if command == "predict":
        output = _OUTPUT.value or "-"
        try:
            summary = predict_files.predict_files(
                predictor, inputs, output=output, fmt=fmt, annotate=_ANNOTATE.value,
                batch_size=_BATCH_SIZE.value, fps=_FPS.value, detect=_DETECT.value,
                dataset_crop=_DATASET_CROP.value, progress=sys.stderr.isatty())
        except BrokenPipeError:
            # The rows went to a pipe whose reader stopped (`| head`): what it read is what was asked for.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        for line in predict_files.summary_lines(summary, output, _DETECT.value, predictor.record["framing"],
                                                _DATASET_CROP.value):
            print(line, file=sys.stderr, flush=True)
    else:
        directory = _OUTPUT.value or os.path.join(_WORKDIR.value, "export")
        report = api.export(predictor, directory, fmt, check_images=inputs)
        print(report["summary"], flush=True)


def _run_command(command: str, config, workdir: str) -> None:
    from idfer_jax import api
    from idfer_jax.console import announce  # process 0 speaks for a multi-host run

    if command == "train":
        api.train(config, workdir, restart=_RESTART.value)
    elif command == "crossval":
        summary = api.crossval(config, workdir, restart=_RESTART.value)
        acc = summary["mean_std"]["accuracy"]
        announce(f"Accuracy {acc['mean']:.4f} +- {acc['std']:.4f} over {summary['num_folds']} folds; "
                 f"report: {workdir}/crossval_report.md")
    elif command == "sweep":
        from idfer_jax.train import sweep as sweep_lib

        key, values = sweep_lib.parse_grid(_SWEEP.value)
        sweep_lib.check_arguments(key, values, _SELECT.value, _TOLERANCE.value)
        result = api.sweep(config, workdir, key, values, select=_SELECT.value, tolerance=_TOLERANCE.value,
                           restart=_RESTART.value)
        run = result["runs"][result["chosen"]]
        announce(f"Chosen on validation subjects: {key}={run['value']}: test accuracy "
                 f"{run['test']['accuracy']['mean']:.4f} +- {run['test']['accuracy']['std']:.4f}; "
                 f"report: {workdir}/sweep.md")
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


def _exit_on_ctrl_c(signum, frame) -> None:
    """SIGINT during start-up (flags, the config file, importing JAX and the library, joining a multi-host
    system): nothing to save yet, so say so and exit at once. A KeyboardInterrupt raised there instead
    can abort the interpreter inside an extension module's import, or be swallowed by a C callback."""
    os.write(2, f"idfer: error: {INTERRUPTED}\n".encode())
    os._exit(130)


def _ctrl_c_raises() -> None:
    """From here on Ctrl-C is a KeyboardInterrupt again: the training loop turns it into `Interrupted`
    (naming the step the run resumes from), `main` anything else into one line."""
    if signal.getsignal(signal.SIGINT) is _exit_on_ctrl_c:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run() -> None:
    """Console-script entry point."""
    # Before JAX starts its CPU backend, which reads XLA_FLAGS once (see idfer_jax.xla_cpu).
    from idfer_jax.xla_cpu import use_fast_cpu_kernels

    use_fast_cpu_kernels()
    atexit.register(_keep_the_exit_code)
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:  # not when the shell has us ignore it (a background job)
        signal.signal(signal.SIGINT, _exit_on_ctrl_c)
    try:
        app.run(main, flags_parser=_parse_flags)
    except KeyboardInterrupt:
        if _debug_requested(sys.argv):
            raise
        _fail(INTERRUPTED, 130)
    finally:
        if signal.getsignal(signal.SIGINT) is _exit_on_ctrl_c:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    run()
