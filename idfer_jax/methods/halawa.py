"""Adversarial disentangling of expression (Halawa et al. 2020, arXiv 2008.07001).

[paper] A formulation of the adversarial loss learns disentangled face representations from data with
expression labels only: a shared trunk, an expression branch and a non-expression branch, trained with
expression classification, reconstruction and an adversarial loss so that the non-expression code
cannot predict the expression.

What this recipe builds (METHODS.md section 2), with every [choice] a config switch:
- Shared trunk S = the backbone's stages before `branch_stage` [choice: -1, so the two branches are
  two copies of the last stage]; expression branch E_e and non-expression branch E_n run the remaining
  stages on the trunk's map, and their pooled outputs are the codes z_e and z_n [choice: no extra
  projection, so z_e has the baseline's feature width]. z_e is what the leakage probes read.
- Expression classifier C_e(z_e) with cross entropy.
- Adversary C_a(z_n) -> expression logits, its own player and optimizer state
  (`idfer_jax.methods.adversaries`), weighted by `adversary_weight` [choice: 1.0]. The formulation is
  `config.adversary.formulation`: `uniform` (default), `grl` or `negated_ce`.
- Decoder G([z_e, z_n]) -> the image (`models.ImageDecoder`, `decoder_widths`), with an L1 loss
  [choice: L1 on images in [-1, 1]] weighted by `reconstruction_weight` [choice: 1.0]; 0 removes the
  decoder altogether. [choice] The target is the image mean-pooled by `reconstruction_downsample` = 2
  (a 64 px face is reconstructed at 32 px), which made a CPU step 2x faster.
- The identity and pose adversaries of `config.adversary` attach to z_e as on every recipe.
- `idfer evaluate` probes both codes (`Method.codes`): z_e for identity/pose, z_n for expression too;
  with the decoder it draws `swap.png` (z_e of one held-out face decoded with z_n of another,
  `generators['decode']`).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from idfer_jax import config_defaults, losses
from idfer_jax.configuration import ConfigError
from idfer_jax.data.pipeline import DataSpec
from idfer_jax.methods import adversaries as adv
from idfer_jax.methods import common
from idfer_jax.models import ClassifierHead, ImageDecoder, build_backbone, num_stages
from idfer_jax.train.interface import Method


class Halawa(nn.Module):
    trunk: nn.Module  # stages before branch_stage
    expression_branch: nn.Module  # stages from branch_stage, pooled: z_e
    nuisance_branch: nn.Module  # the same stages with their own weights, pooled: z_n
    expression_head: nn.Module
    decoder: ImageDecoder | None  # None when the reconstruction weight is 0

    def __call__(self, images, *, train: bool, reconstruct: bool = True):
        _, maps = self.trunk(images, train=train, return_stages=True)
        z_e = self.expression_branch(maps[-1], train=train)
        z_n = self.nuisance_branch(maps[-1], train=train)
        outputs = {
            "logits": self.expression_head(z_e, train=train),
            "features": z_e,
            "nuisance_features": z_n,
        }
        if self.decoder is not None and reconstruct:
            outputs["reconstruction"] = self.decode(z_e, z_n, train=train)
        return outputs

    def decode(self, z_e, z_n, *, train: bool = False):
        """G([z_e, z_n]): the face the decoder draws from an expression code and a non-expression code,
        which may come from different faces (the swap figure: `model.apply(v, z_e, z_n,
        method=Halawa.decode)`)."""
        return self.decoder(jnp.concatenate([z_e, z_n], axis=-1), train=train)


def model_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.model` block of Halawa et al."""
    c = config_defaults.backbone(ml_collections.ConfigDict())
    c.head_hidden = ml_collections.FieldReference(None, field_type=int)
    c.dropout = 0.0
    c.label_smoothing = 0.0
    c.branch_stage = -1  # first stage of the two branches (0-based; -1 = the last stage)
    c.adversary_weight = 1.0  # the expression adversary on z_n
    c.reconstruction_weight = 1.0  # 0 = no decoder, no reconstruction loss
    c.decoder_widths = (64, 32)  # one 2x upsampling stage each
    # [choice] Reconstruct the image downsampled by this factor (2x2 mean pooling): at full size the
    # decoder's convolutions took 2/3 of the step time on a CPU, for detail the codes need not carry.
    c.reconstruction_downsample = 2
    c.update(overrides)
    return c


