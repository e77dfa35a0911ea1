"""`idfer sweep`: one recipe over a grid of values of one config key (an adversary's weight, say), as a
trade-off curve of expression accuracy against leakage, with the value to report chosen honestly.

    idfer sweep --config=configs/baseline_synthetic.py --workdir=DIR --sweep=adversary.identity=0,1,3,10

Every value is a full cross-validation in `DIR/<key>=<value>/` (resumable fold by fold, and readable by
`idfer compare`). Every run holds out `config.data.validation_fraction` of each fold's *training*
subjects (0.25 when the config sets none [choice]) and `idfer evaluate` measures accuracy and leakage on
them as well as on the test fold. The value reported as *the* result is chosen on those validation
subjects only [choice of rule]: among the values whose mean validation accuracy is at least the
baseline's (the value 0, i.e. the term switched off) minus `tolerance`, the one with the lowest mean
validation leakage; the test fold never takes part in the choice. Without a baseline value in the grid,
the rule compares with the best validation accuracy instead.

Leakage is the identity probe (the larger of the linear and MLP probes) for an identity-like key and
the yaw R^2 for a pose key (`select=`). Writes `sweep_results.json` (every number), `sweep.md` (the
table, the choice and the rule) and `sweep.png` (accuracy vs each leakage measure on the test folds,
baseline and chosen value marked).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Sequence

import jax

from idfer_jax.configuration import ConfigError
from idfer_jax.console import announce
from idfer_jax.evaluation import metrics as E
from idfer_jax.evaluation.report import markdown_table, write_report
from idfer_jax.train import crossval as crossval_lib

DEFAULT_VALIDATION_FRACTION = 0.25  # [choice] a quarter of each fold's training subjects
SELECTIONS = ("identity", "pose")


def parse_grid(spec: str) -> tuple[str, list[str]]:
    """'adversary.identity=0,1,3' -> ('adversary.identity', ['0', '1', '3']); `with_value` casts them."""
    key, sep, values = (spec or "").partition("=")
    key = key.strip().removeprefix("config.")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key or len(items) < 2:
        raise ConfigError(
            f"--sweep={spec!r} must be KEY=V1,V2[,...] with at least two values, e.g. "
            "--sweep=adversary.identity=0,1,3,10 (0 = the baseline, the term off).")
    if len(set(items)) < len(items):
        raise ConfigError(f"--sweep={spec!r} repeats a value; give each value once.")
    return key, items


def with_value(config, key: str, text: str):
    """(a copy of `config` with the dotted `key` set to `text`, the value) cast to the key's type."""
    config = config.copy_and_resolve_references()
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        if p not in node or not hasattr(node[p], "keys"):
            blocks = [k for k in node.keys() if hasattr(node[k], "keys")]
            raise ConfigError(f"--sweep key config.{key} does not exist in this config (no {p!r} block)."
                              f"{_suggestion(p, blocks)} Blocks: {', '.join(sorted(blocks))}.")
        node = node[p]
    if leaf not in node:
        hint = _suggestion(leaf, node.keys())
        raise ConfigError(f"--sweep key config.{key} does not exist in this config.{hint} That block has: "
                          f"{', '.join(sorted(node.keys()))}.")
    current = node[leaf]
    if isinstance(current, bool) or not isinstance(current, (int, float, str)):
        raise ConfigError(f"config.{key} holds {current!r}; a sweep sets numbers or strings only.")
    value = text
    if isinstance(current, (int, float)):
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"config.{key} is a number; --sweep gave {text!r}.") from None
        if isinstance(current, int):
            if not value.is_integer():
                raise ConfigError(f"config.{key} is an integer; --sweep gave {text!r}.")
            value = int(value)
    with config.unlocked():
        node[leaf] = value
    return config, value


