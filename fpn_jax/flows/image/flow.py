"""``ConditionalImageFlow``: a multi-scale conditional flow over images (RealNVP / Glow).

References: Dinh et al., "Density estimation using Real NVP" (ICLR 2017); Kingma &
Dhariwal, "Glow" (NeurIPS 2018).

``y = T(u | c)`` with ``u ~ N(0, I_D)``, D = H W C, y a dequantised image on the unit cube
(``fpn_jax.flows.image.preprocess``) and c the condition: a class / multi-hot vector (N, K)
or an image (N, H, W, Ci). Data → noise, ``T⁻¹`` is::

    preprocess (logit or affine)  →  level 0  →  level 1  →  …  →  level S-1

where every level (``MultiScaleLevel``) squeezes, runs ``steps_per_scale`` steps of
[norm (actnorm / batch norm), channel mixing (1×1 convolution / permutation), affine
coupling (checkerboard / channel mask)], factors out half the channels to the base
distribution and hands the rest to the next level; the last level keeps all its channels.
The condition reaches every coupling as channels (broadcast vector, or the image squeezed
alongside). By the change of variables::

    log p(y | c) = log N(T⁻¹(y | c); 0, I_D) + log|det ∂T⁻¹/∂y|

``log_prob`` is that density on the unit cube, including the preprocess's log-det;
``bits_per_dim`` turns 8-bit images into the dequantisation bound in bits per dimension.
``sample(key, c, temperature=τ)`` draws ``u ~ N(0, τ² I)`` and returns ``T(u | c)``; τ = 0
is the image of the base's mode (the "mean path"). With the logit preprocess samples lie in
``(-α/(1-2α), 1 + α/(1-2α))``, slightly beyond the unit cube (the logit's image of the
real line): clip to [0, 1] (and ``floor(256 y)`` for 8-bit levels) to display them.

The public methods check shapes (naming the argument) and values (finite), and run a cached
jit-compiled program (``fpn_jax.runtime.dispatch``); inside your own JAX transformation
they trace inline. Training uses the project's training step (``fpn_jax.train.fit_model``)
with a bits/dim batch loss: ``fpn_jax.train.image_flow.fit_image_flow``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fpn_jax import registry
from fpn_jax import validation as checks
from fpn_jax.flows.bijector import Bijector
from fpn_jax.flows.image.actnorm import ActNorm
from fpn_jax.flows.image.batch_norm import ImageBatchNorm
from fpn_jax.flows.image.compose import ImageChain, ImageRepeat
from fpn_jax.flows.image.condition import condition_kind, squeeze_condition
from fpn_jax.flows.image.conv1x1 import ChannelPermutation, InvertibleConv1x1
from fpn_jax.flows.image.coupling import ImageAffineCoupling
from fpn_jax.flows.image.multiscale import MultiScaleLevel
from fpn_jax.flows.image.preprocess import (
    PREPROCESSES,
    AffineTransform,
    LogitTransform,
    bits_per_dim,
    dequantize,
)
from fpn_jax.flows.image.squeeze import squeeze
from fpn_jax.flows.scale import check_scale_function
from fpn_jax.nn.mode import is_training
from fpn_jax.runtime import dispatch
from fpn_jax.typing import Array, Key

NORMS = ("actnorm", "batch_norm", "none")
MIXINGS = ("conv1x1", "reverse", "shuffle", "none")
MASK_SCHEDULES = ("checkerboard", "channel", "alternate")


@nnx.jit
def _step_inverse(stack: nnx.Module, index: Array, h: Array, context: Array) -> Array:
    """Data → noise through layer ``index`` of a stacked ``ImageRepeat`` body, compiled."""
    graphdef, state = nnx.split(stack)
    step = nnx.merge(graphdef, jax.tree.map(lambda a: a[index], state))
    return step.inverse_and_log_det(h, context)[0]


def _choice(value: Any, options: tuple[str, ...], name: str, where: str) -> str:
    if value not in options:
        raise ValueError(f"{where}: `{name}` must be one of {options}; got {value!r}.")
    return value


@registry.register("conditional_image_flow")
class ConditionalImageFlow(nnx.Module):
    """Multi-scale conditional image flow: density, bits/dim, sampling with temperature.

    Args:
      image_shape: (H, W, C); H and W divisible by ``2 ** num_scales``.
      context_shape: (K,) for a class / multi-hot condition, (H, W, Ci) for an image
        condition of the same height and width.
      hidden_channels: width of the couplings' residual CNNs.
      num_scales: S >= 1 levels (squeezes); levels 0..S-2 factor out half their channels.
      steps_per_scale: flow steps per level.
      num_blocks: residual blocks per coupling conditioner.
      mask: ``"checkerboard"`` or ``"channel"`` (the parity flips every step), or
        ``"alternate"`` (checkerboard and channel masks in turn, the parity flipping every two steps).
      mixing: ``"conv1x1"`` (Glow's LU 1×1 convolution), ``"reverse"`` / ``"shuffle"`` (fixed
        channel permutations) or ``"none"``.
      norm: ``"actnorm"``, ``"batch_norm"`` or ``"none"``.
      preprocess: ``"logit"`` (RealNVP, with ``alpha``) or ``"affine"`` (Glow, ``y - ½``).
      alpha: α of the logit transform.
      scale_function: of the couplings, ``"softplus"`` or ``"sigmoid"`` (``fpn_jax.flows.scale``).
      rngs: initialisation keys.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        context_shape: tuple[int, ...],
        *,
        hidden_channels: int = 64,
        num_scales: int = 2,
        steps_per_scale: int = 4,
        num_blocks: int = 2,
        mask: str = "checkerboard",
        mixing: str = "conv1x1",
        norm: str = "actnorm",
        preprocess: str = "logit",
        alpha: float = 0.05,
        scale_function: str = "softplus",
        rngs: nnx.Rngs,
    ):
        where = type(self).__name__
        image_shape = tuple(image_shape)
        if len(image_shape) != 3:
            raise ValueError(f"{where}: `image_shape` must be (H, W, C); got {image_shape!r}.")
        h, w, c = (checks.positive_int(s, name="image_shape", where=where) for s in image_shape)
        context_shape = tuple(context_shape)
        self.condition = condition_kind(context_shape, where)
        num_scales = checks.positive_int(num_scales, name="num_scales", where=where)
        hidden_channels = checks.positive_int(hidden_channels, name="hidden_channels", where=where)
        steps_per_scale = checks.positive_int(steps_per_scale, name="steps_per_scale", where=where)
        num_blocks = checks.positive_int(num_blocks, name="num_blocks", where=where, allow_zero=True)
        if h % 2**num_scales or w % 2**num_scales:
            raise ValueError(
                f"{where}: the image height and width must be divisible by 2 ** num_scales = {2**num_scales}; "
                f"got image_shape={image_shape}."
            )
        if self.condition == "image" and context_shape[:2] != (h, w):
            raise ValueError(
                f"{where}: an image condition must have the image's height and width {(h, w)}; "
                f"got context_shape={context_shape}."
            )
        _choice(mask, MASK_SCHEDULES, "mask", where)
        _choice(mixing, MIXINGS, "mixing", where)
        _choice(norm, NORMS, "norm", where)
        _choice(preprocess, PREPROCESSES, "preprocess", where)
        check_scale_function(scale_function, where)
        self.image_shape = (h, w, c)
        self.context_shape = context_shape
        self.num_dims = h * w * c
        self.hyperparameters = checks.frozen(dict(
            image_shape=list(self.image_shape), context_shape=list(context_shape), hidden_channels=hidden_channels,
            num_scales=num_scales, steps_per_scale=steps_per_scale, num_blocks=num_blocks, mask=mask,
            mixing=mixing, norm=norm, preprocess=preprocess, alpha=alpha, scale_function=scale_function,
        ))

        def level_context_channels(level: int) -> int:
            if self.condition == "class":
                return context_shape[0]
            return context_shape[2] * 4 ** (level + 1)

        def make_steps(channels: int, context_channels: int) -> Bijector:
            def step(index: Array, rngs: nnx.Rngs) -> Bijector:
                parts: list[Bijector] = []
                if norm == "actnorm":
                    parts.append(ActNorm(channels))
                elif norm == "batch_norm":
                    parts.append(ImageBatchNorm(channels))
                if mixing == "conv1x1":
                    parts.append(InvertibleConv1x1(channels, rngs=rngs))
                elif mixing in ("reverse", "shuffle"):
                    kind = "reverse" if mixing == "reverse" else "random"
                    parts.append(ChannelPermutation(channels, kind=kind, rngs=rngs))
                # "alternate": checkerboard, channel, checkerboard (other parity), channel (other parity), …
                kind = {"checkerboard": 0, "channel": 1}.get(mask, index % 2)
                parity = index if mask != "alternate" else index // 2
                parts.append(ImageAffineCoupling(
                    channels, context_channels, hidden_channels, mask=kind, parity=parity,
                    num_blocks=num_blocks, scale_function=scale_function, rngs=rngs,
                ))
                return ImageChain(parts)

            return ImageRepeat(step, steps_per_scale, rngs=rngs)

        level: Bijector | None = None
        for index in reversed(range(num_scales)):  # build from the coarsest level up
            channels = c * 2**index  # input channels of level `index` (half are factored out per level)
            level = MultiScaleLevel(make_steps(4 * channels, level_context_channels(index)), level)
        pre = LogitTransform(alpha) if preprocess == "logit" else AffineTransform()
        self.transform = ImageChain([pre, level])

    @property
    def config(self) -> dict[str, object]:
        """The constructor's keyword arguments (what a checkpoint stores to rebuild the flow)."""
        return dict(self.hyperparameters)

    def initialize_actnorm(self, x: Array, context: Array) -> None:
        """Glow's data-dependent initialisation: every actnorm normalises its input batch.

        Walks a batch data → noise through the flow, level by level and step by step, and sets
        each actnorm (``ActNorm.initialize``) so that its outputs on the batch have zero mean
        and unit variance per channel, before passing the batch on. A no-op without actnorm.
        Call it once, before training, on a batch of dequantised images.

        Args:
          x: (N, H, W, C) images in (0, 1), N >= 2.
          context: (N, K) vectors or (N, H, W, Ci) condition images.

        Raises:
          ValueError: bad shapes or values (as ``log_prob``), or N < 2.
        """
        where = f"{type(self).__name__}.initialize_actnorm"
        x, context = self._check_pair(where, "x", x, context)
        if x.shape[0] < 2:
            raise ValueError(f"{where}: the statistics need N >= 2 rows; got N = {x.shape[0]}.")
        if self.config["norm"] != "actnorm":
            return
        h, _ = self.transform.bijectors[0].inverse_and_log_det(x)
        level, c = self.transform.bijectors[1], context
        while level is not None:
            h, c = squeeze(h), squeeze_condition(c)
            stack = level.steps.layers  # one ImageChain whose parameters carry a leading layer axis
            stacked = stack.bijectors[0]  # the actnorms, parameters (L, C)
            for i in range(level.steps.num_layers):
                norm = ActNorm(h.shape[-1])
                norm.initialize(h)  # the actnorm comes first in its step: its input is h
                stacked.raw_scale[...] = stacked.raw_scale[...].at[i].set(norm.raw_scale[...])
                stacked.shift[...] = stacked.shift[...].at[i].set(norm.shift[...])
                h = _step_inverse(stack, jnp.int32(i), h, c)
            if level.inner is not None:
                h = h[..., h.shape[-1] // 2 :]
            level = level.inner

    # ----------------------------------------------------------------- core (traceable)
    def base_log_prob(self, u: Array) -> Array:
        """``log N(u; 0, I_D)`` per image, (N, H, W, C) → (N,)."""
        flat = u.reshape(u.shape[0], -1)
        return -0.5 * jnp.sum(flat**2, axis=1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)

    def _log_prob(self, x: Array, context: Array, key: Array | None = None) -> Array:
        u, log_det = self.transform.inverse_and_log_det(x, context, key=key)
        return self.base_log_prob(u) + log_det

    def _bits_per_dim(self, images: Array, context: Array, key: Array) -> Array:
        return bits_per_dim(self._log_prob(dequantize(key, images), context), self.num_dims)

    def _to_noise(self, x: Array, context: Array) -> Array:
        return self.transform.inverse_and_log_det(x, context)[0]

    def _from_noise(self, u: Array, context: Array) -> Array:
        return self.transform.forward_and_log_det(u, context)[0]

    def _sample(self, context: Array, key: Array, temperature: Array) -> Array:
        u = temperature * jax.random.normal(key, (context.shape[0], *self.image_shape), jnp.float32)
        return self._from_noise(u, context)

    # ----------------------------------------------------------------- public API
    def log_prob(self, x: Array, context: Array, *, key: Key | None = None) -> Array:
        """``log p(x | context)`` (N,): the density of images on the unit cube.

        Args:
          x: (N, H, W, C) float images in (0, 1) (dequantised: ``dequantize``).
          context: (N, K) float vectors or (N, H, W, Ci) float images.
          key: unused by the built-in layers (kept for the flows' common signature).

        Raises:
          ValueError: bad shape, dtype or non-finite values, naming the argument; training
            mode (batch norm) with fewer than 2 rows.
        """
        where = f"{type(self).__name__}.log_prob"
        x, context = self._check_pair(where, "x", x, context)
        if x.shape[0] < 2 and is_training(self):
            raise ValueError(
                f"{where}: training mode normalises with batch statistics and needs N >= 2 rows; "
                f"got N = {x.shape[0]}. Call model.eval() to use running statistics."
            )
        if key is not None:
            key = checks.check_key(key, where=where)
        return dispatch.call(self, "_log_prob", x, context, key=key)

    def bits_per_dim(self, key: Key, images: Array, context: Array) -> Array:
        """Bits per dimension of 8-bit images, (N,): ``-(log p(y) - D log 256) / (D log 2)``.

        ``y = (images + u) / 256`` with ``u ~ U[0, 1)`` drawn from ``key`` (one-sample
        dequantisation bound, see ``fpn_jax.flows.image.preprocess``).

        Args:
          key: PRNG key of the dequantisation noise.
          images: (N, H, W, C) integer levels in {0, …, 255} (any numeric dtype).
          context: as ``log_prob``.
        """
        where = f"{type(self).__name__}.bits_per_dim"
        key = checks.check_key(key, where=where)
        images = jnp.asarray(images, jnp.float32)
        images, context = self._check_pair(where, "images", images, context)
        return dispatch.call(self, "_bits_per_dim", images, context, key=key)

    def to_noise(self, x: Array, context: Array) -> Array:
        """``u = T⁻¹(x | context)``, (N, H, W, C)."""
        x, context = self._check_pair(f"{type(self).__name__}.to_noise", "x", x, context)
        return dispatch.call(self, "_to_noise", x, context)

    def from_noise(self, u: Array, context: Array) -> Array:
        """``x = T(u | context)``, (N, H, W, C) images in (0, 1) (eval mode)."""
        where = f"{type(self).__name__}.from_noise"
        u, context = self._check_pair(where, "u", u, context)
        return dispatch.call(self, "_from_noise", u, context, check_mode=self._check_can_sample(where))

    def sample(self, key: Key, context: Array, *, temperature: float = 1.0) -> Array:
        """One image per condition row, (N, H, W, C) in (0, 1): ``T(τ ε | c)``, ``ε ~ N(0, I)``.

        Args:
          key: PRNG key.
          context: (N, K) vectors or (N, H, W, Ci) images.
          temperature: τ >= 0; 1 samples the model, < 1 the usual sharper samples, 0 the
            image of the base's mode.

        Raises:
          ValueError: a bad key, context or temperature.
          RuntimeError: the flow is in training mode (batch norm).
        """
        where = f"{type(self).__name__}.sample"
        key = checks.check_key(key, where=where)
        context = self._check_context(where, context)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < np.inf:
            raise ValueError(f"{where}: argument `temperature` must be a finite number >= 0; got {temperature!r}.")
        return dispatch.call(
            self, "_sample", context, key=key, temperature=jnp.float32(temperature),
            check_mode=self._check_can_sample(where),
        )

    # ----------------------------------------------------------------- helpers
    def _check_can_sample(self, where: str):
        def check(training: bool) -> None:
            if training:
                raise RuntimeError(
                    f"{where}: the model is in training mode and uses batch norm, whose noise -> data "
                    "direction needs running statistics; call model.eval() first."
                )

        return check

    def _check_array(self, where: str, name: str, x: Any, shape: tuple[int, ...], what: str) -> Array:
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            x = np.asarray(x)
        if tuple(x.shape[1:]) != tuple(shape) or len(x.shape) != len(shape) + 1:
            raise ValueError(
                f"{where}: argument `{name}` must have shape (N, {', '.join(map(str, shape))}) ({what}); "
                f"got shape {tuple(x.shape)}."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{where}: argument `{name}` must be a floating-point array; got dtype {x.dtype}.")
        checks.check_finite(x, name=name, where=where)
        return jnp.asarray(x, jnp.float32)

    def _check_context(self, where: str, context: Any) -> Array:
        what = "class / multi-hot vectors" if self.condition == "class" else "condition images"
        return self._check_array(where, "context", context, self.context_shape, what)

    def _check_pair(self, where: str, name: str, x: Any, context: Any) -> tuple[Array, Array]:
        x = self._check_array(where, name, x, self.image_shape, "NHWC images")
        context = self._check_context(where, context)
        checks.same_rows(where, **{name: x, "context": context})
        return x, context
