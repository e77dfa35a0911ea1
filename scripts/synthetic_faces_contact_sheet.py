"""Writes the two overview images of the synthetic faces into docs/images/.

* ``synthetic_faces_contact_sheet.png``: one row per subject, one column per expression at full
  intensity, frontal pose and a fixed light, so the rows show identity and the columns expression.
* ``synthetic_faces_yaw_sweep.png``: a few subjects (neutral, frontal light) turned from yaw -60 to +60.

    PYTHONPATH=. python scripts/synthetic_faces_contact_sheet.py [--resolution=96] [--out=docs/images]
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
from PIL import Image, ImageDraw

from idfer_jax.data import synthetic_faces as sf


def _label_row(names: list[str], width: int, height: int = 16) -> np.ndarray:
    strip = Image.new('RGB', (width * len(names), height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, name in enumerate(names):
        draw.text((i * width + 4, 2), name, fill=(0, 0, 0))
    return np.asarray(strip)


def _frontal(factors: dict, **changes: float) -> dict:
    """The factors with the pose and light nuisances fixed, so only identity/expression vary."""
    fixed = {'yaw': 0.0, 'pitch': 0.0, 'roll': 0.0, 'light_azimuth': 20.0,
             'light_elevation': 25.0, 'light_strength': 0.75, 'ambient': 0.38, 'scale': 1.0,
             'shift_x': 0.0, 'shift_y': 0.0, 'gaze_x': 0.0, 'gaze_y': 0.0, 'au_jitter': {}}
    return {**factors, **fixed, **changes}


def contact_sheet(config: sf.SyntheticFacesConfig, subjects: list[int], resolution: int
                  ) -> np.ndarray:
    per_subject = len(sf.EXPRESSIONS) * config.samples_per_expression
    rows = [_label_row(list(sf.EXPRESSIONS), resolution)]
    for subject in subjects:
        row = []
        for e in range(len(sf.EXPRESSIONS)):
            index = subject * per_subject + e * config.samples_per_expression
            factors = _frontal(sf.sample_example_factors(config, index),
                               intensity=1.0 if e else 0.0)
            row.append(sf.render(factors, resolution))
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def yaw_sweep(config: sf.SyntheticFacesConfig, subjects: list[int], resolution: int,
              steps: int = 9) -> np.ndarray:
    yaws = np.linspace(-sf.YAW_RANGE, sf.YAW_RANGE, steps)
    per_subject = len(sf.EXPRESSIONS) * config.samples_per_expression
    rows = [_label_row([f'yaw {y:+.0f}' for y in yaws], resolution)]
    for subject in subjects:
        factors = sf.sample_example_factors(config, subject * per_subject)
        rows.append(np.concatenate(
            [sf.render(_frontal(factors, yaw=float(y), light_azimuth=0.0), resolution)
             for y in yaws], axis=1))
    return np.concatenate(rows, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--resolution', type=int, default=96)
    parser.add_argument('--out', default='docs/images')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = sf.SyntheticFacesConfig(name='sheet', seed=args.seed)
    sheet = contact_sheet(config, list(range(8)), args.resolution)
    Image.fromarray(sheet).save(out / 'synthetic_faces_contact_sheet.png')
    sweep = yaw_sweep(config, [0, 4, 9], args.resolution)
    Image.fromarray(sweep).save(out / 'synthetic_faces_yaw_sweep.png')
    print(f'wrote {out / "synthetic_faces_contact_sheet.png"} and '
          f'{out / "synthetic_faces_yaw_sweep.png"}')


if __name__ == '__main__':
    main()
