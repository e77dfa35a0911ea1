"""What every recipe promises the trainer and the user, checked for all of them at once: a generic switch
either does what it says or is a ConfigError naming it; `batch_keys` are exactly what the losses read;
`evaluations` are known to `idfer evaluate`; a new recipe is one module registered in one place.

Everything here traces (jax.eval_shape) or runs an optimizer on zeros: nothing is compiled."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idfer_jax import configuration, methods
from idfer_jax.data import pipeline
from idfer_jax.models import weights
from idfer_jax.train import evaluate
from idfer_jax.train.interface import owned
from idfer_jax.train.optim import param_groups
from idfer_jax.train.trainer import init_state, make_train_step
from tests.helpers import RECIPES, fake_spec, smoke, tiny_config

# The switches the README promises for any recipe, with a value that turns each on.
GENERIC_SWITCHES = {
    "adversary.identity": 0.5,
    "adversary.pose": 0.5,
    "model.freeze_until": 1,
    "optimizer.backbone_lr_multiplier": 0.1,
}


def _set(config, dotted: str, value) -> None:
    """As `--config.<dotted>=<value>` does: an unknown key is a ConfigError naming it."""
    configuration.check_key(config, dotted)
    block, key = dotted.rsplit(".", 1)
    config[block][key] = value


def _param_shapes(method, spec, data_config):
    batch = jax.tree.map(jnp.asarray, pipeline.example_batch(spec, data_config))
    with weights.shapes_only():
        return jax.eval_shape(lambda: init_state(method, jax.random.PRNGKey(0), batch)).params


def _first_updates(player, params_shapes):
    """The player's first update for a gradient of ones, from zero parameters."""
    own = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), owned(params_shapes, player))

    @jax.jit  # one compiled update instead of a dispatch per leaf and transform
    def first_update(own):
        return player.optimizer.update(jax.tree.map(jnp.ones_like, own), player.optimizer.init(own), own)[0]

    return own, first_update(own)


@pytest.mark.parametrize("switch", sorted(GENERIC_SWITCHES))
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_generic_switch_applies_or_is_an_error_naming_it(recipe, switch):
    config = tiny_config(smoke(recipe))
    spec = fake_spec(has_neutral=True)
    if not switch.startswith("adversary.") and "backbone" in config.model:
        # Fine-tuning switches are for pretrained encoders (a random ResNet's are a ConfigError);
        # random init of the same architecture keeps this test free of weight files.
        config.model.update(backbone="mini_xception", pretrained="none")
    try:
        _set(config, switch, GENERIC_SWITCHES[switch])
        configuration.validate(config)
        method = methods.build(config, spec)
    except configuration.ConfigError as e:
        assert switch.split(".")[-1] in str(e), str(e)
        # ... and only where the recipe has said it cannot apply.
        module = methods.module(config)
        cannot = (switch.startswith("adversary.") and not getattr(module, "GENERIC_ADVERSARIES", True)
                  or not switch.startswith("adversary.") and "backbone" not in config.model)
        assert cannot, f"{recipe} rejects {switch}: {e}"
        return
    shapes = _param_shapes(method, spec, config.data)
    trained = method.players[-1]  # the model / generator player
    if switch.startswith("adversary."):
        head = "adversary_" + switch.split(".")[1]
        assert "adversary" in [p.name for p in method.players] and head in shapes, (recipe, list(shapes))
        return
    stages = jax.tree.leaves(param_groups(owned(shapes, trained), 1))
    _, updates = _first_updates(trained, shapes)
    largest = [float(jnp.max(jnp.abs(u))) for u in jax.tree.leaves(updates)]
    by_group = {g: [v for v, k in zip(largest, stages, strict=True) if k == g]
                for g in ("frozen", "backbone", "head")}
    assert all(by_group.values()), (recipe, {k: len(v) for k, v in by_group.items()})
    if switch == "model.freeze_until":
        assert max(by_group["frozen"]) == 0.0 and min(by_group["head"]) > 0, recipe
        return
    # The backbone learns at 0.1x the rate of the rest.
    config.optimizer.backbone_lr_multiplier = 1.0
    _, plain = _first_updates(methods.build(config, spec).players[-1], shapes)
    plain_largest = [float(jnp.max(jnp.abs(u))) for u in jax.tree.leaves(plain)]
    ratio = {g: [a / b for a, b, k in zip(largest, plain_largest, stages, strict=True) if k == g and b > 0]
             for g in ("frozen", "backbone", "head")}
    np.testing.assert_allclose(ratio["frozen"] + ratio["backbone"], 0.1, rtol=1e-4)
    np.testing.assert_allclose(ratio["head"], 1.0, rtol=1e-4)


