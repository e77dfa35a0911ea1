"""IDEnNet (expression and identity streams, fused) on CK+48: 7 classes, subject-independent 10-fold CV.

    idfer crossval --config=configs/idennet_ckplus.py --workdir=workdirs/idennet_ckplus \
        --config.data.manual_dir=/path/to/the/download

Data, protocol, optimizer and budget are those of `configs/baseline_ckplus.py` (see it for the download
layout), so the two compare directly. The recipe's switches are in `idfer_jax/methods/idennet.py`.
"""

from idfer_jax import config_defaults as defaults
from idfer_jax.methods import idennet


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"Unknown config argument {arg!r}; this config takes none.")
    model = idennet.model_config(backbone="resnet_small", dropout=0.2)
    return defaults.benchmark_run("idennet", model, "ckplus")
