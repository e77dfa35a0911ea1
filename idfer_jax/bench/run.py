"""`idfer bench`: train-step throughput of each recipe, as a table and JSON, beside a PyTorch reference.

For every recipe x dtype x device count: compile time (the first step) and images/s with in-memory batches
(the step alone) and with the real grain pipeline feeding it; the pipeline alone once per recipe, so an
input-bound run shows (the pipeline should deliver at least twice what the step consumes). The PyTorch
reference trains the baseline's network on the same batch and resolution (`torch_reference`), giving the
JAX / PyTorch ratio at 1 device with in-memory batches.
"""

from __future__ import annotations

import json
import os
import platform
from typing import Any

import jax

from idfer_jax import methods
from idfer_jax.bench import throughput
from idfer_jax.configuration import DTYPES, load_config_file
from idfer_jax.console import announce
from idfer_jax.errors import UserError
from idfer_jax.train import trainer as trainer_lib


class BenchError(UserError, ValueError):
    """A bench option that cannot be measured as given; the message says what to pass."""


# What the recipes' sibling configs take from the benched config, so all run on the same data and batch.
SHARED_KEYS = ("seed", "train.batch_size", "data.data_dir", "data.manual_dir", "data.config",
               "data.image_size", "data.worker_count")


def recipe_configs(config_spec: str, config, recipes: str) -> list:
    """`own` -> [config]; `all` or `a,b` -> each recipe's config file beside CONFIG with the same dataset
    suffix and argument (configs/baseline_synthetic.py:smoke -> configs/idennet_synthetic.py:smoke), with
    CONFIG's data, batch and seed."""
    if recipes in ("", "own"):
        return [config]
    known = tuple(methods.METHODS)  # the registry, registered recipes too
    listed = tuple(r.strip() for r in recipes.split(",") if r.strip())
    names = methods.BUILT_IN if recipes == "all" else listed
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise BenchError(f"Unknown recipes {unknown} for --recipes; use own, all or some of {known}.")
    path, _, arg = config_spec.partition(":")
    directory, filename = os.path.split(path)
    method, sep, suffix = filename.partition("_")
    if not sep or method not in methods.METHODS:
        raise BenchError(f"--recipes needs a config named <recipe>_<dataset>.py to find its siblings; got "
                         f"{filename!r}. Use --recipes=own, or a config from configs/.")
    configs = []
    for name in names:
        if name == config.method:
            configs.append(config)
            continue
        sibling = load_config_file(os.path.join(directory, f"{name}_{suffix}") + (f":{arg}" if arg else ""))
        with sibling.unlocked():
            for key in SHARED_KEYS:
                *parents, leaf = key.split(".")
                source, target = config, sibling
                for p in parents:
                    source, target = source[p], target[p]
                target[leaf] = source[leaf]
        configs.append(sibling)
    return configs


def device_counts(spec: str) -> list[int]:
    """'1,2,all' -> [1, 2, jax.device_count()] (deduplicated, each at most the devices there are)."""
    total = jax.device_count()
    counts = []
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise BenchError(f"--devices is empty; give device counts or 'all', e.g. --devices=1,all "
                         f"(this system has {total}).")
    for part in parts:
        try:
            n = total if part == "all" else int(part)
        except ValueError:
            raise BenchError(f"--devices takes device counts or 'all', e.g. --devices=1,2,all; got {part!r} "
                             f"in --devices={spec} (this system has {total}).") from None
        if not 1 <= n <= total:
            raise BenchError(f"--devices asks for {n} devices; this system has {total}.")
        if n not in counts:
            counts.append(n)
    return counts


def _torch_reference(config, spec, steps: int) -> list[dict[str, Any]]:
    from idfer_jax.bench import torch_reference
    from idfer_jax.models.resnet import resnet_config

    try:
        torch = torch_reference.import_torch()
    except ImportError as e:
        raise BenchError(str(e)) from e

    preset = resnet_config(config.model.backbone)
    if config.model.get("stem"):
        preset["stem"] = config.model.stem
    device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
    variants = [dict(bf16=False), dict(bf16=True)]
    if device == "cuda":  # what a PyTorch user switches on for speed on a GPU
        variants = [dict(bf16=False, channels_last=True, compile=True),
                    dict(bf16=True, channels_last=True, compile=True)]
    rows = []
    for variant in variants:
        result = torch_reference.train_step_throughput(
            preset, batch_size=int(config.train.batch_size), image_shape=spec.image_shape,
            num_classes=spec.num_classes, steps=steps, learning_rate=float(config.optimizer.learning_rate),
            weight_decay=float(config.optimizer.weight_decay),
            grad_clip=float(config.optimizer.grad_clip), device=device, **variant)
        dtype = "bfloat16" if variant["bf16"] else "float32"
        rows.append(dict(recipe="baseline", input="memory", dtype=dtype, devices=1,
                         batch_size=int(config.train.batch_size), image_size=int(spec.image_shape[0]),
                         compile_s=result["warmup_s"],
                         step_s=result["step_s"], images_per_s=result["images_per_s"],
                         framework="pytorch", details=result))
    return rows