# The generic adversaries add batch keys (subject, yaw); the GAN recipes refuse them (tested above).
@pytest.mark.parametrize("recipe, adversary", [(r, "") for r in RECIPES] + [
    (r, f) for r in RECIPES if r not in ("fersnet", "ipdfer") for f in ("uniform", "ridge")])
def test_batch_keys_are_what_the_losses_read_and_the_pipeline_gives(recipe, adversary):
    config = tiny_config(smoke(recipe))
    if adversary:
        config.adversary.update(identity=0.5, pose=0.5, formulation=adversary)
    spec = fake_spec(has_neutral=True)
    method = methods.build(config, spec)
    pipeline.check_batch_keys(method.name, method.batch_keys, spec, config.data)
    given = jax.tree.map(jnp.asarray, pipeline.example_batch(spec, config.data, size=4))
    declared = {k: given[k] for k in method.batch_keys}
    with weights.shapes_only():
        state = jax.eval_shape(lambda: init_state(method, jax.random.PRNGKey(0), declared))
    # A step on exactly the declared keys traces: a key read but not declared would be a KeyError here.
    _, metrics = jax.eval_shape(make_train_step(method), state, declared)
    assert set(method.evaluations) <= set(evaluate.EVALUATORS), method.evaluations
    if adversary == "ridge":  # solved inside the model's loss: no adversary player, no heads
        assert [p.name for p in method.players] == ["model"]
        assert {"model/identity_ridge_r2", "model/pose_ridge_r2"} <= set(metrics), sorted(metrics)


def test_a_method_that_reads_a_key_the_data_lacks_is_an_error_naming_the_switch():
    config = tiny_config(smoke("baseline"))
    with pytest.raises(pipeline.DataError, match=r"mine reads \['partner_image'\].*--config.data.partner"):
        pipeline.check_batch_keys("mine", ("image", "partner_image"), fake_spec(), config.data)
    config.data.partner = "other_expression"
    pipeline.check_batch_keys("mine", ("image", "partner_image"), fake_spec(), config.data)


def test_one_registry_names_every_recipe():
    assert methods.BUILT_IN == RECIPES == tuple(methods.METHODS)[:len(RECIPES)]
    for recipe in RECIPES:
        assert callable(methods.module(tiny_config(smoke(recipe))).build)
    with pytest.raises(ValueError, match="built-in"):
        methods.register("baseline", lambda config, spec: None)


NEW_RECIPE = '''"""Cosine classifier: a tiny ResNet, logits = scaled cosines to class vectors."""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from idfer_jax import losses, models
from idfer_jax.methods import common


class CosineClassifier(nn.Module):
    backbone: nn.Module
    num_classes: int
    scale: float

    @nn.compact
    def __call__(self, images, *, train: bool):
        features = self.backbone(images, train=train)
        unit = features / (jnp.linalg.norm(features, axis=-1, keepdims=True) + 1e-6)
        classes = self.param("classes", nn.initializers.normal(1.0), (features.shape[-1], self.num_classes))
        classes = classes / jnp.linalg.norm(classes, axis=0, keepdims=True)
        return {"logits": self.scale * unit @ classes, "features": features}


def model_config():
    return ml_collections.ConfigDict({"backbone": "resnet_tiny", "scale": 10.0})


def build(config, data_spec):
    backbone = models.build_backbone(config.model.backbone, in_channels=data_spec.image_shape[-1])
    model = CosineClassifier(backbone, data_spec.num_classes, config.model.scale)

    def objective(outputs, params, batch, step):
        loss = losses.softmax_cross_entropy(outputs["logits"], batch["expression"])
        return loss, {"accuracy": common.accuracy(outputs["logits"], batch["expression"])}

    return common.build_recipe(config.method, model, objective, config, data_spec)
'''

NEW_CONFIG = '''from idfer_jax import config_defaults as defaults

import my_recipes.cosine_classifier as recipe


def get_config(arg=None):
    c = defaults.synthetic_run("my_recipes.cosine_classifier", recipe.model_config(), arg)
    c.train.update(num_steps=200, log_every=50, checkpoint_every=200)
    return c
'''


