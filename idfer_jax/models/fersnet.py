"""FERSNet: multi-task expression recognition (FER) and synthesis (FES) with selective feature sharing.

Zhao et al., ICPR 2020 (arXiv 2007.04514), as in the authors' released code (METHODS.md section 3, where the
code is the ground truth). A shared stem feeds two branches of ResNet BasicBlock stages, FER with BatchNorm
and FES with InstanceNorm (instance statistics suit a generator: the synthesis must not depend on the rest
of the batch). After every stage each branch is max-pooled and takes in part of the other's map through a
pair of ConvFLU units. A joint block on the concatenation of the two last maps is split back in halves: one
feeds the classifier, the other a U-Net decoder whose skips are the FES-side ConvFLU outputs, each skip and
the bottleneck conditioned on the target expression by an AdaIN-like transform.

Layout [code], with the code's widths (stem 64, ``widths=(128, 256, 512)``), 96 px input::

    stem conv3x3+BN+ReLU, maxpool                      48 px, 64 ch      -> skip 0
    stage i: BasicBlock(s) per branch, maxpool, ConvFLU pair   24/12/6 px, 128/256/512 ch -> skip i (FES side)
    joint BasicBlock (BN) on [FER, FES], maxpool       3 px, 1024 ch -> halves of 512
    FER half -> conv3x3+BN+ReLU, GAP ('features'), linear ('logits')
    FES half -> decoder -> 96 px image ('synthesis')

Departures and [choice]s, each documented where it is made:
  - BasicBlocks are the library's (``idfer_jax.models.resnet.BasicBlock``): the projection shortcut has a
    norm layer and the last norm of each residual branch starts at zero, unlike the code's plain 1x1
    projection [choice].
  - Max pools pad at the bottom/right ('SAME', so sizes are rounded up) and the decoder crops every upsampled
    map to its skip's size and the last map to the input's size, so any input size at least as large as the
    check in ``FERSNet`` asks for works (48 px included); the code assumes multiples of 32 [choice].
  - The decoder's per-level widths follow one rule (see ``FERSDecoder``) close to the code's VGG13-shaped
    plan [choice].
  - Noise of the AdaIN-like transform is drawn only when ``train=True`` (rng stream ``'noise'``); evaluation
    is deterministic. The code draws noise at test time too [choice].
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from idfer_jax.models.convflu import ConvFLU
from idfer_jax.models.resnet import BasicBlock, _conv_init, _normalize

__all__ = ["ADAIN_FORMS", "SYNTHESIS_FORMS", "ExpressionAdaIN", "FERSDecoder", "FERSNet"]


def _max_pool(x: jnp.ndarray) -> jnp.ndarray:
    """2x2/2 max pool; 'SAME' pads odd sides at the bottom/right with -inf, so an odd side rounds up."""
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")


def _instance_norm(x: jnp.ndarray, dtype: Any, name: str) -> jnp.ndarray:
    """Instance norm without affine parameters, PyTorch's ``InstanceNorm2d`` default that the code uses."""
    # epsilon 1e-5 is PyTorch's (flax's default is 1e-6): over the few positions of the bottleneck
    # (2x2 at 48-64 px) a channel's variance can be ~0, and 1/sqrt(eps) is how far float noise is amplified.
    return nn.InstanceNorm(use_scale=False, use_bias=False, epsilon=1e-5, dtype=dtype, name=name)(x)


ADAIN_FORMS = ("code", "residual")
SYNTHESIS_FORMS = ("image", "residual")


