"""PhaNet (hierarchical attention, expression and pose) on the embedded synthetic faces (no download needed).

    idfer train    --config=configs/phanet_synthetic.py --workdir=/tmp/phanet
    idfer evaluate --config=configs/phanet_synthetic.py --workdir=/tmp/phanet
    idfer crossval --config=configs/phanet_synthetic.py --workdir=/tmp/phanet_cv

`:smoke` is a tiny run for tests and first contact. Data, protocol, optimizer and budget are the
baseline's (`configs/baseline_synthetic.py`), so the two compare directly. The recipe's switches, and which
of them are [choice], are in `idfer_jax/methods/phanet.py`.
"""

from idfer_jax import config_defaults as defaults
from idfer_jax.methods import phanet


def get_config(arg: str | None = None):
    return defaults.synthetic_run("phanet", phanet.model_config(), arg)