@pytest.mark.slow
def test_a_new_recipe_is_one_module_and_its_config(smoke_data_dir, tmp_path, monkeypatch):
    """Nothing but a module and a config file, outside this package: trained, resumed and evaluated by
    the generic trainer (the README's promise for a new method)."""
    from idfer_jax import api

    (tmp_path / "my_recipes").mkdir()
    (tmp_path / "my_recipes" / "__init__.py").write_text("")
    (tmp_path / "my_recipes" / "cosine_classifier.py").write_text(NEW_RECIPE)
    (tmp_path / "cosine_classifier_synthetic.py").write_text(NEW_CONFIG)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = api.load_config(str(tmp_path / "cosine_classifier_synthetic.py") + ":smoke")
    config.data.data_dir = smoke_data_dir
    trained = api.train(config, str(tmp_path / "run"))
    assert trained.last_metrics["model/loss"] < 0.9 * trained.first_metrics["model/loss"]
    results = api.evaluate(config, str(tmp_path / "run"))
    assert results["method"] == "my_recipes.cosine_classifier"
    assert results["identity_leakage"]["linear_acc"] > results["identity_leakage"]["chance"]
    config.method = "my_recipes.no_such_recipe"
    with pytest.raises(configuration.ConfigError, match="cannot be imported"):
        api.train(config, str(tmp_path / "other"))


def test_odd_recipe_names_and_registrations_are_config_errors(tmp_path, monkeypatch):
    (tmp_path / "broken_recipe.py").write_text("raise RuntimeError('half-written recipe')\n")
    (tmp_path / "not_a_recipe.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tiny_config(smoke("baseline"))
    for method, message in [("idfer_jax.methods", "absolute import path of a recipe"),
                            (".baseline", "absolute import path"),
                            ("no_such_package.recipe", "cannot be imported"),
                            ("broken_recipe.x", "RuntimeError: half-written recipe"),
                            ("not_a_recipe.", "cannot be imported")]:
        config.method = method
        with pytest.raises(configuration.ConfigError, match=message):
            configuration.validate(config)
    monkeypatch.setitem(methods.METHODS, "placeholder", "idfer_jax.methods.baseline")  # restored after
    with pytest.raises(configuration.ConfigError, match="RuntimeError: half-written recipe"):
        methods.register("placeholder", "broken_recipe")
    with pytest.raises(configuration.ConfigError, match="not a recipe"):
        methods.register("placeholder", "not_a_recipe")
    with pytest.raises(configuration.ConfigError, match="takes a module path"):
        methods.register("placeholder", 42)


def test_a_registered_build_that_ignores_an_adversary_or_names_an_unknown_evaluation_is_refused(monkeypatch):
    import dataclasses

    from idfer_jax.methods import fersnet

    spec = fake_spec(has_neutral=True)
    monkeypatch.setitem(methods.METHODS, "my_gan", None)
    methods.register("my_gan", fersnet.build)  # a function cannot say it has no generic adversaries
    config = tiny_config(smoke("fersnet"))
    config.method = "my_gan"
    config.adversary.identity = 1.0
    with pytest.raises(configuration.ConfigError, match="built no adversary player"):
        methods.build(config, spec)
    config.adversary.identity = 0.0
    def asking_for(*evaluations):
        return lambda c, s: dataclasses.replace(fersnet.build(c, s), evaluations=evaluations)

    methods.register("my_gan", asking_for("attention_map"))
    with pytest.raises(configuration.ConfigError, match=r"evaluations \['attention_map'\]"):
        methods.build(config, spec)
    methods.register("my_gan", asking_for("neutralisation"))
    with pytest.raises(configuration.ConfigError, match=r"no generators \['neutralise'\]"):
        methods.build(config, spec)


@pytest.mark.parametrize("recipe", ["fersnet", "ipdfer"])
def test_gan_recipes_accept_a_config_without_an_adversary_block_and_refuse_negative_weights(recipe):
    config = tiny_config(smoke(recipe))
    with config.unlocked():
        del config["adversary"]
    configuration.validate(config)
    config = tiny_config(smoke(recipe))
    config.model.loss_weights.identity = -1.0
    with pytest.raises(configuration.ConfigError, match="must be >= 0"):
        configuration.validate(config)


def test_a_method_without_logits_and_features_is_refused_before_it_trains(smoke_config):
    import dataclasses

    from idfer_jax.methods import baseline
    from idfer_jax.train.trainer import Trainer

    def build(config, spec):
        method = baseline.build(config, spec)
        def logits_only(variables, images):
            return {"logits": method.apply(variables, images)["logits"]}

        return dataclasses.replace(method, apply=logits_only)

    trainer = Trainer(smoke_config, build)
    with pytest.raises(configuration.ConfigError, match=r"without \['features'\]"):
        trainer.check_outputs(trainer.abstract_state().variables())
