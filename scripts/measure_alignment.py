"""Measures `idfer_jax.data.alignment.FaceAligner` on the real face sets in ``shared/data``.

For each dataset: the detection rate (images with a face found), the time per image (detection, landmarks
and warp), the mean landmark positions in the unit square of the original crops (left-right symmetrised:
where the "default" template comes from), and how far the aligned landmarks land from the template. With
``--sheet`` it writes a contact sheet (original | aligned with the template points drawn, for a few images
per dataset). The data are research-only: write sheets outside the repository (a path in it is refused).

    PYTHONPATH=. python scripts/measure_alignment.py --sheet=/tmp/alignment_sheet.png

Needs the ``align`` extra (``pip install "idfer_jax[align]"``).
"""

from __future__ import annotations

import argparse
import glob
import os
import pathlib
import time

import numpy as np
from PIL import Image, ImageDraw

from idfer_jax.data import alignment

REPO = pathlib.Path(__file__).resolve().parents[1]
DATASETS = {"ckplus48": "*/*.png", "jaffe": "*.tiff"}
# The 5 landmarks' left-right mirror partners (see the order in alignment's docstring).
MIRROR = [2, 3, 0, 1, 4]


def load(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def symmetrised(points: np.ndarray) -> np.ndarray:
    """Mean of (5, 2) unit-square points and their left-right mirror image."""
    mirrored = points[MIRROR].copy()
    mirrored[:, 0] = 1.0 - mirrored[:, 0]
    return (points + mirrored) / 2


def measure(name: str, root: str, files: list[str], aligner: alignment.FaceAligner) -> dict:
    found, seconds, unit_points, errors, missed = [], 0.0, [], [], []
    for path in files:
        image = load(path)
        start = time.perf_counter()
        points = aligner.landmarks(image)
        if points is not None:
            alignment.warp_affine(image, aligner.transform(points), aligner.output_size)
        seconds += time.perf_counter() - start
        found.append(points is not None)
        if points is None:
            missed.append(os.path.relpath(path, root))
            continue
        height, width = image.shape[:2]
        unit_points.append((points + 0.5) / np.array([width, height]))
        # Where the landmarks land in the crop, in the template's unit square, vs the template.
        inverse = alignment.fit_similarity(points, aligner.template * aligner.output_size - 0.5)
        landed = (alignment.apply_transform(inverse, points) + 0.5) / aligner.output_size
        eye_distance = np.linalg.norm(aligner.template[0:2].mean(0) - aligner.template[2:4].mean(0))
        errors.append(np.sqrt(np.mean(np.sum((landed - aligner.template) ** 2, axis=1))) / eye_distance)
    unit_points = np.array(unit_points)
    return {
        "name": name,
        "images": len(files),
        "found": int(np.sum(found)),
        "ms_per_image": 1000 * seconds / max(len(files), 1),
        "mean_points": symmetrised(unit_points.mean(axis=0)) if len(unit_points) else None,
        "raw_mean_points": unit_points.mean(axis=0) if len(unit_points) else None,
        "residual_iod": float(np.mean(errors)) if errors else float("nan"),
        "missed": missed,
    }


def contact_sheet(rows: list[list[str]], aligner: alignment.FaceAligner, path: str) -> None:
    size = aligner.output_size
    columns = max(len(row) for row in rows)
    sheet = Image.new("RGB", (2 * size * columns, size * len(rows)), (40, 40, 40))
    for r, files in enumerate(rows):
        for c, file in enumerate(files):
            image = load(file)
            sheet.paste(Image.fromarray(image).resize((size, size), Image.BILINEAR), (2 * size * c, size * r))
            crop = aligner.align(image)
            if crop is None:
                continue
            tile = Image.fromarray(crop)
            draw = ImageDraw.Draw(tile)
            for x, y in aligner.template * size:
                draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], outline=(255, 64, 64))
            sheet.paste(tile, (2 * size * c + size, size * r))
    sheet.save(path)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--data_root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--output_size", type=int, default=112)
    parser.add_argument("--template", default="default", choices=sorted(alignment.TEMPLATES))
    parser.add_argument("--upsample", type=int, default=None, help="default: chosen from the image size")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per dataset")
    parser.add_argument("--sheet", default=None, help="contact sheet PNG, outside the repository (e.g. /tmp)")
    parser.add_argument("--sheet_per_dataset", type=int, default=6)
    args = parser.parse_args()

    if args.sheet is not None and pathlib.Path(args.sheet).resolve().is_relative_to(REPO):
        parser.error(
            f"--sheet {args.sheet} is inside the repository; these faces are research-only: use /tmp"
        )
    aligner = alignment.FaceAligner(args.output_size, template=args.template, upsample=args.upsample)
    print(aligner)
    rows = []
    for name in args.datasets:
        root = os.path.join(args.data_root, name)
        files = sorted(glob.glob(os.path.join(root, DATASETS[name])))
        if not files:
            print(f"{name}: no images under {root}; skipped")
            continue
        if args.limit:
            files = files[:: max(1, len(files) // args.limit)][: args.limit]
        result = measure(name, root, files, aligner)
        print(
            f"{name}: {result['found']}/{result['images']} faces found "
            f"(detection rate {result['found'] / result['images']:.4f}), "
            f"{result['ms_per_image']:.1f} ms per image, "
            f"template residual {result['residual_iod']:.3f} eye distances (RMS)"
        )
        if result["mean_points"] is not None:
            print(f"  mean landmarks in the unit square, symmetrised:\n{np.round(result['mean_points'], 3)}")
            print(f"  (raw, before symmetrising:\n{np.round(result['raw_mean_points'], 3)})")
        if result["missed"]:
            more = " ..." if len(result["missed"]) > 20 else ""
            print(f"  no face: {' '.join(result['missed'][:20])}{more}")
        step = max(1, len(files) // args.sheet_per_dataset)
        rows.append(files[step // 2 :: step][: args.sheet_per_dataset])
    if args.sheet is not None and rows:
        contact_sheet(rows, aligner, args.sheet)
        print(f"contact sheet: {args.sheet}")


if __name__ == "__main__":
    main()
