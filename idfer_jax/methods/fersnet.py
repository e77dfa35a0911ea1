"""Selective feature sharing FER + expression synthesis: FERSNet (Zhao et al., ICPR 2020, arXiv 2007.04514).

[paper] A multi-task network for expression recognition (FER) and expression synthesis (FES) transfers
useful features between the tasks and filters harmful ones; synthesis also enlarges and balances the
training set. [code] The authors' released code is the ground truth here (it differs from the
conference figure); METHODS.md section 3 has the details:
- `models.FERSNet`: a shared stem, a FER branch (BatchNorm) and a FES branch (InstanceNorm) of ResNet
  stages exchanging features through ConvFLU pairs after every stage, a joint block whose halves feed
  the classifier and a conditional U-Net decoder (AdaIN-like transform of the target expression, noise
  injection); `models.PatchDiscriminator` conditioned on the expression, LSGAN.
- Each source x (label y_s) is paired with a target x_t of the *same subject* with another expression
  y_t (`data.partner='other_expression'`; the pipeline gives both the same crop and flip).
  On the synthetic faces `data.partner='counterfactual'` makes x_t the exact counterfactual (same
  subject, pose, light and background); a real partner differs in pose and light too, and the L1 to it
  then rewards a blur of the subject's images. Discriminator: `0.5 [(D(x_t, y_t) - 1)^2
  + D(G(x, y_t), y_t)^2]`, `discriminator_steps` (3) updates on one batch of fakes. Generator and
  classifier: `CE(logits(x), y_s) + L1(x_syn, x_t) + w_id d_id(x_syn, x_t) + 0.3 (D(x_syn, y_t) - 1)^2
  + 0.5 MSE(G(x_syn, y_s), x)`; the classifier learns from real images only. [choice] `target_expression`
  (weight 0 = off, the code's) adds `CE(logits(x_syn), y_t)` with the classifier frozen for the term, as
  StarGAN's domain-classification loss does: L1 alone rewards copying the input wherever the generator is
  unsure of the change (the median of a change of uncertain sign is 0).
- Adam lr 1e-4, betas (0.5, 0.999), L2 5e-4 added to the gradient (not AdamW), lr x0.1 at epochs 150
  and 400 of 500: `optimizer.schedule='milestones'`, `milestones=(0.3, 0.8)` of the run. The code picks
  the best epoch on the test fold; this library reports the last step.

[choice] The identity term d_id: the code takes the MSE (weight 0.05) between LightCNN-9 convolutional
feature maps of grey images, unnormalised, so the term is on the scale of the L1 term. The library's
identity network (`model.identity`) gives L2-normalised embeddings, whose MSE is at most 4/512: times 0.05
it was effectively off. d_id is therefore the cosine distance `1 - cos(idnet(x_syn), idnet(x_t))`,
in [0, 2], at weight `loss_weights.identity` = 1 [choice], on the L1 term's scale (the gradient-norm
test in tests/test_generators_learn.py checks it reaches the generator). [choice] The decoder's AdaIN-like
transform is `model.adain`: 'code' (`gamma * IN(x) + beta`, the default) or 'residual'
(`(1 + gamma) IN(x) + beta`). With the code's form a decoder that draws the whole face starts from skips
that carry almost nothing of the input; once the decoder draws only the change (below) the input passes
around it, and the code's form is the one whose output depends on the target (8x more on one batch than
the residual form's: docs/results/generative.md). [choice] `model.synthesis='residual'` (default)
makes the decoder draw the change added to the input, `x + D(...)`, starting as a copy; 'image' is the
code's (the decoder draws the whole face). [choice] Without noise at evaluation, so transfer
grids are deterministic. [choice] Synthesis-to-balance as a second stage
(`synthesise_to_balance`): G draws every training subject's missing and minority expressions, which
join the real images to fine-tune the classifier (`model.balance_steps`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from idfer_jax import config_defaults, losses
from idfer_jax.configuration import ConfigError, check_choice
from idfer_jax.console import announce
from idfer_jax.data.pipeline import DataSpec
from idfer_jax.methods import common
from idfer_jax.methods import generative as gen
from idfer_jax.models import FERSNet, PatchDiscriminator
from idfer_jax.models.fersnet import ADAIN_FORMS, SYNTHESIS_FORMS
from idfer_jax.train.interface import FinishingStage, Method, Player
from idfer_jax.train.optim import make_optimizer

# Its players are the GAN's (discriminator, generator), not `common.build_recipe`'s, so the generic
# identity / pose adversaries of `config.adversary` are a ConfigError here (methods.check_config).
GENERIC_ADVERSARIES = False
LOSS_WEIGHTS = ("expression", "synthesis", "identity", "adversarial", "cycle", "target_expression")


def model_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.model` block of FERSNet; defaults are the code's at 96 px."""
    c = ml_collections.ConfigDict()
    c.stem_width = 64
    c.widths = (128, 256, 512)  # exchange stages; the joint block is 2 x 512
    c.blocks_per_stage = 1
    c.pooled_reset_gate = False  # the earlier ConvFLU: one reset gate per channel, from pooled maps
    c.noise = True  # noise injection in the decoder's AdaIN-like transform
    c.adain = "code"  # code: gamma IN(x) + beta [code] | residual: (1 + gamma) IN(x) + beta [choice]
    c.synthesis = "residual"  # residual: x + D(...) [choice] | image: D(...) draws the face [code]
    c.discriminator_widths = (64, 128, 256, 512)
    c.discriminator_steps = 3
    c.identity = gen.identity_config()
    c.loss_weights = ml_collections.ConfigDict(dict(
        expression=1.0, synthesis=1.0, identity=1.0, adversarial=0.3, cycle=0.5, target_expression=0.0))
    c.balance_steps = 0  # synthesis-to-balance fine-tuning steps after training; 0 = off
    c.balance_learning_rate_factor = 0.1  # fine-tuning rate = optimizer.learning_rate x this
    c.update(overrides)
    return c


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
    """[code] Adam 1e-4, betas (0.5, 0.999), L2 5e-4 in the gradient, x0.1 at 30% and 80% of the run."""
    return config_defaults.optimizer(**{
        "name": "adam", "learning_rate": 1e-4, "b1": 0.5, "b2": 0.999, "weight_decay": 5e-4,
        "schedule": "milestones", "milestones": (0.3, 0.8), "milestone_factor": 0.1, "warmup_steps": 0,
        "grad_clip": 0.0, **overrides})


