"""Halawa et al. (adversarial disentangling) on CK+48: 7 classes, subject-independent 10-fold CV.

    idfer crossval --config=configs/halawa_ckplus.py --workdir=workdirs/halawa_ckplus \
        --config.data.manual_dir=/path/to/the/download

Data, protocol, optimizer and budget are those of `configs/baseline_ckplus.py` (see it for the download
layout), so the two compare directly. The formulation is
`--config.adversary.formulation=uniform|grl|negated_ce`; `--config.adversary.identity=1` adds the identity
adversary on z_e (these sets have no yaw for a pose adversary). The recipe's switches are in
`idfer_jax/methods/halawa.py`.
"""

from idfer_jax import config_defaults as defaults
from idfer_jax.methods import halawa


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"Unknown config argument {arg!r}; this config takes none.")
    model = halawa.model_config(backbone="resnet_small", dropout=0.2)
    return defaults.benchmark_run("halawa", model, "ckplus")
