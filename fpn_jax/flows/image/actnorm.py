"""Activation normalisation (Glow's actnorm): a learned per-channel affine map.

Reference: Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions" (2018).

Data → noise (``inverse``) on an (N, H, W, C) image, with ``s = positive_scale(a)`` > 1e-3
(``fpn_jax.flows.scale``: softplus plus the floor, so ``log s`` stays finite)::

    u[n, i, j, c] = s_c y[n, i, j, c] + b_c,        log|det ∂u/∂y| = H W Σ_c log s_c

and noise → data (``forward``) is ``y = (x - b) / s``. It starts as the identity (``s = 1``,
``b = 0``); ``initialize`` sets it from a batch so that its outputs have zero mean and unit
variance per channel (Glow's data-dependent initialisation), for a single layer.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from fpn_jax.flows.bijector import Bijector
from fpn_jax.flows.scale import SCALE_FLOOR, initial_raw_scale, positive_scale
from fpn_jax.typing import Array


class ActNorm(Bijector):
    """Per-channel ``u = s ⊙ y + b`` over NHWC images, unconditional; log-det shape (N,).

    Args:
      channels: C.
    """

    def __init__(self, channels: int):
        self.raw_scale = nnx.Param(jnp.full((channels,), initial_raw_scale("softplus"), jnp.float32))
        self.shift = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def scale(self) -> Array:
        """``s = softplus(a) + 1e-3`` (C,)."""
        return positive_scale(self.raw_scale[...])

    def _log_det(self, x: Array) -> Array:
        h, w = x.shape[1:3]
        return jnp.broadcast_to(h * w * jnp.sum(jnp.log(self.scale())), x.shape[:1])

    def inverse_and_log_det(self, y, context=None, *, key=None):
        """Data → noise: ``u = s ⊙ y + b``, ``log|det| = H W Σ_c log s_c``."""
        return self.scale() * y + self.shift[...], self._log_det(y)

    def forward_and_log_det(self, x, context=None, *, key=None):
        """Noise → data: ``y = (x - b) / s``, ``log|det| = -H W Σ_c log s_c``."""
        return (x - self.shift[...]) / self.scale(), -self._log_det(x)

    def initialize(self, y: Array, eps: float = 1e-6) -> None:
        """Data-dependent initialisation: per channel, ``s = 1 / std(y)``, ``b = -mean(y) s``.

        Args:
          y: (N, H, W, C) data-side inputs of this layer (a batch).
          eps: added to the standard deviation.
        """
        flat = np.asarray(y, np.float64).reshape(-1, y.shape[-1])
        s = np.maximum(1.0 / (flat.std(0) + eps), 2 * SCALE_FLOOR) - SCALE_FLOOR
        self.raw_scale[...] = jnp.asarray(s + np.log(-np.expm1(-s)), jnp.float32)  # softplus⁻¹
        self.shift[...] = jnp.asarray(-flat.mean(0) * (s + SCALE_FLOOR), jnp.float32)