def benchmark_config(benchmark: str) -> ml_collections.ConfigDict:
    """FERSNet on a real benchmark ('ckplus' or 'jaffe'), with the baseline's data, folds and budget:
    [choice] half the code's widths and lr 1e-3 (see `configs/fersnet_ckplus.py`), FaceNet as idnet."""
    model = model_config(stem_width=32, widths=(64, 128, 256), discriminator_widths=(32, 64, 128),
                         identity=gen.identity_config(kind="facenet"))
    c = config_defaults.benchmark_run("fersnet", model, benchmark)
    c.optimizer = optimizer_config(learning_rate=1e-3)
    c.data.partner = "other_expression"
    return c


def build_model(config, data_spec: DataSpec) -> FERSNet:
    m = config.model
    return FERSNet(num_classes=data_spec.num_classes, image_shape=tuple(data_spec.image_shape),
                   widths=tuple(m.widths), stem_width=int(m.stem_width),
                   blocks_per_stage=int(m.blocks_per_stage), pooled_reset_gate=bool(m.pooled_reset_gate),
                   noise=bool(m.noise), adain_form=str(m.get("adain", "code")),
                   synthesis=str(m.get("synthesis", "image")),
                   dtype=jnp.dtype(config.dtype))


def check_config(config) -> None:
    """FERSNet's loss weights, identity network and partner images (run when the config is loaded)."""
    gen.check_loss_weights(config, LOSS_WEIGHTS, "FERSNet")
    gen.check_identity(config)
    if config.data.get("partner") not in ("other_expression", "counterfactual"):
        raise ConfigError(
            "FERSNet learns to synthesise a target face of the same subject with another expression: set "
            "--config.data.partner=other_expression (real data) or =counterfactual (synthetic faces; the "
            "fersnet_* configs do)."
        )
    check_choice(config, "model.adain", ADAIN_FORMS)
    check_choice(config, "model.synthesis", SYNTHESIS_FORMS)


