"""Building blocks of the config files in `configs/`: every key a run reads, with its default.

A config file states what is particular to its method and dataset and takes the rest from here, so a key
added to the library reaches every config at once (and `--config.KEY` overrides keep working for all).
"""

from __future__ import annotations

import ml_collections


def data(**overrides) -> ml_collections.ConfigDict:
    """The `config.data` block. Protocols and class selection: see `idfer_jax.data.datasets`."""
    c = ml_collections.ConfigDict()
    c.name = "synthetic_faces"
    c.config = "64px"  # builder config, e.g. '48px' or 'aligned_112px' for real datasets
    c.data_dir = ""  # prepared TFDS datasets; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.manual_dir = ""  # the raw download of a real dataset (read once, when preparing it)
    c.image_size = 64
    c.pattern = ""  # image_folder: regex with named groups over each file's path (see image_folder.py)
    c.manifest = ""  # image_folder: CSV with path, expression[, subject, sequence, yaw, split] columns
    c.class_names = ()  # the run's classes, selected and ordered; () = the dataset's own
    c.class_map = ""  # 'from:to,...' renames/merges dataset classes before selection ('x:' drops x)
    c.protocol = "kfold"  # kfold | loso | official
    c.num_folds = 10  # the standard for CK+, Oulu-CASIA, MMI; the synthetic configs use 5
    c.fold = 0
    c.split_seed = 0
    c.fold_file = ""  # replay the split of an earlier run's folds.json (matched by subject name)
    # Cross-dataset: set test.name to train on every record of `name` and test on this dataset.
    c.test = ml_collections.ConfigDict({"name": "", "config": "", "manual_dir": ""})
    c.crop_padding = 4
    c.flip = True
    c.with_neutral = False
    c.worker_count = 0
    c.update(overrides)
    return c


def optimizer(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "adamw"  # adamw | adam (L2 added to the gradient) | sgd
    c.learning_rate = 2e-3
    c.weight_decay = 5e-4
    c.schedule = "cosine"
    c.warmup_steps = 100
    c.grad_clip = 1.0
    c.update(overrides)
    return c


def train(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.batch_size = 64
    c.num_steps = 2000
    c.log_every = 50
    c.checkpoint_every = 500
    c.keep_checkpoints = 2
    c.async_checkpoints = True
    c.update(overrides)
    return c


def evaluation(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.batch_size = 128
    c.probe_seed = 0
    c.update(overrides)
    return c


def run(method: str, model: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
        **blocks) -> ml_collections.ConfigDict:
    """A whole config: method, seed, dtype and the data / model / optimizer / train / eval blocks."""
    c = ml_collections.ConfigDict()
    c.method = method
    c.seed = 0
    c.dtype = "float32"  # model computation dtype: float32 | bfloat16
    c.data = data_config
    c.model = model
    c.optimizer = blocks.pop("optimizer", None) or optimizer()
    c.train = blocks.pop("train", None) or train()
    c.eval = blocks.pop("eval", None) or evaluation()
    if blocks:
        raise ValueError(f"Unknown config blocks {sorted(blocks)}.")
    return c
