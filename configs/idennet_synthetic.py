"""IDEnNet (expression and identity streams, fused) on the embedded synthetic faces (no download needed).

    idfer train    --config=configs/idennet_synthetic.py --workdir=/tmp/idennet
    idfer evaluate --config=configs/idennet_synthetic.py --workdir=/tmp/idennet
    idfer crossval --config=configs/idennet_synthetic.py --workdir=/tmp/idennet_cv

`:smoke` is a tiny run for tests and first contact. Data, protocol, optimizer and budget are the
baseline's (`configs/baseline_synthetic.py`), so the two compare directly. The recipe's switches, and which
of them are [choice], are in `idfer_jax/methods/idennet.py`.
"""

from idfer_jax import config_defaults as defaults
from idfer_jax.methods import idennet


def get_config(arg: str | None = None):
    return defaults.synthetic_run("idennet", idennet.model_config(), arg)
