"""Halawa et al. (adversarial expression disentangling) on the embedded synthetic faces (no download needed).

    idfer train    --config=configs/halawa_synthetic.py --workdir=/tmp/halawa
    idfer evaluate --config=configs/halawa_synthetic.py --workdir=/tmp/halawa
    idfer crossval --config=configs/halawa_synthetic.py --workdir=/tmp/halawa_cv

`:smoke` is a tiny run for tests and first contact. Data, protocol, optimizer and budget are the
baseline's (`configs/baseline_synthetic.py`), so the two compare directly. The formulation is
`--config.adversary.formulation=uniform|grl|negated_ce`; `--config.adversary.identity=1` and
`--config.adversary.pose=1` add the identity and pose adversaries on z_e. The recipe's switches, and which
of them are [choice], are in `idfer_jax/methods/halawa.py`.
"""

from idfer_jax import config_defaults as defaults
from idfer_jax.methods import halawa


def get_config(arg: str | None = None):
    return defaults.synthetic_run("halawa", halawa.model_config(), arg)