def check_config(config) -> None:
    """The branch stage against the backbone's stages (run when the config is loaded)."""
    _branch_stage(config.model, num_stages(config.model.backbone))


def _branch_stage(m, num_stages: int) -> int:
    stage = m.branch_stage if m.branch_stage >= 0 else num_stages + m.branch_stage
    if not 1 <= stage < num_stages:
        raise ConfigError(
            f"config.model.branch_stage={m.branch_stage} must leave the trunk at least one of the "
            f"{num_stages} stages of {m.backbone!r}; use 1..{num_stages - 1} or -1 for the last."
        )
    return stage


def build_model(config, data_spec: DataSpec) -> Halawa:
    m = config.model
    dtype = jnp.dtype(config.dtype)
    kwargs = common.backbone_options(config)
    trunk = build_backbone(m.backbone, in_channels=data_spec.image_shape[-1], **kwargs)
    stage = _branch_stage(m, len(trunk.widths))

    def branch() -> nn.Module:
        return build_backbone(m.backbone, start_stage=stage, in_channels=None, **kwargs)

    decoder = None
    if float(m.reconstruction_weight) > 0:
        h, w, c = data_spec.image_shape
        f = int(m.reconstruction_downsample)
        if f < 1 or h % f or w % f:
            raise ConfigError(f"config.model.reconstruction_downsample={f} must be a positive divisor of "
                             f"the image size {h}x{w}.")
        decoder = ImageDecoder(image_shape=(h // f, w // f, c), widths=tuple(m.decoder_widths),
                               dtype=dtype)
    return Halawa(
        trunk=build_backbone(m.backbone, end_stage=stage, in_channels=data_spec.image_shape[-1],
                             **kwargs),
        expression_branch=branch(),
        nuisance_branch=branch(),
        expression_head=ClassifierHead(num_classes=data_spec.num_classes, hidden=m.get("head_hidden"),
                                       dropout_rate=m.dropout, dtype=dtype),
        decoder=decoder,
    )


def reconstruction_target(images: jnp.ndarray, downsample: int) -> jnp.ndarray:
    """The images the decoder must reproduce: mean-pooled by `downsample`."""
    if downsample == 1:
        return images
    return nn.avg_pool(images, (downsample, downsample), strides=(downsample, downsample))


def build(config, data_spec: DataSpec) -> Method:
    m = config.model
    model = build_model(config, data_spec)
    expression_adversary = adv.Adversary(
        "expression", reads="nuisance_features", num_classes=data_spec.num_classes,
        labels=lambda batch: (batch["expression"], None), weight=float(m.adversary_weight),
        **adv.options(config),
    )
    cross_entropy = losses.cross_entropy(label_smoothing=m.label_smoothing)
    reconstruction_weight = float(m.reconstruction_weight)
    downsample = int(m.reconstruction_downsample)

    def objective(outputs, params, batch, step):
        del params, step
        expression = cross_entropy(outputs, batch)
        metrics = {"expression_ce": expression,
                   "accuracy": common.accuracy(outputs["logits"], batch["expression"])}
        loss = expression
        if reconstruction_weight > 0:
            reconstruction = losses.l1(outputs["reconstruction"],
                                            reconstruction_target(batch["image"], downsample))
            metrics["reconstruction_l1"] = reconstruction
            loss = loss + reconstruction_weight * reconstruction
        return loss, metrics

    method = common.build_recipe(
        "halawa", model, objective, config, data_spec,
        adversaries=(expression_adversary,) if m.adversary_weight > 0 else (),
        adversary_call={"reconstruct": False},
        evaluations=("reconstructions", "swap") if reconstruction_weight > 0 else (),
        codes=("features", "nuisance_features"),
    )
    if reconstruction_weight <= 0:
        return method

    def decode(variables, z_e, z_n):
        """(variables, z_e, z_n) -> the decoder's images (at the reconstruction target's size)."""
        return model.apply({**variables, "params": common.model_params(variables["params"])}, z_e, z_n,
                           method=Halawa.decode)

    return dataclasses.replace(method, generators={**method.generators, "decode": decode})
