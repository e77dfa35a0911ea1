"""The layers of the package hold: each imports only the layers below it (read from the source, so a
lazy import inside a function counts too).

    errors, console, xla_cpu, losses, evaluation       nothing of the project
    models (with pretrained/, its encoders' weights)    nothing else
    config_defaults, data                               each other, errors, console (no model, no trainer)
    configuration                                       config_defaults, data, errors and, to validate
                                                        names, the registries of models, methods, train
    train                                               no recipe (never methods/): recipes reach it as
                                                        the Method interface
    methods                                             anything below; api, bench, main: anything
    inference                                           a trained model's use: train (the checkpoint),
                                                        methods (the recipe it rebuilds), data, models
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import idfer_jax

PACKAGE = pathlib.Path(idfer_jax.__file__).parent
BOTTOM = {"errors", "console", "xla_cpu"}
ALLOWED = {
    "losses": set(),
    "evaluation": set(),
    "models": {"pretrained"},
    "pretrained": {"models", "errors"},
    "config_defaults": {"data"},
    "data": {"config_defaults"},
    "train": {"configuration", "data", "evaluation", "losses", "models"},
    "inference": {"configuration", "config_defaults", "data", "evaluation", "losses", "models", "pretrained",
                  "train", "methods"},
}


def project_imports(layer: str) -> dict[str, set[str]]:
    """{imported top-level layer: files of `layer` importing it}, for every import in `layer`'s source."""
    root = PACKAGE / layer
    files = sorted(root.rglob("*.py")) if root.is_dir() else [PACKAGE / f"{layer}.py"]
    found: dict[str, set[str]] = {}
    for source in files:
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module == "idfer_jax":
                names = [f"idfer_jax.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "idfer_jax" and len(parts) > 1 and parts[1] != layer:
                    found.setdefault(parts[1], set()).add(source.name)
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED) + sorted(BOTTOM))
def test_each_layer_imports_only_the_layers_below_it(layer):
    allowed = ALLOWED.get(layer, set()) | (BOTTOM if layer not in BOTTOM else set())
    extra = {k: v for k, v in project_imports(layer).items() if k not in allowed}
    assert not extra, f"idfer_jax/{layer} imports {extra}; allowed: {sorted(allowed)}"


def test_the_trainer_names_no_recipe():
    assert "methods" not in project_imports("train")
    names = {n.id for f in (PACKAGE / "train").glob("*.py")
             for n in ast.walk(ast.parse(f.read_text(encoding="utf-8"))) if isinstance(n, ast.Name)}
    # ...nor, in the training loop, a recipe's data keys: what a batch carries is the pipeline's
    # (`pipeline.example_batch`), what a method reads its own (`Method.batch_keys`).
    source = (PACKAGE / "train" / "trainer.py").read_text(encoding="utf-8")
    for key in ("neutral_image", "partner_image", "partner_mask"):
        assert key not in source, key
    assert not names & {"baseline", "idennet", "phanet", "halawa", "fersnet", "ipdfer"}
