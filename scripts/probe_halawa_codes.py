"""How much expression each of Halawa et al.'s codes carries: linear expression probes on z_e and z_n.

    python scripts/probe_halawa_codes.py WORKDIR --config=configs/halawa_synthetic.py [--config.KEY=...]

WORKDIR is an `idfer crossval` directory (one `fold_<i>` per fold) or a single `idfer train` workdir; the
config and overrides must be those of the run. For each fold's last checkpoint, a fresh linear probe is fit
on the held-out subjects' codes (split by image within each subject, as the identity probe) and scored on
the other half. The recipe wants z_e to carry the expression and z_n not to: z_n's probe should sit near
chance.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import app
from ml_collections import config_flags

from idfer_jax import eval as E
from idfer_jax import methods
from idfer_jax.data import pipeline
from idfer_jax.train.crossval import fold_config
from idfer_jax.train.trainer import Trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file.")


def codes(trainer: Trainer, variables) -> dict[str, np.ndarray]:
    apply = jax.jit(trainer.method.apply)
    chunks: dict[str, list] = {}
    batches = pipeline.eval_batches(trainer.dataset, trainer.dataset.test_indices,
                                    global_batch_size=trainer.config.eval.batch_size)
    for batch in batches:
        out = jax.device_get(apply(variables, batch["image"]))
        for key, value in (("z_e", out["features"]), ("z_n", out["nuisance_features"]),
                           ("expression", batch["expression"]), ("subject", batch["subject"]),
                           ("mask", batch["mask"])):
            chunks.setdefault(key, []).append(np.asarray(value))
    collected = {k: np.concatenate(v) for k, v in chunks.items()}
    real = collected.pop("mask") > 0
    return {k: v[real] for k, v in collected.items()}


def main(argv):
    if len(argv) != 2:
        raise app.UsageError(__doc__)
    workdir = argv[1]
    config = _CONFIG.value
    folds = sorted(d for d in os.listdir(workdir) if d.startswith("fold_"))
    runs = ([(int(d.split("_")[1]), os.path.join(workdir, d)) for d in folds]
            or [(config.data.fold, workdir)])
    rows = []
    for fold, run_dir in runs:
        trainer = Trainer(fold_config(config, fold), methods.build)
        _, variables = trainer.restore_variables(run_dir)
        c = codes(trainer, variables)
        train, test = E.split_within_subjects(c["subject"], seed=0)
        num_classes = len(trainer.dataset.spec.class_names)
        row = {"fold": fold, "chance": 1.0 / num_classes}
        for key in ("z_e", "z_n"):
            row[f"expression probe on {key}"] = E.linear_probe_accuracy(
                c[key][train], c["expression"][train], c[key][test], c["expression"][test],
                num_classes=num_classes)
        rows.append(row)
        print(row, flush=True)
    mean = {k: f"{np.mean([r[k] for r in rows]):.3f} ± {np.std([r[k] for r in rows]):.3f}"
            for k in rows[0] if k != "fold"}
    print(E.markdown_table([{"fold": "mean ± std", **mean}]))


if __name__ == "__main__":
    app.run(main)
