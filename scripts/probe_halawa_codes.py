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

import numpy as np
from absl import app
from ml_collections import config_flags

from idfer_jax import evaluation as E
from idfer_jax import methods
from idfer_jax.train.crossval import fold_config
from idfer_jax.train.evaluate import collect_outputs
from idfer_jax.train.trainer import Trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file.")


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
        c = collect_outputs(trainer, variables, trainer.dataset.test_indices,
                            output_keys=("features", "nuisance_features"))
        train, test = E.split_within_subjects(c["subject"], seed=0)
        num_classes = len(trainer.dataset.spec.class_names)
        row = {"fold": fold, "chance": 1.0 / num_classes}
        for name, key in (("z_e", "features"), ("z_n", "nuisance_features")):
            row[f"expression probe on {name}"] = E.linear_probe_accuracy(
                c[key][train], c["expression"][train], c[key][test], c["expression"][test],
                num_classes=num_classes)
        rows.append(row)
        print(row, flush=True)
    mean = {k: f"{np.mean([r[k] for r in rows]):.3f} ± {np.std([r[k] for r in rows]):.3f}"
            for k in rows[0] if k != "fold"}
    print(E.markdown_table([{"fold": "mean ± std", **mean}]))


if __name__ == "__main__":
    app.run(main)
