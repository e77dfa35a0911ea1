"""The generic trainer: any `Method`, on 1 CPU, one GPU, every device of a host or a pod slice.

Data parallelism is `jax.jit` over a `('data',)` device mesh: the global batch is sharded along the batch
axis, parameters and optimizer states are replicated, and XLA inserts the gradient all-reduce. BatchNorm
statistics are therefore global-batch statistics, and the same step gives the same parameters on any
number of devices (up to float reassociation). Each step folds the step number into the run's rng, and
the data iterator's state is checkpointed, so a killed run restarted with the same command continues
exactly where the last checkpoint left it.

The trainer never names a method: `train(config, workdir, build_method)` takes a factory
`build_method(config, data_spec) -> Method` (see `idfer_jax.methods.build`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from idfer_jax import configuration
from idfer_jax.console import announce
from idfer_jax.data import pipeline
from idfer_jax.errors import Interrupted, UserError
from idfer_jax.models import cpu_kernels, weights
from idfer_jax.train import checkpoint as ckpt_lib
from idfer_jax.train import inference_record, writers
from idfer_jax.train import workdir as workdir_lib
from idfer_jax.train.interface import Method, owned

BuildMethod = Callable[[Any, pipeline.DataSpec], Method]
Hook = Callable[[int, Any, dict], None]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    model_state: Any  # non-trainable collections, e.g. {'batch_stats': ...}
    opt_states: dict  # one optimizer state per player, keyed by player name
    rng: jax.Array  # raw uint32 key data, so checkpoints hold plain arrays

    def variables(self) -> dict:
        return {"params": self.params, **self.model_state}


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D ('data',) mesh over `devices` (default: every device of every process)."""
    devices = list(devices) if devices is not None else jax.devices()
    return jax.make_mesh(
        (len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Per-process numpy batch -> global arrays sharded along the batch axis."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def init_state(method: Method, rng: jax.Array, sample_batch: dict) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    variables = dict(method.init(init_rng, sample_batch))
    params = variables.pop("params")
    opt_states = {p.name: p.optimizer.init(owned(params, p)) for p in method.players}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=variables,
        opt_states=opt_states,
        rng=state_rng,
    )


def abstract_train_state(method: Method, sample_batch: dict, sharding) -> TrainState:
    """The TrainState's shapes and dtypes placed with `sharding`: the target a checkpoint is restored
    into. Traced only; a restored state needs no pretrained file (`weights.shapes_only`)."""
    with weights.shapes_only():
        shapes = jax.eval_shape(lambda r: init_state(method, r, sample_batch), jax.random.PRNGKey(0))
    return ckpt_lib.abstract_like(shapes, sharding)


def make_train_step(method: Method) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """One step: each player in order takes `repeats` sub-updates of its own parameter groups."""

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        params, model_state = state.params, state.model_state
        opt_states = dict(state.opt_states)
        metrics: dict[str, jax.Array] = {}
        for i, player in enumerate(method.players):
            player_batch = batch
            if player.prepare is not None:
                extra = player.prepare(params, model_state, batch, jax.random.fold_in(rng, i * 1000 + 999),
                                       state.step)
                player_batch = {**batch, **jax.lax.stop_gradient(extra)}
            for r in range(player.repeats):
                sub_rng = jax.random.fold_in(rng, i * 1000 + r)
                own = owned(params, player)
                rest = {k: v for k, v in params.items() if k not in own}

                def loss_of_own(own_params, rest=rest, sub_rng=sub_rng, player=player, ms=model_state,
                                player_batch=player_batch):
                    return player.loss_fn({**rest, **own_params}, ms, player_batch, sub_rng, state.step)

                (loss, (new_model_state, aux)), grads = jax.value_and_grad(
                    loss_of_own, has_aux=True
                )(own)
                updates, opt_states[player.name] = player.optimizer.update(
                    grads, opt_states[player.name], own
                )
                params = {**params, **optax.apply_updates(own, updates)}
                if player.updates_model_state:
                    model_state = new_model_state
                # Always `<player>/<name>`, so a metric keeps its name when an adversary is switched on.
                metrics[f"{player.name}/loss"] = loss
                metrics.update({f"{player.name}/{k}": v for k, v in aux.items()})
        new_state = state.replace(
            step=state.step + 1, params=params, model_state=model_state, opt_states=opt_states
        )
        return new_state, metrics

    return train_step


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    start_step: int  # 0 for a fresh run, else the restored checkpoint's step
    steps_per_sec: float
    first_metrics: dict
    last_metrics: dict
    spec: pipeline.DataSpec


class Trainer:
    """Holds what training and evaluation share: dataset, method, mesh and jitted functions."""

    def __init__(self, config, build_method: BuildMethod, devices=None):
        # Every value a run reads, before any data is prepared (ConfigError naming the key otherwise).
        configuration.validate(config, recipes=False)  # the API / CLI checked the recipe's part
        # A cross-dataset run's framing is decided once and saved with the config (see the function).
        config = config.copy_and_resolve_references()
        config.data = pipeline.cross_dataset_framing(config.data)
        self.config = config
        # Before the mesh: preparing synthetic data forks render workers, best done before XLA
        # starts its threads.
        self.dataset = pipeline.open_dataset(config.data)
        self.mesh = make_mesh(devices)
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.replicated = NamedSharding(self.mesh, P())
        self.platform = self.mesh.devices.flat[0].platform  # which kernels the models trace (cpu_kernels)
        self._check_batch_sizes()
        self.method = build_method(config, self.dataset.spec)
        # What the method's losses read must be what the pipeline gives (an error naming the data
        # switch here, not a KeyError inside jit).
        pipeline.check_batch_keys(self.method.name, self.method.batch_keys, self.dataset.spec, config.data)
        # Saved with every checkpoint: what `api.load` / `idfer predict` need without this dataset.
        self.inference_record = inference_record.make_record(config, self.dataset.spec,
                                                             self.dataset.fold_file)

    def _check_batch_sizes(self) -> None:
        """What only the data and the devices can tell: batches split evenly over the mesh, and a
        training batch no larger than the training set."""
        n = self.mesh.size
        for name in ("train.batch_size", "eval.batch_size"):
            block, key = name.split(".")
            size = int(self.config[block][key])
            if size % n:
                lower, upper = max(n, size - size % n), size + n - size % n
                raise configuration.ConfigError(
                    f"config.{name}={size} is not divisible by the {n} devices of the mesh; set "
                    f"--config.{name} to a multiple of {n} (e.g. {lower} or {upper}), or run on fewer "
                    "devices."
                )
        batch, num_train = int(self.config.train.batch_size), len(self.dataset.train_indices)
        if batch > num_train:
            fold = self.config.data.get("fold", 0)
            fit = max(n, num_train - num_train % n) if num_train >= n else None
            fix = (f"set --config.train.batch_size to at most {fit}" if fit else
                   "use a dataset with more training images")
            raise configuration.ConfigError(
                f"config.train.batch_size={batch} is larger than the {num_train} training images of "
                f"fold {fold} ({self.config.data.name}); {fix}."
            )

    def jit(self, fn: Callable, **kwargs) -> Callable:
        """`jax.jit(fn, **kwargs)`, with the models' kernels chosen for this mesh's platform."""
        return jax.jit(cpu_kernels.traced_for(self.platform, fn), **kwargs)

    def sample_batch(self) -> dict:
        """Zeros shaped like a training batch of this run (every key the pipeline gives)."""
        return jax.tree.map(jnp.asarray, pipeline.example_batch(self.dataset.spec, self.config.data))

    def initial_state(self) -> TrainState:
        rng = jax.random.PRNGKey(self.config.seed)
        init = self.jit(
            lambda r: init_state(self.method, r, self.sample_batch()),
            out_shardings=self.replicated,
        )
        state = init(rng)
        self.check_outputs(state.variables())
        if self.method.frozen_variables is not None:
            frozen = jax.device_put(self.method.frozen_variables(), self.replicated)
            _check_frozen(state.model_state, frozen)
            state = state.replace(model_state={**state.model_state, **frozen})
        return state

    def jitted_train_step(self) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
        """The sharded step `train` runs (and `idfer bench` times): state replicated, batch split."""
        return self.jit(
            make_train_step(self.method),
            in_shardings=(self.replicated, self.batch_sharding),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=0,
        )

    def check_outputs(self, variables) -> None:
        """ConfigError unless `method.apply` returns what evaluation reads: 'logits' (N, num_classes)
        and 'features' (N, D), the expression features the leakage probes read (traced, not run)."""
        h, w, c = self.dataset.spec.image_shape
        images = jax.ShapeDtypeStruct((2, h, w, c), jnp.float32)
        outputs = jax.eval_shape(self.method.apply, variables, images)
        missing = [k for k in ("logits", "features") if k not in outputs]
        if missing:
            raise configuration.ConfigError(
                f"{self.method.name}'s apply(variables, images) returns {sorted(outputs)}, without "
                f"{missing}: evaluation needs 'logits' (N, num_classes) and 'features' (N, D), the "
                "expression features the leakage probes read. Return both from the model (see "
                "train/interface.py)."
            )

    def abstract_state(self) -> TrainState:
        return abstract_train_state(self.method, self.sample_batch(), self.replicated)

    def checkpointer(self, workdir: str, *, create: bool = True) -> ckpt_lib.Checkpointer:
        t = self.config.train
        return ckpt_lib.Checkpointer(
            os.path.join(workdir, "checkpoints"),
            save_every=t.checkpoint_every,
            keep=t.keep_checkpoints,
            async_save=t.get("async_checkpoints", True),
            create=create,
        )

    def restore_variables(self, workdir: str) -> tuple[int, dict]:
        """The latest checkpoint's (step, variables) for inference. Reads only: an unreadable newest
        checkpoint is skipped (with a warning) but left where it is."""
        directory = os.path.join(workdir, "checkpoints")
        train_first = (f"Train first with `idfer train --config=... --workdir={workdir}` (the same config "
                       "and workdir), then evaluate.")
        if not os.path.isdir(directory):
            raise NoCheckpointError(f"No checkpoint in {workdir} (it has no checkpoints/ folder). "
                                    f"{train_first}")
        checkpointer = self.checkpointer(workdir, create=False)
        try:
            step, state = checkpointer.restore_latest(
                self.abstract_state(), config=self.config.to_dict(), move_corrupt=False
            )
        finally:
            checkpointer.close()
        if state is None:
            raise NoCheckpointError(f"No checkpoint in {directory}. {train_first}")
        return step, state.variables()

    def train(self, workdir: str, hooks: Iterable[Hook] = (), *, restart: bool = False) -> TrainResult:
        """Trains, or resumes the run in `workdir` (see `checkpoint` for what a resume accepts).

        Nothing in `workdir` is written before the newest checkpoint's config is checked. The workdir is
        locked for the run (a second run on it is refused, naming this one's pid). `restart`: when every
        checkpoint in `workdir` is unreadable, start over from step 0 (they are moved aside) instead of
        refusing. A loss or parameters that become NaN/inf stop the run (`NonFiniteLossError`) before a
        non-finite state is saved; Ctrl-C stops it with `Interrupted`, saying which step it resumes from.
        """
        is_main = jax.process_index() == 0
        lock = workdir_lib.locked(workdir) if is_main else contextlib.nullcontext(workdir)
        with lock:
            return self._train(os.fspath(workdir), list(hooks), restart=restart)

    def _train(self, workdir: str, hooks: list[Hook], *, restart: bool) -> TrainResult:
        config = self.config
        num_steps = int(config.train.num_steps)
        is_main = jax.process_index() == 0
        loader = pipeline.train_loader(
            self.dataset, config.data, global_batch_size=config.train.batch_size,
            seed=config.seed,
        )
        iterator = iter(loader)
        checkpointer = self.checkpointer(workdir)
        self._step = None
        try:
            try:
                start_step, state = checkpointer.restore_latest(
                    self.abstract_state(), iterator, config=config.to_dict(), restart=restart
                )
                stage = self.method.finishing_stage
                if start_step is not None:
                    self._check_budget(start_step, num_steps, stage, workdir)
                # The config check passed: from here on the workdir may be written.
                if is_main:
                    _write_json_atomically(os.path.join(workdir, "folds.json"), self.dataset.fold_file)
                if state is None:
                    start_step, state = 0, self.initial_state()
                else:
                    announce(f"Resuming from checkpoint at step {start_step} in {workdir}.")
                writer = writers.MetricWriter(workdir, resume_step=start_step)
            except BaseException:
                checkpointer.close()
                raise
            try:
                return self._loop(workdir, hooks, checkpointer, writer, iterator, state, start_step)
            finally:
                checkpointer.close()
                writer.close()
        except KeyboardInterrupt:
            raise ckpt_interrupted(checkpointer, workdir, num_steps, self._step) from None

    def _check_budget(self, start_step: int, num_steps: int, stage, workdir: str) -> None:
        final = num_steps + (stage.steps if stage is not None else 0)
        if start_step > num_steps and start_step != final:
            raise ckpt_lib.CheckpointMismatchError(
                f"The run in {workdir} is already at step {start_step}, past train.num_steps={num_steps}: "
                "there is nothing to train. Evaluate it (`idfer evaluate` with the same config and "
                f"workdir), extend it with --config.train.num_steps above {start_step}, or train "
                f"{num_steps} steps in a new --workdir."
            )

    def _loop(self, workdir, hooks, checkpointer, writer, iterator, state, start_step) -> TrainResult:
        config = self.config
        num_steps = int(config.train.num_steps)
        is_main = jax.process_index() == 0
        train_step = self.jitted_train_step()
        progress = writers.Progress(num_steps, config.train.batch_size, start_step)
        log_every = max(1, int(config.train.log_every))
        window: list[dict] = []
        window_start = start_step + 1
        first_metrics: dict = {}
        last_metrics: dict = {}
        finite = _finite_check()
        for step in range(start_step + 1, num_steps + 1):
            self._step = step
            batch = to_global(next(iterator), self.batch_sharding)
            state, metrics = train_step(state, batch)
            window.append(metrics)
            if step == start_step + 1:
                first_metrics = _mean(jax.device_get(window))
                progress.mark_compiled(step)
            force = step == num_steps
            saving = force or checkpointer.should_save(step)
            if step % log_every == 0 or force:
                host = jax.device_get(window)
                self._check_finite(host, window_start, None, checkpointer, workdir)
                last_metrics = _mean(host)
                window, window_start = [], step + 1
                line = progress.line(step, last_metrics)
                rate = progress.steps_per_sec
                if rate == rate:
                    last_metrics["steps_per_sec"] = rate
                writer.write(step, last_metrics)
                if is_main:
                    print(line, flush=True)
            if saving:
                # Never save a state that is not finite: the last good checkpoint must stay the newest.
                self._check_finite(jax.device_get(window), window_start,
                                   None if bool(finite(state.params)) else step, checkpointer, workdir)
            checkpointer.save(step, state, iterator, config.to_dict(), inference=self.inference_record,
                              force=force)
            for hook in hooks:
                hook(step, state, metrics)
        stage = self.method.finishing_stage
        if stage is not None and int(state.step) == num_steps:
            if is_main:
                print(f"Finishing stage: {stage.description} ({stage.steps} steps).", flush=True)
            state = stage.run(self, state)
            if not bool(finite(state.params)):
                self._check_finite([], 0, int(state.step), checkpointer, workdir)
            checkpointer.save(int(state.step), state, iterator, config.to_dict(),
                              inference=self.inference_record, force=True)
        return TrainResult(
            state=state,
            start_step=start_step,
            steps_per_sec=progress.steps_per_sec,
            first_metrics=first_metrics,
            last_metrics=last_metrics,
            spec=self.dataset.spec,
        )

    def _check_finite(self, window: list[dict], window_start: int, bad_params_step: int | None,
                      checkpointer: ckpt_lib.Checkpointer, workdir: str) -> None:
        """Raises NonFiniteLossError at the first step of `window` whose loss is NaN/inf (or when the
        parameters after `bad_params_step` are), naming the last good checkpoint."""
        found = None
        for i, metrics in enumerate(window):
            bad = {k: float(v) for k, v in metrics.items()
                   if k.endswith("/loss") and not np.all(np.isfinite(v))}
            if bad:
                found = (window_start + i, ", ".join(f"{k} = {v}" for k, v in bad.items()))
                break
        if found is None and bad_params_step is not None:
            found = (bad_params_step, "the parameters are no longer finite")
        if found is None:
            return
        step, what = found
        checkpointer.wait()
        latest = checkpointer.latest_step()
        kept = (f"The last good checkpoint, step {latest} in {checkpointer.directory}, is kept (nothing "
                "after the loss diverged was saved)." if latest is not None
                else "No checkpoint had been saved yet.")
        lr = self.config.optimizer.get("learning_rate")
        raise NonFiniteLossError(
            f"Training diverged at step {step}: {what}. {kept} Lower --config.optimizer.learning_rate "
            f"(now {lr}) or raise --config.optimizer.warmup_steps, and train in a new --workdir (a resume "
            "keeps the learning rate)."
        )


class NoCheckpointError(UserError, FileNotFoundError):
    """The work directory holds no checkpoint to evaluate."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss (or the parameters) became NaN or infinite; the run stopped before saving them."""


def ckpt_interrupted(checkpointer: ckpt_lib.Checkpointer, workdir: str, num_steps: int,
                     step: int | None) -> Interrupted:
    """Ctrl-C: waits for a checkpoint being written, then says which step the same command resumes from."""
    try:
        checkpointer.close()
    except Exception:  # noqa: BLE001 - already closed, or the save itself was cut: report what is there
        pass
    at = f"Interrupted at step {step} of {num_steps}" if step else "Interrupted before training started"
    saved = ckpt_lib.newest_saved_config(checkpointer.directory)[0]
    if saved is None:
        return Interrupted(f"{at}; no checkpoint in {workdir} yet: the same command starts over from step 0.")
    return Interrupted(f"{at}; the newest checkpoint in {workdir} is step {saved}: run the same command to "
                       f"resume from step {saved}.")


def _write_json_atomically(path: str, data) -> None:
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError as e:
        raise ckpt_lib.workdir_error(e, path, "write") from e


def _finite_check() -> Callable[[Any], jax.Array]:
    def all_finite(tree) -> jax.Array:
        leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                  if jnp.issubdtype(x.dtype, jnp.inexact)]
        return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)

    return jax.jit(all_finite)


def _check_frozen(model_state: dict, frozen: dict) -> None:
    """The loaded weights must have exactly the shapes the method's init made."""
    for name, tree in frozen.items():
        expected = jax.tree.map(lambda x: (x.shape, x.dtype), model_state.get(name))
        got = jax.tree.map(lambda x: (x.shape, x.dtype), tree)
        if expected != got:
            raise ValueError(
                f"The frozen weights {name!r} do not fit the model: the checkpoint holds another "
                "network or another size. Re-run its converter, or check the config that names them."
            )


def _mean(metrics: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
