"""Baseline on CK+48 (CK+ peak frames, 48x48 crops): 7 classes, subject-independent 10-fold CV.

    idfer crossval --config=configs/baseline_ckplus.py --workdir=workdirs/baseline_ckplus \
        --config.data.manual_dir=/path/to/CK+48

`manual_dir` is the folder holding CK+48's `<expression>/S###_###_########.png` tree (or `CK+48.zip`); it
is read once, when the dataset is prepared into `data_dir`. The standard CK+ protocol is 10-fold
subject-independent CV on the last 3 frames of the 327 labelled sequences (no neutral); for the 6-class
variant drop contempt:
    --config.data.class_names="('anger','disgust','fear','happiness','sadness','surprise')"
Identity probes split each held-out subject's images by sequence (the 3 frames of one are near-copies).
"""

from idfer_jax import config_defaults as defaults
from idfer_jax.methods import baseline


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"Unknown config argument {arg!r}; this config takes none.")
    return defaults.benchmark_run(
        "baseline", baseline.model_config(backbone="resnet_small", dropout=0.2), "ckplus"
    )