def build(config, data_spec: DataSpec) -> Method:
    m = config.model
    check_config(config)
    w = {k: float(m.loss_weights[k]) for k in LOSS_WEIGHTS}
    num_classes = data_spec.num_classes
    model = build_model(config, data_spec)
    identity_net = gen.identity_network(config)
    discriminator = PatchDiscriminator(num_classes=num_classes, widths=tuple(m.discriminator_widths))

    def onehot(labels):
        return jax.nn.one_hot(labels, num_classes)

    def generator_loss(params, model_state, batch, rng, step):
        del step
        x, x_t = batch["image"], batch["partner_image"]
        y_s, y_t = batch["expression"], batch["partner_expression"]
        forward_rng, cycle_rng, read_rng = jax.random.split(rng, 3)
        outputs, state = gen.apply_model(model, params, model_state, x, onehot(y_t), train=True,
                                         rng=forward_rng)
        synthesis = outputs["synthesis"]
        # The way back, G(x_syn, y_s): its logits are not used, so the classifier learns from real
        # images only, and its batch-statistics updates are dropped, so the running averages that
        # evaluation uses come from real faces only.
        cycled, _ = gen.apply_model(model, params, state, synthesis, onehot(y_s), train=True,
                                    rng=cycle_rng)
        terms = {
            "expression": losses.softmax_cross_entropy(outputs["logits"], y_s),
            "synthesis": losses.l1(synthesis, x_t),
            "identity": jnp.mean(losses.cosine_distance(
                gen.embed_identity(identity_net, model_state, synthesis),
                gen.embed_identity(identity_net, model_state, x_t))),
            "adversarial": gen.generator_adversarial_loss(discriminator, params, synthesis, onehot(y_t)),
            "cycle": losses.mse(cycled["synthesis"], x),
        }
        if w["target_expression"] > 0:
            # [choice] The classifier, frozen for this term, must read the target in the synthesis: its
            # gradient reaches the image (and so the generator), never the classifier, which keeps
            # learning from real faces only.
            read, _ = gen.apply_model(model, jax.lax.stop_gradient(params), state, synthesis, train=True,
                                      rng=read_rng, decode=False)
            terms["target_expression"] = losses.softmax_cross_entropy(read["logits"], y_t)
        # Terms weighted 0 stay out of the loss (and its backward pass); every term is logged.
        loss, metrics = losses.WeightedSum({k: w[k] for k in terms if w[k] > 0})(
            {}, {k: v for k, v in terms.items() if w[k] > 0})
        metrics.update({f"loss/{k}": v for k, v in terms.items() if w[k] == 0})
        metrics["accuracy"] = common.accuracy(outputs["logits"], y_s)
        metrics["paired"] = jnp.mean(batch["partner_mask"])
        return loss, (state, metrics)

    def gan_examples(params, model_state, batch, rng, step):
        del step
        target = onehot(batch["partner_expression"])
        outputs, _ = gen.apply_model(model, params, model_state, batch["image"], target, train=True, rng=rng)
        return {"real": batch["partner_image"], "real_condition": target,
                "fake": outputs["synthesis"], "fake_condition": target}

    def init(rng, batch):
        model_rng, id_rng, d_rng = jax.random.split(rng, 3)
        images = batch["image"]
        target = jnp.zeros((images.shape[0], num_classes), jnp.float32)
        variables = dict(model.init({"params": model_rng, "noise": model_rng}, images, target, train=False))
        variables["params"] = {**variables["params"],
                               gen.DISCRIMINATOR: discriminator.init(d_rng, images, target)["params"]}
        return {**variables, **gen.init_identity(identity_net, id_rng, images)}

    def split(variables):
        return variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def apply(variables, images):
        params, state = split(variables)
        return gen.apply_model(model, params, state, images, train=False, decode=False)

    def transfer(variables, images, target_onehot):
        params, state = split(variables)
        return gen.apply_model(model, params, state, images, target_onehot, train=False)["synthesis"]

    def embed(variables, images):
        return gen.embed_identity(identity_net, variables, images)

    sample = {"image": jnp.zeros((2, *data_spec.image_shape), jnp.float32)}
    groups = jax.eval_shape(init, jax.random.PRNGKey(0), sample)["params"]
    num_steps = config.train.num_steps
    players = (
        gen.discriminator_player(discriminator, gan_examples, make_optimizer(config.optimizer, num_steps),
                                 m.discriminator_steps),
        Player("generator", generator_loss, make_optimizer(config.optimizer, num_steps),
               owns=tuple(k for k in groups if k != gen.DISCRIMINATOR)),
    )
    def classification_loss(own, params, model_state, batch, rng):
        outputs, state = gen.apply_model(model, {**params, **own}, model_state, batch["image"], train=True,
                                         rng=rng, decode=False)
        return losses.softmax_cross_entropy(outputs["logits"], batch["expression"]), state

    finishing = None
    if int(m.balance_steps) > 0:
        finishing = FinishingStage(
            steps=int(m.balance_steps),
            run=lambda trainer, state: synthesise_to_balance(
                trainer, state, transfer, classification_loss, owns=players[1].owns, num_classes=num_classes,
                steps=int(m.balance_steps),
                learning_rate=float(config.optimizer.learning_rate) * float(m.balance_learning_rate_factor)),
            description="synthesis-to-balance: G draws the missing and minority expressions of every "
                        "training subject; the classifier is fine-tuned on real + synthetic faces",
        )
    return Method(
        name="fersnet", init=init, players=players, apply=apply,
        batch_keys=("image", "expression", "partner_image", "partner_expression", "partner_mask"),
        frozen_variables=gen.identity_loader(config), evaluations=("expression_transfer",),
        generators={"transfer": transfer, "embed_identity": embed}, finishing_stage=finishing,
    )


