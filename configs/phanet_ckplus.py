"""PhaNet (hierarchical attention, expression and pose) on CK+48: 7 classes, subject-independent 10-fold CV.

    idfer crossval --config=configs/phanet_ckplus.py --workdir=workdirs/phanet_ckplus \
        --config.data.manual_dir=/path/to/the/download

Data, protocol, optimizer and budget are those of `configs/baseline_ckplus.py` (see it for the download
layout), so the two compare directly. The recipe's switches are in `idfer_jax/methods/phanet.py`.
CK+ has no head-pose labels, so PhaNet's pose term is off here (the run says so).
"""

from idfer_jax import config_defaults as defaults
from idfer_jax.methods import phanet


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"Unknown config argument {arg!r}; this config takes none.")
    model = phanet.model_config(backbone="resnet_small", dropout=0.2)
    return defaults.benchmark_run("phanet", model, "ckplus")