class ExpressionAdaIN(nn.Module):
    """Conditions a map on the target expression: ``gamma(t) * IN(x + s * noise) + beta(t)`` [code].

    ``(gamma, beta) = Dense(t)`` for the target one-hot t, a Xavier-normal kernel scaled by 0.1 and a zero
    bias [code]. With ``form='code'`` the transform is ``gamma * x + beta`` [code]: gamma starts near 0, so
    the conditioned map starts near ``beta`` and carries almost nothing of the input: at CPU budgets the
    synthesis then never depends on its input (docs/results/generative.md). ``form='residual'`` is
    ``(1 + gamma) * x + beta`` [choice], which starts as the identity on ``IN(x)``. ``noise`` is one
    standard-normal value per example and position, shared by all channels, times a learned scalar ``s``
    initialised at 0 [code]; it is added before the (non-affine) instance norm [code].

    Attributes:
      noise: add the noise; the scale parameter exists whenever this is True, so train and eval share
        one parameter tree.
      form: 'code' or 'residual' (above).
      dtype: computation dtype.
    """

    noise: bool = True
    form: str = "code"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, target: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        chex.assert_rank([x, target], [4, 2])
        x = x.astype(self.dtype)
        if self.noise:
            scale = self.param("noise_scale", nn.initializers.zeros_init(), (1,))
            # [choice] Evaluation adds no noise, so that predictions and synthesis are reproducible.
            if train:
                n, h, w, _ = x.shape
                noise = jax.random.normal(self.make_rng("noise"), (n, h, w, 1), jnp.float32)
                x = x + (scale * noise).astype(self.dtype)
        x = _instance_norm(x, self.dtype, "norm")
        style = nn.Dense(
            2 * x.shape[-1],
            dtype=self.dtype,
            kernel_init=nn.initializers.variance_scaling(0.01, "fan_avg", "normal"),  # xavier * 0.1
            name="style",
        )(target.astype(self.dtype))
        gamma, beta = jnp.split(style[:, None, None, :], 2, axis=-1)
        if self.form == "residual":
            gamma = 1.0 + gamma
        elif self.form != "code":
            raise ValueError(f"Unknown ExpressionAdaIN form {self.form!r}; use one of {ADAIN_FORMS}.")
        return gamma * x + beta


class FERSDecoder(nn.Module):
    """U-Net decoder of FERSNet: the FES half of the joint map back to an image of ``out_shape``.

    The bottleneck and every skip go through an ``ExpressionAdaIN`` of the target [code]. Per level, from the
    deepest skip to the stem's: a 4x4/2 transposed conv to the skip's width + InstanceNorm + ReLU [code],
    cropped to the skip's size [choice: odd sizes], concatenated with the conditioned skip, then two 3x3
    conv + InstanceNorm + LeakyReLU(0.2) [code], 2w -> w -> w channels [choice: the code's VGG13-shaped plan
    keeps 2w in some levels' first conv]. Last, a 4x4/2 transposed conv to the stem's width, InstanceNorm,
    LeakyReLU, cropped to (H, W), two more 3x3 conv blocks and a 3x3 conv with bias to C channels, with no
    activation [code] (the L1 loss against the target image bounds the range).

    Attributes:
      out_shape: (H, W, C) of the output image.
      noise: add noise in the ExpressionAdaIN transforms (only when ``train=True``).
      adain_form: the ExpressionAdaIN form, 'code' or 'residual'.
      zero_output: start the last conv at zero (the decoder then starts by drawing nothing: FERSNet's
        `synthesis='residual'` adds its output to the input image).
      dtype: computation dtype; the image is returned in float32.
    """

    out_shape: tuple[int, int, int]
    noise: bool = True
    adain_form: str = "code"
    zero_output: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        bottleneck: jnp.ndarray,
        skips: Sequence[jnp.ndarray],
        target: jnp.ndarray,
        *,
        train: bool,
    ) -> jnp.ndarray:
        """``skips[0]`` is the stem's map, ``skips[i]`` the FES-side ConvFLU output of stage i."""
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=_conv_init)
        up = functools.partial(
            nn.ConvTranspose,
            kernel_size=(4, 4),
            strides=(2, 2),
            padding="SAME",
            use_bias=False,
            dtype=self.dtype,
            kernel_init=_conv_init,
        )
        adain = functools.partial(ExpressionAdaIN, noise=self.noise, form=self.adain_form, dtype=self.dtype)

        def conv_block(x: jnp.ndarray, width: int, name: str) -> jnp.ndarray:
            x = conv(width, (3, 3), name=f"{name}_conv")(x)
            return nn.leaky_relu(_instance_norm(x, self.dtype, f"{name}_norm"), 0.2)

        x = adain(name="bottleneck_adain")(bottleneck, target, train=train)
        for level in reversed(range(len(skips))):
            skip = skips[level]
            _, h, w, width = skip.shape
            x = up(width, name=f"up{level}_tconv")(x)
            x = nn.relu(_instance_norm(x, self.dtype, f"up{level}_norm"))[:, :h, :w]
            x = jnp.concatenate([x, adain(name=f"skip{level}_adain")(skip, target, train=train)], axis=-1)
            x = conv_block(x, width, f"up{level}_block1")
            x = conv_block(x, width, f"up{level}_block2")
        height, width, channels = self.out_shape
        stem_width = skips[0].shape[-1]
        x = up(stem_width, name="out_tconv")(x)
        x = nn.leaky_relu(_instance_norm(x, self.dtype, "out_norm"), 0.2)[:, :height, :width]
        x = conv_block(x, stem_width, "out_block1")
        x = conv_block(x, stem_width, "out_block2")
        x = nn.Conv(channels, (3, 3), dtype=self.dtype, name="to_image",
                    kernel_init=nn.initializers.zeros_init() if self.zero_output else _conv_init)(x)
        return x.astype(jnp.float32)


