"""Building blocks of the config files in `configs/`: every key a run reads, with its default.

A config file states what is particular to its method and dataset and takes the rest from here, so a key
added to the library reaches every config at once (and `--config.KEY` overrides keep working for all).
"""

from __future__ import annotations

import ml_collections

# `config.data.augment` (idfer_jax.data.pipeline.Augment): every switch off leaves the training images as
# pad-crop and flip make them.
AUGMENT_DEFAULTS = {
    "resized_crop_scale": 1.0,  # random resized crop: keep [scale, 1] of the area (1 = off), e.g. 0.8
    "aspect_ratio": 0.1,  # ... with log-uniform aspect ratio in [1/(1+a), 1+a]
    "rotation": 0.0,  # uniform rotation in [-r, r] degrees (0 = off), e.g. 10
    "brightness": 0.0,  # add uniform [-b, b] (images are in [-1, 1]), e.g. 0.2
    "contrast": 0.0,  # scale about the image mean by uniform [1-c, 1+c], e.g. 0.2
    "saturation": 0.0,  # colour images: blend with grey by uniform [1-s, 1+s], e.g. 0.2
    "grey": 0.0,  # probability of turning a colour image grey (kept 3-channel)
    "erasing": 0.0,  # probability of random erasing (Zhong et al. 2020): one rectangle of 2-20% area
}


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
    # Largest image read when preparing (pixels; 0 = no limit). Replaces Pillow's decompression-bomb
    # limit (~179 MP), which refuses genuine 200 MP phone photos; 500 MP decode to ~1.5 GB of RGB.
    c.max_image_pixels = 500_000_000
    c.protocol = "kfold"  # kfold | loso | official
    c.num_folds = 10  # the standard for CK+, Oulu-CASIA, MMI; the synthetic configs use 5
    c.fold = 0
    c.split_seed = 0
    c.fold_file = ""  # replay the split of an earlier run's folds.json (matched by subject name)
    # More training sets, 'NAME[/CONFIG]=MANUAL_DIR' each (e.g. 'jaffe/48px=/data/jaffe'): read with the
    # run's classes, their subjects kept apart from the main set's; the folds split the union of subjects.
    c.extra = ()
    c.mix = ()  # sampling weight of each training set (main first); () = every record equally likely
    # Cross-dataset: set test.name to train on every record of `name` and test on this dataset. An
    # image_folder test set takes its own pattern or manifest, and its own class_map (e.g. 'AN:anger,...'
    # for letter codes); '' = the training set's.
    # test.align: 'auto' aligns both sides (aligned_<size>px) when the [align] extra is installed, so the
    # two sets are framed alike; 'no' keeps data.config / test.config as given.
    c.test = ml_collections.ConfigDict({"name": "", "config": "", "manual_dir": "", "pattern": "",
                                        "manifest": "", "class_map": "", "align": "auto"})
    c.crop_padding = 4
    c.flip = True
    c.augment = ml_collections.ConfigDict(AUGMENT_DEFAULTS)  # more training-time augmentation, all off
    c.with_neutral = False
    # '' | other_expression | neutral | counterfactual (synthetic: the exact same face with another
    # expression): a same-subject partner image per training example
    c.partner = ""
    # Share of the fold's training subjects held out as a validation split (for choosing a loss weight
    # or a checkpoint without the test fold: `idfer sweep`); 0 = none.
    c.validation_fraction = 0.0
    # P > 0: every global training batch holds exactly P distinct subjects x K = train.batch_size / P
    # images each (pipeline.SubjectBalancedSampler), so identity adversaries see learnable identities;
    # 0 = plain shuffled batches.
    c.subjects_per_batch = 0
    c.worker_count = 0
    c.update(overrides)
    return c


def backbone(c: ml_collections.ConfigDict, name: str = "resnet_small") -> ml_collections.ConfigDict:
    """Adds the backbone keys every encoder-based recipe reads to its `config.model` block `c`."""
    c.backbone = name  # a ResNet preset, or a pretrained encoder: facenet | mini_xception
    c.norm = "batch"  # ResNets only
    # ResNets only. Downsample early (7x7/2 conv + max-pool): a stride-1 stem leaves the last stage's units
    # seeing only part of the face, and global pooling then cannot tell a mouth edge from a brow edge
    # (measured: held-out accuracy at chance after 400 smoke steps, vs 0.32 with this stem, and 3x faster).
    c.stem = "imagenet"  # '' = the backbone preset's own stem; 'imagenet' | 'small'
    # Pretrained encoders: '' = the weights their package ships, 'none' = random init, or a converted
    # checkpoint's path (python -m idfer_jax.pretrained.<backbone> --out=PATH).
    c.pretrained = ""
    c.input_size = 0  # pretrained encoders: the side they see (px); 0 = the one they were trained at
    c.freeze_until = 0  # freeze backbone stages 1..k (0 = none, -1 = all: the linear probe)
    return c


