"""Baseline on JAFFE: 7 classes (with neutral), leave-one-subject-out over its 10 subjects.

    idfer crossval --config=configs/baseline_jaffe.py --workdir=workdirs/baseline_jaffe \
        --config.data.manual_dir=/path/to/jaffe

`manual_dir` holds the `<subject>.<expression><n>.<index>.tiff` files (or `jaffedbase.zip`). Images are
the fixed face box of the 256x256 originals resized to 64 px (`64px`); `--config.data.config=aligned_96px
--config.data.image_size=96` uses detected, 5-point-aligned faces instead (extra `[align]`). With one
subject held out per fold, identity probes read the fold model's features of all subjects (the report
says so).
"""

from idfer_jax import config_defaults as defaults
from idfer_jax.methods import baseline


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"Unknown config argument {arg!r}; this config takes none.")
    return defaults.benchmark_run(
        "baseline", baseline.model_config(backbone="resnet_small", dropout=0.2), "jaffe"
    )