class FERSNet(nn.Module):
    """FER + expression synthesis with ConvFLU feature exchange (module docstring: layout and [choice]s).

    Attributes:
      num_classes: number of expression classes (logits and the width of the target one-hot).
      image_shape: (H, W, C) of the input images; the synthesis has the same shape.
      widths: width of each exchange stage (one maxpool + ConvFLU pair per stage). The released code uses
        ``(128, 256, 512)`` after a 64-wide stem [code], the default; the joint block is ``2 * widths[-1]``
        wide and each half ``widths[-1]``.
      stem_width: output channels of the shared stem [code: 64].
      blocks_per_stage: BasicBlocks per stage and branch [code: 1].
      pooled_reset_gate: ConvFLU reset gate from globally pooled maps (the code's earlier version).
      noise: noise in the decoder's ExpressionAdaIN transforms, drawn from the ``'noise'`` rng stream only
        when ``train=True`` [choice: none at evaluation].
      adain_form: the decoder's ExpressionAdaIN form: 'code' (``gamma * x + beta``) [code] or 'residual'
        (``(1 + gamma) * x + beta``) [choice].
      synthesis: 'image': the decoder draws the face [code]; 'residual': it draws the change, added to the
        input, ``x + D(...)``, starting at zero, i.e. as a copy of the input [choice]. The stem pools
        before the first skip, so a decoder that draws the whole face redraws every pixel from maps at
        half resolution, while a change of expression touches brows, eyes and mouth only.
      dtype: computation dtype; parameters, logits, features and synthesis are float32.
      bn_momentum: BatchNorm running-average momentum (stem, FER branch, joint block, classifier).

    ``apply`` needs the ``'batch_stats'`` collection mutable when ``train=True``. The ConvFLU gates are
    sown into the ``'intermediates'`` collection (``flu_fer{i}_gates``, ``flu_fes{i}_gates``) for gate
    analyses; they cost nothing unless that collection is made mutable.
    """

    num_classes: int
    image_shape: tuple[int, int, int]
    widths: Sequence[int] = (128, 256, 512)
    stem_width: int = 64
    blocks_per_stage: int = 1
    pooled_reset_gate: bool = False
    noise: bool = True
    adain_form: str = "code"
    synthesis: str = "image"
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9

    @property
    def feature_dim(self) -> int:
        """Width of ``features`` (the classifier-side half of the joint map)."""
        return self.widths[-1]

    @property
    def num_pools(self) -> int:
        """Max pools from input to bottleneck: the stem's, one per stage, the joint block's."""
        return len(self.widths) + 2

    def _check_inputs(self, images: jnp.ndarray, target: jnp.ndarray | None) -> None:
        if not self.widths or self.blocks_per_stage < 1:
            raise ValueError(
                f"FERSNet needs at least one stage and one block per stage; got widths={tuple(self.widths)}, "
                f"blocks_per_stage={self.blocks_per_stage}."
            )
        h, w, c = self.image_shape
        if images.ndim != 4 or tuple(images.shape[1:]) != (h, w, c):
            raise ValueError(
                f"FERSNet(image_shape={tuple(self.image_shape)}) expects images of shape (N, {h}, {w}, {c}); "
                f"got {images.shape}."
            )
        # Every max pool must halve a map of at least 2 px, otherwise the last pools are no-ops and the
        # decoder's levels no longer match the encoder's: with 'SAME' pooling that needs sides > 2^(P-1).
        min_side = 2 ** (self.num_pools - 1) + 1
        if min(h, w) < min_side:
            raise ValueError(
                f"FERSNet with {len(self.widths)} stages has {self.num_pools} max pools and needs images "
                f"of at least {min_side}x{min_side} px; got {h}x{w}. Use larger images or fewer widths."
            )
        if target is not None and target.shape != (images.shape[0], self.num_classes):
            raise ValueError(
                f"FERSNet expects the target as a one-hot of shape (N, num_classes) = "
                f"({images.shape[0]}, {self.num_classes}); got {target.shape}."
            )

    @nn.compact
    def __call__(
        self,
        images: jnp.ndarray,
        target: jnp.ndarray | None = None,
        *,
        train: bool,
        decode: bool = True,
    ) -> dict[str, jnp.ndarray]:
        """Classifies ``images`` and, given a target expression, synthesises them with that expression.

        Args:
          images: (N, H, W, C) images, float in [-1, 1].
          target: (N, num_classes) one-hot (or soft) target expression; None skips the synthesis.
          train: BatchNorm batch statistics (and their update) and decoder noise.
          decode: run the decoder; False skips it entirely (no decoder parameters are created or read),
            the cheap classification path.

        Returns:
          ``{'logits': (N, num_classes), 'features': (N, widths[-1])}`` (the pooled classifier-side features
          the linear layer reads, which leakage probes read too), plus ``'synthesis': (N, H, W, C)`` when
          ``decode`` and a target is given; all float32.
        """
        self._check_inputs(images, target)
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=_conv_init)
        norm = functools.partial(_normalize, train=train, momentum=self.bn_momentum, dtype=self.dtype)
        fer_norm = functools.partial(norm, kind="batch")
        fes_norm = functools.partial(norm, kind="instance")

        x = conv(self.stem_width, (3, 3), name="stem_conv")(images.astype(self.dtype))
        x = _max_pool(nn.relu(fer_norm(x, name="stem_norm")))
        skips = [x]
        fer = fes = x
        for i, width in enumerate(self.widths):
            for j in range(self.blocks_per_stage):
                block = functools.partial(BasicBlock, features=width, conv=conv)
                fer = block(norm=fer_norm, name=f"fer_stage{i + 1}_block{j + 1}")(fer)
                fes = block(norm=fes_norm, name=f"fes_stage{i + 1}_block{j + 1}")(fes)
            fer, fes = _max_pool(fer), _max_pool(fes)
            flu = functools.partial(ConvFLU, pooled_reset_gate=self.pooled_reset_gate, dtype=self.dtype)
            # Both units read the maps from before the exchange [code].
            new_fer, fer_gates = flu(name=f"flu_fer{i + 1}")(fer, fes, return_gates=True)
            new_fes, fes_gates = flu(name=f"flu_fes{i + 1}")(fes, fer, return_gates=True)
            self.sow("intermediates", f"flu_fer{i + 1}_gates", fer_gates)
            self.sow("intermediates", f"flu_fes{i + 1}_gates", fes_gates)
            fer, fes = new_fer, new_fes
            skips.append(fes)

        width = self.widths[-1]
        # [code] The joint block is a BasicBlock with BatchNorm on the 2*width concatenation, then a pool.
        joint = BasicBlock(features=2 * width, conv=conv, norm=fer_norm, name="joint_block")(
            jnp.concatenate([fer, fes], axis=-1)
        )
        joint = _max_pool(joint)
        fer_half, fes_half = joint[..., :width], joint[..., width:]

        h = conv(width, (3, 3), name="classifier_conv")(fer_half)
        h = nn.relu(fer_norm(h, name="classifier_norm"))
        # Pool in float32, as ResNet does: heads and probes never see a bf16 mean.
        features = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(features.astype(self.dtype))
        out = {"logits": logits.astype(jnp.float32), "features": features}
        if decode and target is not None:
            if self.synthesis not in SYNTHESIS_FORMS:
                raise ValueError(
                    f"Unknown FERSNet synthesis {self.synthesis!r}; use one of {SYNTHESIS_FORMS}.")
            drawn = FERSDecoder(
                out_shape=tuple(self.image_shape), noise=self.noise, adain_form=self.adain_form,
                zero_output=self.synthesis == "residual", dtype=self.dtype, name="decoder"
            )(fes_half, skips, target, train=train)
            out["synthesis"] = images.astype(jnp.float32) + drawn if self.synthesis == "residual" else drawn
        return out

    def synthesise(self, images: jnp.ndarray, target: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        """Only the synthesis (N, H, W, C) float32; use as ``apply(..., method='synthesise')``."""
        return self(images, target, train=train, decode=True)["synthesis"]