def _suggestion(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_arguments(key: str, values: Sequence[str], select: str, tolerance: float) -> None:
    """What a sweep can refuse before any training: ConfigError naming the fix."""
    if select and select not in SELECTIONS:
        raise ConfigError(f"--select={select!r}: use one of {', '.join(SELECTIONS)}.")
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ConfigError(f"--tolerance={tolerance} must be a number >= 0: the validation accuracy the "
                          "chosen value may lose against the baseline, e.g. --tolerance=0.01.")
    if key == "data.validation_fraction" and any(_number(v) is not None and _number(v) <= 0 for v in values):
        raise ConfigError("--sweep=data.validation_fraction=... must be > 0 for every value: the sweep "
                          "chooses on the validation subjects.")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def default_selection(key: str) -> str:
    return "pose" if "pose" in key.split(".")[-1] else "identity"


def _fold_results(run_dir: str, num_folds: int) -> list[dict]:
    out = []
    for fold in range(num_folds):
        with open(os.path.join(run_dir, f"fold_{fold}", "eval_results.json")) as f:
            out.append(json.load(f))
    return out


def _identity_leak(block: dict) -> float | None:
    values = [block.get(k) for k in ("identity_linear", "identity_mlp") if block.get(k) is not None]
    return max(values) if values else None


def _test_numbers(r: dict) -> dict:
    identity = r.get("identity_leakage") or {}
    probes = [identity[k] for k in ("linear_acc", "mlp_acc") if k in identity]
    return {
        "accuracy": r["accuracy"],
        "identity_probe": max(probes) if probes else None,
        "identity_chance": identity.get("chance"),
        "verification_auc": r.get("verification_auc"),
        "yaw_r2": (r.get("pose_leakage") or {}).get("yaw_r2"),
    }


def _validation_numbers(r: dict) -> dict:
    v = r.get("validation") or {}
    if "accuracy" not in v:
        raise ConfigError(
            f"fold {r.get('fold')} has no validation results; the sweep needs "
            "config.data.validation_fraction > 0 in every run (rerun it in a new --workdir).")
    return {"accuracy": v["accuracy"], "identity_probe": _identity_leak(v),
            "identity_chance": v.get("identity_chance"), "yaw_r2": v.get("yaw_r2")}


def _mean_std(rows: Sequence[dict], key: str) -> dict | None:
    values = [row[key] for row in rows if row.get(key) is not None]
    if len(values) < len(rows) or not values:
        return None
    mean, std = E.mean_and_std(values)
    return {"mean": mean, "std": std}


def choose(runs: Sequence[dict], select: str, tolerance: float) -> tuple[int, str]:
    """(index of the chosen run, the rule as a sentence), from validation numbers only."""
    leak_key = "identity_probe" if select == "identity" else "yaw_r2"
    off_run = next((i for i, r in enumerate(runs) if r["value"] == 0), None)
    accuracy = [r["validation"]["accuracy"]["mean"] for r in runs]
    reference = accuracy[off_run] if off_run is not None else max(accuracy)
    leaks = [(r["validation"].get(leak_key) or {}).get("mean") for r in runs]
    if any(v is None for v in leaks):
        raise ConfigError(f"The sweep selects on validation {leak_key}, which these runs did not measure "
                          f"(no {'subject ids' if select == 'identity' else 'yaw labels'} in the data?); "
                          f"choose with --select={'pose' if select == 'identity' else 'identity'}.")
    eligible = [i for i in range(len(runs)) if accuracy[i] >= reference - tolerance]
    chosen = min(eligible, key=lambda i: (leaks[i], -accuracy[i]))
    against = "the baseline's (value 0)" if off_run is not None else "the best"
    rule = (f"lowest mean validation {leak_key.replace('_', ' ')} among the values whose mean validation "
            f"accuracy is at least {against} {reference:.4f} minus {tolerance}; validation = held-out "
            "training subjects of each fold, never the test fold")
    return chosen, rule


def sweep(config, workdir: str, key: str, values: Sequence, build_method, *, select: str = "",
          tolerance: float = 0.01, devices=None, restart: bool = False) -> dict:
    """Cross-validates `config` with `key` set to each of `values` (their text, as `parse_grid` gives
    them); see the module docstring. Returns what `sweep_results.json` holds."""
    check_arguments(key, values, select, tolerance)
    select = select or default_selection(key)
    config = config.copy_and_resolve_references()
    with_value(config, key, values[0])  # an unknown key fails before the notice below
    if float(config.data.get("validation_fraction", 0.0) or 0.0) <= 0:
        with config.unlocked():
            config.data.validation_fraction = DEFAULT_VALIDATION_FRACTION
        announce(f"idfer sweep: holding out {DEFAULT_VALIDATION_FRACTION} of each fold's training subjects "
                 "as the validation split (set --config.data.validation_fraction to change it).")
    from idfer_jax import configuration

    grid = [with_value(config, key, text) for text in values]  # every value checked before any run
    for cfg, _ in grid:
        configuration.validate(cfg)
    runs = []
    for text, (cfg, value) in zip(values, grid, strict=True):
        run_dir = os.path.join(workdir, f"{key}={text}")
        announce(f"=== idfer sweep: {key}={text} -> {run_dir}")
        summary = crossval_lib.crossval(cfg, run_dir, build_method, devices=devices, restart=restart)
        per_fold = _fold_results(run_dir, summary["num_folds"])
        tests = [_test_numbers(r) for r in per_fold]
        vals = [_validation_numbers(r) for r in per_fold]
        runs.append({
            "value": value,
            "workdir": os.path.basename(run_dir),
            "num_folds": summary["num_folds"],
            "test": {k: _mean_std(tests, k) for k in tests[0]},
            "validation": {k: _mean_std(vals, k) for k in vals[0]},
            "test_per_fold": tests,
            "validation_per_fold": vals,
        })
    chosen, rule = choose(runs, select, tolerance)
    result = {"key": key, "values": [r["value"] for r in runs], "select": select, "tolerance": tolerance,
              "chosen": chosen, "chosen_value": runs[chosen]["value"], "rule": rule,
              "validation_fraction": float(config.data.validation_fraction),
              "method": config.method, "runs": runs}
    if jax.process_index() == 0:
        write_outputs(workdir, result)
    return result


def _cell(stat: dict | None) -> str:
    return "" if stat is None else f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def table_rows(result: dict) -> list[dict]:
    rows = []
    for i, r in enumerate(result["runs"]):
        t, v = r["test"], r["validation"]
        mark = " (chosen)" if i == result["chosen"] else (" (baseline)" if r["value"] == 0 else "")
        rows.append({
            result["key"]: f"{r['value']}{mark}",
            "test accuracy": _cell(t["accuracy"]),
            "test identity probe": _cell(t["identity_probe"]),
            "test identity chance": _cell(t["identity_chance"]),
            "test verification AUC": _cell(t["verification_auc"]),
            "test yaw R²": _cell(t["yaw_r2"]),
            "validation accuracy": _cell(v["accuracy"]),
            "validation identity probe": _cell(v["identity_probe"]),
            "validation identity chance": _cell(v["identity_chance"]),
            "validation yaw R²": _cell(v["yaw_r2"]),
        })
    keep = [k for k in rows[0] if any(row[k] for row in rows)]
    return [{k: row[k] for k in keep} for row in rows]


def write_outputs(workdir: str, result: dict) -> None:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "sweep_results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(path + ".tmp", path)
    plotted = plot(result, os.path.join(workdir, "sweep.png"))
    chosen = result["runs"][result["chosen"]]
    sections = [
        ("Choice", f"Reported value: **{result['key']}={chosen['value']}** ({result['rule']}; "
                   f"validation fraction {result['validation_fraction']})."),
        ("Mean ± std over folds", "Identity probe: the larger of the linear and MLP probes (lower is "
         "better; its chance beside it: the validation split holds fewer subjects than the test fold); "
         "verification AUC: 0.5 = no identity; yaw R²: lower is better.\n\n"
         + markdown_table(table_rows(result))),
        ("Runs", "Each value's cross-validation is in its own directory: "
         + ", ".join(f"`{r['workdir']}/`" for r in result["runs"]) + " (`idfer compare` reads them)."),
    ]
    if plotted:
        sections.append(("Trade-off", "Test-fold accuracy against leakage (mean ± std over folds); star = "
                         "baseline, ring = chosen on validation.\n\n![sweep](sweep.png)"))
    write_report(os.path.join(workdir, "sweep.md"),
                 title=f"idfer sweep: {result['method']}, {result['key']}", sections=sections)


def plot(result: dict, path: str) -> bool:
    """Accuracy vs each leakage measure the runs have (identity probe, yaw R^2); False if none."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = result["runs"]
    panels = [(k, label) for k, label in (("identity_probe", "identity probe (max of linear, MLP)"),
                                          ("yaw_r2", "yaw R²"))
              if all(r["test"].get(k) for r in runs)]
    if not panels:
        return False
    fig = Figure(figsize=(5 * len(panels), 4))
    FigureCanvasAgg(fig)
    for n, (k, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), n + 1)
        xs = [r["test"][k]["mean"] for r in runs]
        ys = [r["test"]["accuracy"]["mean"] for r in runs]
        ax.errorbar(xs, ys, xerr=[r["test"][k]["std"] for r in runs],
                    yerr=[r["test"]["accuracy"]["std"] for r in runs], fmt="o-", capsize=3)
        for r, x, y in zip(runs, xs, ys, strict=True):
            ax.annotate(str(r["value"]), (x, y),
                        textcoords="offset points", xytext=(5, 5), fontsize=8)
            if r["value"] == 0:
                ax.plot([x], [y], marker="*", markersize=15, color="black", linestyle="none",
                        label="baseline")
                ax.axhline(y - result["tolerance"], color="black", linestyle="--", linewidth=0.8,
                           label=f"baseline accuracy - {result['tolerance']:g}")
        i = result["chosen"]
        ax.plot([xs[i]], [ys[i]], marker="o", markersize=14, markerfacecolor="none", color="red",
                linestyle="none", label="chosen (validation)")
        chance = runs[0]["test"].get("identity_chance") if k == "identity_probe" else None
        if chance:
            ax.axvline(chance["mean"], color="grey", linestyle=":", label="identity chance")
        ax.set_xlabel(f"test {label} (lower = less leakage)")
        ax.set_ylabel("test expression accuracy")
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['method']}: {result['key']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True