def optimizer(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "adamw"  # adamw | adam (L2 added to the gradient) | sgd
    c.learning_rate = 2e-3
    c.b1 = 0.9  # Adam's moment decays (GAN recipes use 0.5, 0.999)
    c.b2 = 0.999
    c.weight_decay = 5e-4
    c.schedule = "cosine"  # cosine | constant | milestones
    c.milestones = ()  # schedule='milestones': fractions of the run where the rate is multiplied...
    c.milestone_factor = 0.1  # ... by this
    c.warmup_steps = 100
    c.grad_clip = 1.0
    # Fine-tuning: the backbone's stages learn at this multiple of the rate (heads and the rest at 1x).
    c.backbone_lr_multiplier = 1.0
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
    # Steps of the independent expression reader that judges generated faces (evaluation.generation)
    c.reader_steps = 1500
    c.update(overrides)
    return c


def adversary(**overrides) -> ml_collections.ConfigDict:
    """The `config.adversary` block: the identity and pose adversaries any recipe can switch on, and
    the formulation every adversary of the run uses (Halawa et al.'s expression adversary included)."""
    c = ml_collections.ConfigDict()
    c.formulation = "uniform"  # uniform | grl | negated_ce | ridge (closed form, see methods/adversaries.py)
    c.identity = 0.0  # weight of the identity adversary on the expression features; 0 = off
    c.pose = 0.0  # weight of the pose (yaw bin) adversary on the expression features; 0 = off
    c.pose_bin_edges = (20.0, 40.0)  # |yaw| edges in degrees: 5 mirror-symmetric bins
    c.hidden = 256  # [choice] one hidden ReLU layer, like the MLP leakage probe
    c.depth = 1  # hidden layers of a trained adversary: 0 = linear, 2+ = more capacity
    c.ridge_alphas = (0.1, 1.0, 10.0)  # [choice] `ridge`: penalties tried on each batch, the best fit kept
    c.ridge_kernel = "linear"  # `ridge`: linear | rbf (a non-linear closed-form adversary)
    c.standardize = True  # [choice] adversaries read batch-standardized features (adversaries.AdversaryHead)
    c.learning_rate = 0.0  # 0 = the main optimizer's learning rate
    c.steps = 1  # adversary sub-updates per train step
    c.replay = 0  # past batches of features a trained adversary also learns from (a replay buffer); 0 = off
    c.update(overrides)
    return c


def run(method: str, model: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
        **blocks) -> ml_collections.ConfigDict:
    """A whole config: method, seed, dtype and the data / model / optimizer / train / eval / adversary
    blocks."""
    c = ml_collections.ConfigDict()
    c.method = method
    c.seed = 0
    c.dtype = "float32"  # model computation dtype: float32 | bfloat16
    c.data = data_config
    c.model = model
    c.optimizer = blocks.pop("optimizer", None) or optimizer()
    c.train = blocks.pop("train", None) or train()
    c.eval = blocks.pop("eval", None) or evaluation()
    c.adversary = blocks.pop("adversary", None) or adversary()
    if blocks:
        raise ValueError(f"Unknown config blocks {sorted(blocks)}.")
    return c


# --- whole runs, shared by every recipe's config files ------------------------------------------

CKPLUS_CLASSES = ("anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise")
JAFFE_CLASSES = ("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise")


def synthetic_run(method: str, model: ml_collections.ConfigDict, arg: str | None):
    """A run on the embedded synthetic faces: 64 px, 5 subject-independent folds; `arg='smoke'` is a
    tiny near-frontal 48 px run with a tiny ResNet (about a minute on a CPU, for tests and first contact)."""
    from idfer_jax.data.synthetic_faces import EXPRESSIONS

    c = run(method, model=model,
            data_config=data(name="synthetic_faces", config="64px", image_size=64,
                             class_names=EXPRESSIONS, num_folds=5))
    if arg == "smoke":
        c.data.config = "smoke"
        c.data.image_size = 48
        c.data.num_folds = 4
        c.data.crop_padding = 2
        if "backbone" in c.model:  # the generative recipes size their own networks
            c.model.backbone = "resnet_tiny"
        c.optimizer.warmup_steps = 10
        c.train.update(batch_size=32, num_steps=800, log_every=100, checkpoint_every=200)
        c.eval.batch_size = 64
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; use '' or 'smoke'.")
    return c


def benchmark_run(method: str, model: ml_collections.ConfigDict, benchmark: str):
    """A run on a real benchmark with its standard protocol: 'ckplus' (CK+48, 7 classes, 10-fold) or
    'jaffe' (7 classes with neutral, leave-one-subject-out). Both read `--config.data.manual_dir`."""
    if benchmark == "ckplus":
        data_config = data(name="ck_plus48", config="48px", image_size=48, class_names=CKPLUS_CLASSES,
                           protocol="kfold", num_folds=10, crop_padding=3)
        steps = 1200
    elif benchmark == "jaffe":
        data_config = data(name="jaffe", config="64px", image_size=64, class_names=JAFFE_CLASSES,
                           protocol="loso", crop_padding=4)
        steps = 800
    else:
        raise ValueError(f"Unknown benchmark {benchmark!r}; use 'ckplus' or 'jaffe'.")
    return run(
        method, model=model, data_config=data_config,
        optimizer=optimizer(learning_rate=2e-3, warmup_steps=50),
        train=train(batch_size=32, num_steps=steps, log_every=100, checkpoint_every=400),
        eval=evaluation(batch_size=64),
    )