def balance_plan(subjects: np.ndarray, expressions: np.ndarray, num_classes: int,
                 rng: np.random.Generator) -> list[tuple[int, int]]:
    """(source record position, target class) pairs that bring every subject's count of each expression
    up to that subject's most frequent one: a missing expression is drawn from the subject's other
    images. [choice] Per subject, so synthesis adds expressions to people, never people to classes."""
    plan = []
    for subject in np.unique(subjects):
        mine = np.flatnonzero(subjects == subject)
        counts = np.bincount(expressions[mine], minlength=num_classes)
        for k in range(num_classes):
            sources = mine[expressions[mine] != k]
            if len(sources):
                plan += [(int(i), k) for i in rng.choice(sources, counts.max() - counts[k])]
    return plan


def synthesise_to_balance(trainer, state, transfer, classification_loss, *, owns, num_classes: int,
                          steps: int, learning_rate: float, seed: int = 0):
    """The synthesis-to-balance stage ([choice], METHODS.md section 3): draw the plan's faces with the
    trained G (evaluation mode, no noise), then fine-tune the generator player's groups on cross entropy
    over batches of half real, half synthetic faces, with a fresh Adam (the stage's state is not kept)."""
    from idfer_jax.data import pipeline
    from idfer_jax.train.trainer import to_global

    dataset, config = trainer.dataset, trainer.config
    train = np.asarray(dataset.train_indices)
    rng = np.random.default_rng(seed)
    batch_size = int(config.train.batch_size)
    labels = dataset.labels
    plan = balance_plan(labels["subject"][train], labels["expression"][train], num_classes, rng)
    announce(f"Synthesis-to-balance: drawing {len(plan)} faces for {len(train)} real training images.")

    def to_devices(batch):
        # Every process draws the same global batch (same seed); each hands over its own slice.
        n, i = batch_size // jax.process_count(), jax.process_index()
        return to_global({k: v[i * n:(i + 1) * n] for k, v in batch.items()}, trainer.batch_sharding)

    variables = state.variables()
    draw = trainer.jit(transfer, out_shardings=trainer.replicated)
    synthetic_images, synthetic_labels = [], []
    for lo in range(0, len(plan), batch_size):
        chunk = plan[lo:lo + batch_size]
        padded = chunk + [chunk[-1]] * (batch_size - len(chunk))  # full batches: one compiled shape
        images = pipeline.load_examples(dataset, [train[i] for i, _ in padded])["image"]
        targets = np.eye(num_classes, dtype=np.float32)[[k for _, k in padded]]
        arrays = to_devices({"image": images, "target": targets})
        drawn = np.asarray(jax.device_get(draw(variables, arrays["image"], arrays["target"])))
        synthetic_images.append(drawn[:len(chunk)])
        synthetic_labels += [k for _, k in chunk]
    if not plan:
        return state.replace(step=state.step + steps)
    synthetic_images = np.clip(np.concatenate(synthetic_images), -1.0, 1.0)
    synthetic_labels = np.asarray(synthetic_labels, np.int32)

    optimizer = optax.adam(learning_rate, b1=float(config.optimizer.b1), b2=float(config.optimizer.b2))
    own = {k: state.params[k] for k in owns}

    def step_fn(own, opt_state, model_state, batch, rng):
        (loss, new_state), grads = jax.value_and_grad(classification_loss, has_aux=True)(
            own, state.params, model_state, batch, rng)
        updates, opt_state = optimizer.update(grads, opt_state, own)
        return optax.apply_updates(own, updates), opt_state, new_state, loss

    step_fn = trainer.jit(step_fn, out_shardings=trainer.replicated)
    opt_state = optimizer.init(own)
    model_state = state.model_state
    half = batch_size // 2
    for step in range(steps):
        real = pipeline.load_examples(dataset, rng.choice(train, batch_size - half))
        pick = rng.integers(0, len(synthetic_labels), half)
        images = np.concatenate([real["image"], synthetic_images[pick]])
        flip = rng.random(len(images)) < 0.5 if config.data.flip else np.zeros(len(images), bool)
        images[flip] = images[flip, :, ::-1]
        batch = to_devices({"image": images, "expression": np.concatenate(
            [real["expression"], synthetic_labels[pick]]).astype(np.int32)})
        own, opt_state, model_state, loss = step_fn(own, opt_state, model_state, batch,
                                                    jax.random.fold_in(jax.random.PRNGKey(seed), step))
        if (step + 1) % max(1, steps // 4) == 0:
            announce(f"balance step {step + 1}/{steps} | cross entropy {float(loss):.4f}")
    return state.replace(step=state.step + steps, params={**state.params, **own}, model_state=model_state)