def bench(config_spec: str, config, workdir: str, *, recipes: str = "own", devices: str = "1,all",
          dtypes: str = "float32,bfloat16", inputs: str = "memory,pipeline", steps: int = 20,
          with_torch: bool = True) -> dict[str, Any]:
    """Measures, prints the table, writes DIR/bench.json and DIR/bench.md; returns the JSON."""
    dtype_list = [d.strip() for d in dtypes.split(",") if d.strip()]
    if not dtype_list or set(dtype_list) - set(DTYPES):
        raise BenchError(f"--dtypes takes a comma list of {', '.join(DTYPES)}; got {dtypes!r}.")
    input_list = [i.strip() for i in inputs.split(",") if i.strip()]
    if not input_list or set(input_list) - set(throughput.INPUTS):
        raise BenchError(f"--inputs takes a comma list of {', '.join(throughput.INPUTS)}; got {inputs!r}.")
    if int(steps) < 1:
        raise BenchError(f"--steps={steps}: give at least 1 timed step, e.g. --steps=20.")
    counts = device_counts(devices)
    rows: list[dict[str, Any]] = []
    baseline_spec = None
    for recipe_config in recipe_configs(config_spec, config, recipes):
        pipeline_measured = False
        for dtype in dtype_list:
            for n in counts:
                cfg = recipe_config.copy_and_resolve_references()
                with cfg.unlocked():
                    cfg.dtype = dtype
                trainer = trainer_lib.Trainer(cfg, methods.build, jax.devices()[:n])
                if not pipeline_measured and "pipeline" in input_list:
                    rows.append(throughput.measure_pipeline(cfg, trainer.dataset, batches=steps).row())
                    announce(_line(rows[-1]))
                    pipeline_measured = True
                for kind in input_list:
                    rows.append(throughput.measure(cfg, methods.build, input=kind, steps=steps,
                                                   trainer=trainer).row())
                    announce(_line(rows[-1]))
                if cfg.method == "baseline":
                    baseline_spec = (recipe_config, trainer.dataset.spec)
    if with_torch:
        from idfer_jax.models.resnet import PRESETS

        if baseline_spec is None:
            announce("PyTorch reference skipped: it trains the baseline, which is not among --recipes.")
        elif baseline_spec[0].model.backbone not in PRESETS:
            announce(f"PyTorch reference skipped: it is a ResNet, and the baseline's backbone is "
                     f"{baseline_spec[0].model.backbone!r}.")
        else:
            for row in _torch_reference(*baseline_spec, steps):
                if row["dtype"] in dtype_list:
                    rows.append(row)
                    announce(_line(rows[-1]))
    result = {"config": config_spec, "backend": jax.default_backend(),
              "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
              "cpu_count": os.cpu_count(), "machine": platform.machine(), "jax_version": jax.__version__,
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "steps": steps, "rows": rows,
              "ratios": ratios(rows)}
    table = markdown(result)
    announce(table)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "bench.json"), "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(workdir, "bench.md"), "w") as f:
            f.write(table + "\n")
    return result


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """JAX / PyTorch images/s of the baseline at 1 device, in-memory batches, per dtype."""
    out = {}
    for dtype in DTYPES:
        jax_rows = [r for r in rows if r["framework"] == "jax" and r["recipe"] == "baseline"
                    and r["input"] == "memory" and r["devices"] == 1 and r["dtype"] == dtype]
        torch_rows = [r for r in rows if r["framework"] == "pytorch" and r["dtype"] == dtype]
        if jax_rows and torch_rows:
            out[dtype] = jax_rows[0]["images_per_s"] / torch_rows[0]["images_per_s"]
    return out


def _line(row: dict[str, Any]) -> str:
    return (f"{row['framework']:8s} {row['recipe']:9s} {row['input']:13s} {row['dtype']:9s} "
            f"{row['devices']} dev: {row['images_per_s']:8.1f} img/s, first step {row['compile_s']:.1f} s")


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Backend {result['backend']} ({result['device_kind']}, {result['device_count']} devices, "
             f"{result['cpu_count']} CPU cores), jax {result['jax_version']}, {result['steps']} timed steps.",
             "",
             "| framework | recipe | input | dtype | devices | batch | px | first step (s) | ms/step "
             "| images/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        devices = "-" if r["input"] == "pipeline_only" else r["devices"]
        lines.append(f"| {r['framework']} | {r['recipe']} | {r['input']} | {r['dtype']} | {devices} | "
                     f"{r['batch_size']} | {r['image_size']} | {r['compile_s']:.2f} | "
                     f"{1000 * r['step_s']:.1f} | {r['images_per_s']:.1f} |")
    for dtype, ratio in result["ratios"].items():
        lines.append(f"\nJAX / PyTorch, baseline train step, {dtype}, 1 device, in-memory batches: "
                     f"**{ratio:.2f}**")
    return "\n".join(lines)
