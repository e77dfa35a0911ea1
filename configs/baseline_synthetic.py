"""Baseline expression classifier on the embedded synthetic faces (no download needed).

    idfer train    --config=configs/baseline_synthetic.py --workdir=/tmp/baseline
    idfer evaluate --config=configs/baseline_synthetic.py --workdir=/tmp/baseline
    idfer crossval --config=configs/baseline_synthetic.py --workdir=/tmp/baseline_cv

`--config=configs/baseline_synthetic.py:smoke` is a tiny run (48 px, tiny ResNet, about a minute on a CPU)
for tests and first contact. Protocol: subject-independent 5-fold split of the 64 subjects; fold 0 is held
out (`--config.data.fold` picks another); evaluation uses the last checkpoint, never the best on test.
"""

from idfer_jax import config_defaults as defaults
from idfer_jax.methods import baseline


def get_config(arg: str | None = None):
    return defaults.synthetic_run("baseline", baseline.model_config(), arg)
