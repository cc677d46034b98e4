"""Affine coupling for images, with checkerboard or channel-wise masks (RealNVP).

Reference: Dinh et al., "Density estimation using Real NVP" (ICLR 2017), sections 3.4-3.5.

A binary mask m over (H, W, C) keeps the entries where m = 1 and transforms the others,
given the kept ones and the condition c (as channels, ``fpn_jax.flows.image.condition``).
Data → noise (``inverse``)::

    (t, a) = ConvResidualNet([m ⊙ y, c]),     s = positive_scale(a)  (softplus(a) + 1e-3)
    u = m ⊙ y + (1 - m) ⊙ (s ⊙ y + t),      log|det ∂u/∂y| = Σ_{i,j,k} (1 - m) log s

and noise → data (``forward``) is ``y = m ⊙ x + (1 - m) ⊙ (x - t) / s`` with the same
(t, s), since ``m ⊙ x = m ⊙ y``. Masks:

* ``"checkerboard"``: ``m[i, j, k] = 1`` where ``i + j + parity`` is even (all channels);
* ``"channel"``: the first ⌊C/2⌋ channels kept (parity 0) or transformed (parity 1).

The mask is data (computed from the parity and the mask kind, both possibly traced layer
indices), so layers of either kind and parity have the same parameters and stack in
``fpn_jax.flows.Repeat``.

The scale is the project's ``positive_scale`` (``fpn_jax.flows.scale``), not Glow's
``sigmoid(a + 2)`` nor RealNVP's ``exp(tanh(a))``: it is bounded below by the same floor as
the latent flows (log s finite, divisions bounded), can stretch as well as shrink (a
sigmoid can only contract data → noise), and has the exact identity at the initial raw value.
The conditioner's last convolution starts at exactly zero (Glow's zero initialisation) with
the identity scale bias, so the layer starts as the identity; its kernel still gets a
gradient on the first step (the hidden maps are not zero), and the layers upstream from the
second step on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fpn_jax.flows.bijector import Bijector, Constant
from fpn_jax.flows.image.condition import condition_channels
from fpn_jax.flows.image.conditioner import ConvResidualNet
from fpn_jax.flows.scale import check_scale_function, initial_raw_scale, positive_scale
from fpn_jax.nn import Activation
from fpn_jax.typing import Array

MASKS = ("checkerboard", "channel")


def coupling_mask(kind: Array | int, parity: Array | int, height: int, width: int, channels: int) -> Array:
    """(H, W, C) float mask of the kept entries: 1 kept, 0 transformed.

    Args:
      kind: 0 checkerboard, 1 channel-wise (may be traced).
      parity: 0 or 1, which half is kept (may be traced).
      height: H.
      width: W.
      channels: C.
    """
    i = jnp.arange(height)[:, None, None]
    j = jnp.arange(width)[None, :, None]
    k = jnp.arange(channels)[None, None, :]
    checkerboard = (i + j + parity) % 2 == 0
    first = k < channels // 2
    channel = jnp.where(parity == 0, first, ~first)
    mask = jnp.where(kind == 0, checkerboard, channel)
    return jnp.broadcast_to(mask, (height, width, channels)).astype(jnp.float32)


class ImageAffineCoupling(Bijector):
    """Masked affine coupling over (N, H, W, C) images, conditioned through channels.

    Args:
      channels: C.
      context_channels: channels of the condition at this layer's resolution (K for a
        (N, K) vector, Ci for an (N, H, W, Ci) image; 0 for none).
      hidden_channels: width of the conditioner's feature maps.
      mask: ``"checkerboard"`` or ``"channel"``, or a (traced) int 0 / 1 for them.
      parity: 0 or 1 (may be a traced layer index; taken mod 2).
      num_blocks: residual blocks of the conditioner.
      activation: of the conditioner.
      scale_function: ``"softplus"`` (default) or ``"sigmoid"``, see ``fpn_jax.flows.scale``.
      rngs: initialisation keys.
    """

    def __init__(
        self,
        channels: int,
        context_channels: int,
        hidden_channels: int,
        *,
        mask: str | int | Array = "checkerboard",
        parity: int | Array = 0,
        num_blocks: int = 2,
        activation: Activation = jax.nn.relu,
        scale_function: str = "softplus",
        rngs: nnx.Rngs,
    ):
        where = type(self).__name__
        if isinstance(mask, str):
            if mask not in MASKS:
                raise ValueError(f"{where}: `mask` must be one of {MASKS}; got {mask!r}.")
            if mask == "channel" and channels < 2:
                raise ValueError(f"{where}: a channel mask needs channels >= 2; got channels={channels}.")
            mask = MASKS.index(mask)
        self.channels = channels
        self.scale_function = check_scale_function(scale_function, where)
        self.mask_kind = Constant(jnp.asarray(mask, jnp.int32) % 2)
        self.parity = Constant(jnp.asarray(parity, jnp.int32) % 2)
        self.net = ConvResidualNet(
            channels, 2 * channels, hidden_channels, context_channels, num_blocks=num_blocks,
            activation=activation, rngs=rngs,
        )
        final = self.net.final_conv
        final.kernel[...] = jnp.zeros_like(final.kernel[...])
        final.bias[...] = jnp.zeros(2 * channels).at[channels:].set(initial_raw_scale(scale_function))  # (t, a)

    def mask(self, height: int, width: int) -> Array:
        """(H, W, C) mask of the kept entries (1 kept, 0 transformed)."""
        return coupling_mask(self.mask_kind[...], self.parity[...], height, width, self.channels)

    def _scale_shift(self, kept: Array, context: Array | None) -> tuple[Array, Array]:
        h, w = kept.shape[1:3]
        out = self.net(kept, condition_channels(context, h, w))
        return positive_scale(out[..., self.channels :], self.scale_function), out[..., : self.channels]

    def inverse_and_log_det(self, y, context=None, *, key=None):
        """Data → noise: ``u = m y + (1 - m)(s y + t)``, ``log|det| = Σ (1 - m) log s``."""
        m = self.mask(*y.shape[1:3])
        scale, shift = self._scale_shift(m * y, context)
        u = m * y + (1 - m) * (scale * y + shift)
        return u, jnp.sum((1 - m) * jnp.log(scale), axis=(1, 2, 3))

    def forward_and_log_det(self, x, context=None, *, key=None):
        """Noise → data: ``y = m x + (1 - m)(x - t) / s``, ``log|det| = -Σ (1 - m) log s``."""
        m = self.mask(*x.shape[1:3])
        scale, shift = self._scale_shift(m * x, context)
        y = m * x + (1 - m) * (x - shift) / scale
        return y, -jnp.sum((1 - m) * jnp.log(scale), axis=(1, 2, 3))
