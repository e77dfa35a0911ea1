"""Procedurally rendered faces with known identity, expression and head-pose factors.

The dataset exists so that every method of the library can be trained, tested and probed for identity and
pose leakage without downloading anything: each image comes with the ground truth of the factors that real
FER datasets entangle, and with the *neutral* face of the same person in the same pose and light.

How a face is modelled (ellipsoids rotated in 3D, ray-cast, features painted in head coordinates) is
in :mod:`idfer_jax.data.synthetic_render`; the factors (identity, expression as action units, head pose,
nuisances) and their samplers, pure functions of ``(seed, index)``, in
:mod:`idfer_jax.data.synthetic_factors`. ``render(factors, r, neutral=True)`` gives the same person,
pose, light and background with every action unit at zero: the ground-truth neutral face. This module
is the TFDS builder that renders them in worker processes (and re-exports the public names of both).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from idfer_jax.data.synthetic_factors import (  # noqa: F401  (re-exported: the dataset's public names)
    ACTION_UNITS,
    EXPRESSIONS,
    INTENSITY_RANGE,
    PITCH_RANGE,
    PROTOTYPES,
    ROLL_RANGE,
    YAW_RANGE,
    SyntheticFacesConfig,
    action_units,
    counterfactual_factors,
    sample_counterfactual_target,
    sample_example_factors,
    sample_subject_identity,
)
from idfer_jax.data.synthetic_render import head_rotation, render  # noqa: F401

# --------------------------------------------------------------------------------------------------
# TFDS builder.
# --------------------------------------------------------------------------------------------------

# Below this many examples the pool's start-up (each worker imports TFDS) costs more than it saves.
_MIN_EXAMPLES_FOR_POOL = 2000
_CHUNK = 32


def _encode_png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='PNG', compress_level=6)
    return buffer.getvalue()


def _make_examples(config: SyntheticFacesConfig, indices: range) -> list[tuple[int, dict[str, Any]]]:
    """Renders and PNG-encodes the examples ``indices`` (runs in worker processes)."""
    out = []
    for index in indices:
        f = sample_example_factors(config, index)
        image = render(f, config.resolution)
        png = _encode_png(image)
        # A neutral example is its own neutral face: skip the second render.
        neutral_png = png if f['expression'] == 0 else _encode_png(
            render(f, config.resolution, neutral=True))
        target, target_intensity = sample_counterfactual_target(config, index)
        counterfactual_png = neutral_png if target == 0 else _encode_png(
            render(counterfactual_factors(f, target, target_intensity), config.resolution))
        out.append((index, {
            'image': png,
            'neutral_image': neutral_png,
            'counterfactual_image': counterfactual_png,
            'counterfactual_expression': target,
            'counterfactual_intensity': np.float32(target_intensity),
            'expression': f['expression'],
            'intensity': np.float32(f['intensity']),
            'subject': np.int64(f['subject']),
            'yaw': np.float32(f['yaw']),
            'pitch': np.float32(f['pitch']),
            'roll': np.float32(f['roll']),
            'example_id': np.int64(index),
        }))
    return out


class SyntheticFaces(tfds.core.GeneratorBasedBuilder):
    """Procedural faces with ground-truth subject, expression (+ intensity), head pose and neutral face.

    See the module docstring for the face model. One split, ``train``, holds every example: each of the
    ``num_subjects`` subjects shows each of the 7 expressions ``samples_per_expression`` times, every
    sample with its own pose, intensity and nuisances. Subject-independent folds are built elsewhere from
    the ``subject`` feature. ``example_id`` is the index for :func:`sample_example_factors`, which gives
    every factor of the example (e.g. to render counterfactual poses). Written records are shuffled, so
    record ``i`` is generally not ``example_id == i``.

    Measured on 2 CPU cores (no GPU, other jobs sharing the machine) with
    ``PYTHONPATH=. python scripts/measure_synthetic_faces.py --data_dir=/tmp/sf/d64`` (config ``64px``,
    seed 0, 30 epochs):

    * preparing ``64px`` (4480 examples, 8320 renders in 2 forked workers + PNG + array_record
      writing): 41.8 s wall (58-72 s when the machine was busy); ``smoke`` (1344 examples at 48 px,
      rendered in-process): about 14 s. One
      render takes about 3 ms at 32 px, 8 ms at 64 px, 26 ms at 112 px;
    * identity strength, 1-NN on standardised 32x32 colour pixels, random 50/50 split within each
      subject: subject accuracy 0.232 (chance 1/64 = 0.016), despite +-60 deg of yaw;
    * expression learnability, a 3-conv + dense CNN (flax.linen, Adam, flips and shifts) trained on 48
      subjects and tested on the 16 held-out subjects: accuracy 0.617 (chance 1/7 = 0.143; train
      0.703) after 159 s of training; still rising at the last epoch. Fear/surprise and
      happiness/disgust/anger are the confused pairs.
    """

    VERSION = tfds.core.Version('1.1.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.',
                     '1.1.0': 'Each example also stores its exact counterfactual with another expression.'}
    BUILDER_CONFIGS = [
        SyntheticFacesConfig(name='64px', description='64x64 RGB, 64 subjects x 7 x 10.'),
        SyntheticFacesConfig(name='96px', resolution=96, description='96x96 RGB, 64 x 7 x 10.'),
        SyntheticFacesConfig(name='112px', resolution=112, description='112x112 RGB, 64 x 7 x 10.'),
        SyntheticFacesConfig(
            name='smoke', resolution=48, num_subjects=24, samples_per_expression=8, pose_scale=0.25,
            min_intensity=0.8,
            description='48x48 RGB, 24 subjects x 7 x 8, yaw within +-15, strong expressions: an '
            'easier set for fast tests.'),
    ]
    DEFAULT_CONFIG_NAME = '64px'

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.x computes this through `importlib_resources`, which it only declares as a
        # dependency for Python < 3.9, so the default crashes where that package is absent.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        shape = (cfg.resolution, cfg.resolution, 3)
        return self.dataset_info_from_configs(
            description=(
                'Procedurally rendered faces (ray-cast ellipsoid heads rotated in 3-D, painted '
                'features deformed by FACS-like action units) with ground-truth subject, expression, '
                'intensity, head pose and the neutral face of the same subject in the same pose, '
                'light and background. Deterministic from the config seed; no download.'),
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Image(shape=shape),
                'neutral_image': tfds.features.Image(
                    shape=shape, doc='Same factors with every action unit at zero.'),
                'counterfactual_image': tfds.features.Image(
                    shape=shape, doc='Same factors with counterfactual_expression at '
                    'counterfactual_intensity (sample_counterfactual_target).'),
                'counterfactual_expression': tfds.features.ClassLabel(names=EXPRESSIONS),
                'counterfactual_intensity': tfds.features.Scalar(
                    np.float32, doc='Intensity of the counterfactual; 0 for neutral.'),
                'expression': tfds.features.ClassLabel(names=EXPRESSIONS),
                'intensity': tfds.features.Scalar(
                    np.float32, doc='Expression intensity in [0.5, 1]; 0 for neutral.'),
                'subject': tfds.features.Scalar(np.int64, doc='Identity, 0..num_subjects-1.'),
                'yaw': tfds.features.Scalar(np.float32, doc='Degrees, +-60; > 0 faces right.'),
                'pitch': tfds.features.Scalar(np.float32, doc='Degrees, +-25; > 0 looks up.'),
                'roll': tfds.features.Scalar(np.float32, doc='Degrees, +-15; > 0 is CCW.'),
                'example_id': tfds.features.Scalar(
                    np.int64, doc='Index for sample_example_factors(config, example_id).'),
            }),
            supervised_keys=('image', 'expression'),
            homepage=None,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # nothing to download
        return {'train': self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[int, dict[str, Any]]]:
        cfg = self.builder_config
        n = cfg.num_examples
        chunks = [range(i, min(i + _CHUNK, n)) for i in range(0, n, _CHUNK)]
        workers = _num_workers()
        if n < _MIN_EXAMPLES_FOR_POOL or workers < 2:
            for chunk in chunks:
                yield from _make_examples(cfg, chunk)
            return
        # 'fork', not 'spawn': spawn re-runs the user's __main__ in every worker, which breaks scripts
        # without an `if __name__ == '__main__'` guard and `python -`. The workers only run numpy and
        # PIL, never TensorFlow, so forking a process that has TensorFlow threads is safe here.
        ctx = multiprocessing.get_context('fork')
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='.*fork.*', category=DeprecationWarning)
            with ctx.Pool(workers) as pool:
                for examples in pool.imap(functools.partial(_make_examples, cfg), chunks):
                    yield from examples


def _num_workers() -> int:
    """Worker processes for rendering: the usable cores (at most 8), or 0 without 'fork' (Linux).

    Also 0 once JAX has started its backend in this process (a notebook, a test session): forking a
    process with live XLA threads is what JAX warns can deadlock, and rendering in-process only costs
    time.
    """
    if sys.platform != 'linux' or 'fork' not in multiprocessing.get_all_start_methods():
        return 0
    if _jax_backend_running():
        return 0
    return min(len(os.sched_getaffinity(0)), 8)


def _jax_backend_running() -> bool:
    if 'jax' not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # private API moved: assume running, stay in-process
        return True

