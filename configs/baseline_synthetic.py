"""Baseline expression classifier on the embedded synthetic faces (no download needed).

    idfer train    --config=configs/baseline_synthetic.py --workdir=/tmp/baseline
    idfer evaluate --config=configs/baseline_synthetic.py --workdir=/tmp/baseline
    idfer crossval --config=configs/baseline_synthetic.py --workdir=/tmp/baseline_cv

`--config=configs/baseline_synthetic.py:smoke` is a tiny run (48 px, tiny ResNet, about a minute on a CPU)
for tests and first contact. Protocol: subject-independent 5-fold split of the 64 subjects; fold 0 is held
out (`--config.data.fold` picks another); evaluation uses the last checkpoint, never the best on test.
"""

from idfer_jax import config_defaults as defaults
from idfer_jax.data.synthetic_faces import EXPRESSIONS
from idfer_jax.methods import baseline


def get_config(arg: str | None = None):
    c = defaults.run(
        "baseline",
        model=baseline.model_config(),
        data_config=defaults.data(name="synthetic_faces", config="64px", image_size=64,
                                  class_names=EXPRESSIONS, num_folds=5),
    )
    if arg == "smoke":
        c.data.config = "smoke"
        c.data.image_size = 48
        c.data.num_folds = 4
        c.data.crop_padding = 2
        c.model.backbone = "resnet_tiny"
        c.optimizer.warmup_steps = 10
        c.train.update(batch_size=32, num_steps=800, log_every=100, checkpoint_every=200)
        c.eval.batch_size = 64
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; use '' or 'smoke'.")
    return c
