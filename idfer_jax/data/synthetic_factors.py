"""The factors of a synthetic face: constants, the dataset config, and the pure samplers
``(seed, subject) -> identity`` and ``(config, index) -> factors`` (the package overview is in
:mod:`idfer_jax.data.synthetic_faces`).

Factors
-------
* **subject** (identity, the strong factor): head width/height/depth, jaw width and chin, eye spacing,
  height, size and tilt, iris size and colour, brow gap/length/thickness/arch, nose length/width/protrusion,
  mouth height and width, lip thicknesses and colour, ear size, skin tone, hair colour, hairline, widow's
  peak, volume and length (or baldness), facial hair (none, stubble, moustache, beard), glasses, crease
  depth. Drawn once per subject from ``(seed, subject)`` (:func:`sample_subject_identity`).
* **expression** (the weaker factor): the 7 classes of :data:`EXPRESSIONS`, each a prototype over
  FACS-like action units (:data:`ACTION_UNITS`, e.g. AU4 brow lowerer, AU12 lip corner puller, AU26 jaw
  drop) taken from the EMFACS prototypes, scaled by an ``intensity`` in [0.5, 1] (0 for neutral) and by a
  small per-example jitter of each unit. The units deform brows, lids, nose, lips and jaw (the jaw drop also
  moves the jaw ellipsoid, i.e. the geometry).
* **head pose**: yaw uniform in +-60 deg (positive turns the face towards the image's right), pitch in
  +-25 deg (positive looks up), roll in +-15 deg (positive rotates counter-clockwise in the image).
* **nuisances**: gaze, light direction, strength and ambient level, scale and translation jitter, background
  (two-colour linear gradient at a random angle plus mild pixel noise).

Every example is a pure function of ``(config.seed, index)`` (:func:`sample_example_factors`), and
:func:`render` is a pure function of the factors, so ``render(factors, r, neutral=True)`` gives the same
person, pose, light and background with every action unit at zero: the ground-truth neutral face, and
``render(counterfactual_factors(factors, k, a), r)`` the same face with expression ``k`` at intensity
``a``: its exact counterfactual (:func:`sample_counterfactual_target` draws the one the dataset stores).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

EXPRESSIONS = ('neutral', 'anger', 'disgust', 'fear', 'happiness', 'sadness', 'surprise')

ACTION_UNITS = (
    'brow_inner_raise',  # AU1
    'brow_outer_raise',  # AU2
    'brow_lower',  # AU4 (lowers and pulls the brows together, furrows the glabella)
    'upper_lid_raise',  # AU5
    'cheek_raise',  # AU6 (pushes the lower lid up, crow's feet)
    'lid_tighten',  # AU7
    'lid_droop',  # AU41/43-like partial closure of the upper lid
    'nose_wrinkle',  # AU9
    'upper_lip_raise',  # AU10
    'lip_corner_pull',  # AU12
    'lip_corner_depress',  # AU15
    'chin_raise',  # AU17
    'lip_stretch',  # AU20
    'lip_press',  # AU23/24
    'lips_part',  # AU25
    'jaw_drop',  # AU26
)

# EMFACS-style prototypes: activation of each action unit at intensity 1.
PROTOTYPES: dict[str, dict[str, float]] = {
    'neutral': {},
    'anger': {'brow_lower': 1.0, 'upper_lid_raise': 0.2, 'lid_tighten': 0.8, 'lip_press': 1.0,
              'chin_raise': 0.4},
    'disgust': {'nose_wrinkle': 1.0, 'upper_lip_raise': 1.0, 'lip_corner_depress': 0.4,
                'brow_lower': 0.5, 'cheek_raise': 0.4, 'lid_tighten': 0.3, 'chin_raise': 0.3,
                'lips_part': 0.4},
    'fear': {'brow_inner_raise': 1.0, 'brow_outer_raise': 0.6, 'brow_lower': 0.6,
             'upper_lid_raise': 1.0, 'lip_stretch': 1.0, 'lips_part': 0.8, 'jaw_drop': 0.35},
    'happiness': {'cheek_raise': 1.0, 'lip_corner_pull': 1.0, 'lips_part': 1.0,
                  'upper_lip_raise': 0.25},
    'sadness': {'brow_inner_raise': 1.0, 'brow_lower': 0.5, 'lid_droop': 0.5,
                'lip_corner_depress': 1.0, 'chin_raise': 0.7},
    'surprise': {'brow_inner_raise': 1.0, 'brow_outer_raise': 1.0, 'upper_lid_raise': 1.0,
                 'lips_part': 1.0, 'jaw_drop': 1.0},
}

YAW_RANGE = 60.0
PITCH_RANGE = 25.0
ROLL_RANGE = 15.0
INTENSITY_RANGE = (0.5, 1.0)

_SKIN_TONES = np.array([
    (250, 222, 200), (236, 192, 160), (222, 170, 130), (196, 136, 98),
    (160, 105, 72), (122, 78, 54), (88, 58, 42),
], np.float64) / 255.0
_HAIR_COLOURS = np.array([
    (28, 22, 20), (62, 40, 28), (105, 70, 42), (196, 160, 98), (150, 72, 38), (160, 158, 155),
], np.float64) / 255.0
_HAIR_WEIGHTS = np.array([0.3, 0.25, 0.18, 0.12, 0.07, 0.08])
_IRIS_COLOURS = np.array([
    (80, 50, 28), (45, 30, 20), (70, 110, 160), (80, 120, 72), (128, 98, 52), (110, 122, 132),
], np.float64) / 255.0

_FRAME_COLOURS = np.array([(20, 20, 22), (70, 45, 30), (150, 120, 60), (110, 30, 30)],
                          np.float64) / 255.0


# --------------------------------------------------------------------------------------------------
# Factors.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class SyntheticFacesConfig(tfds.core.BuilderConfig):
    """Size and seed of a synthetic-faces dataset.

    Frozen after construction (``dataclasses.replace`` makes a changed copy). It cannot be declared with
    ``dataclass(frozen=True)`` because ``tfds.core.BuilderConfig`` is a non-frozen dataclass and Python
    refuses frozen subclasses of non-frozen dataclasses.
    """

    resolution: int = 64
    num_subjects: int = 64
    samples_per_expression: int = 10
    seed: int = 0
    # Fraction of the full pose ranges (yaw +-60, pitch +-25, roll +-15) and the lowest expression
    # intensity: smaller poses and stronger expressions make an easier set (the `smoke` config).
    pose_scale: float = 1.0
    min_intensity: float = INTENSITY_RANGE[0]

    def __post_init__(self) -> None:
        if self.resolution < 16:
            raise ValueError(f'resolution must be >= 16, got {self.resolution}.')
        if self.num_subjects < 1 or self.samples_per_expression < 1:
            raise ValueError('num_subjects and samples_per_expression must be >= 1.')
        object.__setattr__(self, '_frozen', True)

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, '_frozen', False):
            raise dataclasses.FrozenInstanceError(f'cannot assign to field {name!r}')
        super().__setattr__(name, value)

    @property
    def num_examples(self) -> int:
        return self.num_subjects * len(EXPRESSIONS) * self.samples_per_expression


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def sample_subject_identity(seed: int, subject: int) -> dict[str, Any]:
    """The persistent appearance of one subject (pure function of ``(seed, subject)``).

    Lengths are in head units (the cranium is about 2 units tall); colours are RGB floats in [0, 1].
    """
    rng = _rng(seed, 0x1D, subject)
    u = rng.uniform
    skin = np.interp(u(0, 1), np.linspace(0, 1, len(_SKIN_TONES)), np.arange(len(_SKIN_TONES)))
    lo = int(np.floor(skin))
    hi = min(lo + 1, len(_SKIN_TONES) - 1)
    skin_rgb = _SKIN_TONES[lo] + (skin - lo) * (_SKIN_TONES[hi] - _SKIN_TONES[lo])
    skin_rgb = np.clip(skin_rgb * (1 + rng.normal(0, 0.03, 3)), 0, 1)
    hair_rgb = _HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), p=_HAIR_WEIGHTS)]
    hair_rgb = np.clip(hair_rgb * u(0.8, 1.2), 0, 1)
    iris_rgb = np.clip(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * u(0.85, 1.15), 0, 1)
    lip_rgb = np.clip(skin_rgb * np.array([0.82, 0.52, 0.52]) * u(0.85, 1.05), 0, 1)

    eye_y = u(-0.06, 0.04)
    nose_bottom = eye_y - u(0.3, 0.4)
    mouth_y = nose_bottom - u(0.14, 0.2)
    bald = bool(rng.uniform() < 0.1)
    # Facial hair (0 none, 1 stubble, 2 moustache, 3 full beard) and glasses: strong, persistent
    # identity cues that, as in real data, partly cover the regions where expressions show.
    facial_hair = int(rng.choice(4, p=[0.6, 0.15, 0.1, 0.15]))
    glasses = bool(rng.uniform() < 0.2)
    frame_rgb = _FRAME_COLOURS[rng.integers(len(_FRAME_COLOURS))]
    return {
        'head_width': u(0.68, 0.84),
        'head_height': u(0.88, 1.0),
        'head_depth': u(0.82, 0.95),
        'jaw_width': u(0.68, 0.88),  # relative to head_width
        'jaw_length': u(0.68, 0.82),
        'eye_x': u(0.27, 0.34),
        'eye_y': eye_y,
        'eye_width': u(0.13, 0.16),
        'eye_height': u(0.05, 0.066),
        'eye_tilt': u(-0.1, 0.15),
        'iris_radius': u(0.052, 0.062),
        'brow_gap': u(0.09, 0.15),
        'brow_length': u(0.2, 0.26),
        'brow_thickness': u(0.024, 0.048),
        'brow_arch': u(0.0, 0.045),
        'nose_bottom': nose_bottom,
        'nose_width': u(0.07, 0.11),
        'nose_protrusion': u(0.11, 0.2),
        'mouth_y': mouth_y,
        'mouth_width': u(0.2, 0.27),
        'upper_lip': u(0.025, 0.045),
        'lower_lip': u(0.032, 0.06),
        'ear_size': u(0.85, 1.15),
        'crease_depth': u(0.03, 0.2),
        'hairline': 0.95 if bald else u(0.45, 0.72),
        'widows_peak': 0.0 if bald else u(0.0, 0.1),
        'hair_volume': 0.0 if bald else u(1.03, 1.12),
        'hair_length': 0.0 if bald else float(rng.choice([0.0, u(0.0, 0.3), u(0.5, 1.0)])),
        'facial_hair': facial_hair,
        'glasses': glasses,
        'frame_rgb': tuple(float(c) for c in frame_rgb),
        'skin_rgb': tuple(float(c) for c in skin_rgb),
        'hair_rgb': tuple(float(c) for c in hair_rgb),
        'iris_rgb': tuple(float(c) for c in iris_rgb),
        'lip_rgb': tuple(float(c) for c in lip_rgb),
    }


def sample_example_factors(config: SyntheticFacesConfig, index: int) -> dict[str, Any]:
    """Deterministic factors of example ``index`` of ``config``'s dataset.

    Examples are ordered subject-major, then expression, then sample; each sample draws its own pose,
    intensity, action-unit jitter and nuisances from ``(config.seed, index)``.
    """
    if not 0 <= index < config.num_examples:
        raise IndexError(f'index {index} out of range for {config.num_examples} examples.')
    spe = config.samples_per_expression
    subject, rest = divmod(index, len(EXPRESSIONS) * spe)
    expression = rest // spe
    rng = _rng(config.seed, 0xE7, index)
    u = rng.uniform
    intensity = 0.0 if expression == 0 else u(config.min_intensity, INTENSITY_RANGE[1])
    # Muted backgrounds (a grey level plus a mild tint), so that the background does not outweigh
    # the face in pixel space.
    bg_a = np.clip(u(0.25, 0.75) + rng.normal(0, 0.05, 3), 0.05, 0.95)
    bg_b = np.clip(bg_a + u(-0.15, 0.15) + rng.normal(0, 0.03, 3), 0.05, 0.95)
    return {
        'example_id': int(index),
        'subject': int(subject),
        'expression': int(expression),
        'intensity': float(intensity),
        'au_jitter': {au: float(u(0.8, 1.2)) for au in ACTION_UNITS},
        'yaw': float(u(-YAW_RANGE, YAW_RANGE) * config.pose_scale),
        'pitch': float(u(-PITCH_RANGE, PITCH_RANGE) * config.pose_scale),
        'roll': float(u(-ROLL_RANGE, ROLL_RANGE) * config.pose_scale),
        'gaze_x': float(u(-0.3, 0.3)),
        'gaze_y': float(u(-0.15, 0.15)),
        'light_azimuth': float(u(-45, 45)),
        'light_elevation': float(u(0, 45)),
        'light_strength': float(u(0.6, 0.85)),
        'ambient': float(u(0.3, 0.45)),
        'scale': float(u(0.94, 1.06)),
        'shift_x': float(u(-0.04, 0.04)),
        'shift_y': float(u(-0.04, 0.04)),
        'background_a': tuple(float(c) for c in bg_a),
        'background_b': tuple(float(c) for c in bg_b),
        'background_angle': float(u(0, 360)),
        'noise_std': float(u(1.0, 5.0) / 255.0),
        'noise_seed': int(rng.integers(2**31)),
        'identity': sample_subject_identity(config.seed, subject),
    }


def action_units(factors: Mapping[str, Any], neutral: bool = False) -> dict[str, float]:
    """Activation in [0, 1] of every action unit for ``factors`` (all zero when neutral)."""
    name = EXPRESSIONS[int(factors['expression'])]
    if neutral or name == 'neutral':
        return dict.fromkeys(ACTION_UNITS, 0.0)
    jitter = factors.get('au_jitter', {})
    intensity = float(factors['intensity'])
    return {
        au: float(np.clip(PROTOTYPES[name].get(au, 0.0) * intensity * jitter.get(au, 1.0), 0, 1))
        for au in ACTION_UNITS
    }




def counterfactual_factors(factors: Mapping[str, Any], expression: int, intensity: float) -> dict[str, Any]:
    """``factors`` with another expression: same subject, pose, light, background, noise and action-unit
    jitter, so ``render`` of the result is the exact counterfactual face.

    Args:
      factors: an example's factors (:func:`sample_example_factors`).
      expression: index into :data:`EXPRESSIONS`.
      intensity: in [0, 1]; forced to 0 for ``neutral`` (as the sampler does).

    Raises:
      ValueError: for an expression index outside ``EXPRESSIONS``.
    """
    if not 0 <= int(expression) < len(EXPRESSIONS):
        raise ValueError(f'expression must be in 0..{len(EXPRESSIONS) - 1}, got {expression}.')
    return {**factors, 'expression': int(expression),
            'intensity': 0.0 if int(expression) == 0 else float(intensity)}


def sample_counterfactual_target(config: SyntheticFacesConfig, index: int) -> tuple[int, float]:
    """The (expression, intensity) of the counterfactual that example ``index`` stores: an expression
    other than its own, uniform over the other 6, at an intensity drawn like the dataset's (0 for
    neutral). A pure function of ``(config.seed, index)`` [choice: one stored target per example]."""
    own = sample_example_factors(config, index)['expression']
    rng = _rng(config.seed, 0xCF, index)
    others = [k for k in range(len(EXPRESSIONS)) if k != own]
    expression = int(others[rng.integers(len(others))])
    intensity = 0.0 if expression == 0 else float(rng.uniform(config.min_intensity, INTENSITY_RANGE[1]))
    return expression, intensity
