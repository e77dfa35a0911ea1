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

CLASSES = ("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise")


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"Unknown config argument {arg!r}; this config takes none.")
    return defaults.run(
        "baseline",
        model=baseline.model_config(backbone="resnet_small", dropout=0.2),
        data_config=defaults.data(
            name="jaffe", config="64px", image_size=64, class_names=CLASSES, protocol="loso",
            crop_padding=4,
        ),
        optimizer=defaults.optimizer(learning_rate=2e-3, warmup_steps=50),
        train=defaults.train(batch_size=32, num_steps=800, log_every=100, checkpoint_every=400),
        eval=defaults.evaluation(batch_size=64),
    )
