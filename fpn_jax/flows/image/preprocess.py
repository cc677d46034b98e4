"""From 8-bit images to a continuous density, and back to bits per dimension.

References: Dinh et al., 2017 (section 4.1, the logit transform, α = 0.05); Theis, van den
Oord & Bethge, "A note on the evaluation of generative models" (2016, uniform dequantisation).

**Dequantisation.** An image ``x ∈ {0, …, 255}^D`` becomes ``y = (x + u) / 256`` with
``u ~ U[0, 1)^D`` (``dequantize``, the key explicit), a point of the unit cube. For any
density ``p`` on ``[0, 1]^D`` the discrete model ``P(x) = ∫_{[0,1)^D} p((x + u)/256) du / 256^D``
is a proper distribution over the 256^D images, and by Jensen::

    log P(x) ≥ E_u[log p((x + u) / 256)] - D log 256

so ``log p(y) - D log 256`` (``discrete_log_likelihood``) is a stochastic lower bound on the
discrete log-likelihood, and ``bits_per_dim`` reports its negative in bits per dimension::

    bits/dim = -(log p(y) - D log 256) / (D log 2)

The ``- D log 256`` is the log-det of the scaling by 1/256 (the density of ``x + u`` on
``[0, 256)^D`` is ``p(y) / 256^D``); leaving it out would report a density on the unit cube,
not a likelihood of the 8-bit data. A uniform ``p = 1`` gives exactly 8 bits/dim.

**Preprocessing bijectors** (the data side of a flow is the unit cube ``y ∈ (0, 1)^D``):

* ``LogitTransform(α)``, data → noise ``z = logit(α + (1 - 2α) y)``, with
  ``log|det ∂z/∂y| = Σ_i [log(1 - 2α) - log p_i - log(1 - p_i)]``, ``p = α + (1 - 2α) y``
  (the α keeps the logit away from ±∞ at the cube's faces);
* ``AffineTransform(scale, shift)``, data → noise ``z = scale · y + shift`` (Glow: ``y - ½``),
  ``log|det| = D log|scale|``.

Their log-dets are part of the flow's ``log_prob``, which is therefore the density of ``y``
on the unit cube, the quantity ``bits_per_dim`` takes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fpn_jax.flows.bijector import Bijector
from fpn_jax.typing import Array, Key

NUM_BINS = 256
PREPROCESSES = ("logit", "affine")


def dequantize(key: Key, x: Array, num_bins: int = NUM_BINS) -> Array:
    """``y = (x + u) / num_bins``, ``u ~ U[0, 1)`` per entry: integer levels → the unit cube.

    Args:
      key: PRNG key for u.
      x: images with values in ``{0, …, num_bins - 1}`` (any dtype; float32 out).
      num_bins: 256 for 8-bit images.
    """
    x = jnp.asarray(x, jnp.float32)
    return (x + jax.random.uniform(key, x.shape, jnp.float32)) / num_bins


def discrete_log_likelihood(log_prob: Array, num_dims: int, num_bins: int = NUM_BINS) -> Array:
    """``log p(y) - D log num_bins``: the dequantisation bound on ``log P(x)``, in nats.

    Args:
      log_prob: ``log p(y)`` of dequantised images ``y = (x + u) / num_bins`` (density on the unit cube).
      num_dims: D = H W C.
      num_bins: 256 for 8-bit images.
    """
    return log_prob - num_dims * math.log(num_bins)


def bits_per_dim(log_prob: Array, num_dims: int, num_bins: int = NUM_BINS) -> Array:
    """``-(log p(y) - D log num_bins) / (D log 2)``: negative discrete log-likelihood in bits per dimension.

    Args:
      log_prob: ``log p(y)`` of dequantised images on the unit cube (what the image flow's
        ``log_prob`` returns), any shape.
      num_dims: D = H W C.
      num_bins: 256 for 8-bit images (a uniform density then gives 8 bits/dim).
    """
    return -discrete_log_likelihood(log_prob, num_dims, num_bins) / (num_dims * math.log(2.0))


def _event_sum(x: Array) -> Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


class LogitTransform(Bijector):
    """Data ``y ∈ (0, 1)`` ↔ noise side ``z = logit(α + (1 - 2α) y)``, elementwise; log-det (N,).

    Args:
      alpha: α ∈ [0, ½), 0.05 as RealNVP.
    """

    def __init__(self, alpha: float = 0.05):
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"LogitTransform: `alpha` must be in [0, 0.5); got {alpha!r}.")
        self.alpha = float(alpha)

    def inverse_and_log_det(self, y, context=None, *, key=None):
        """Data → noise: ``z = log p - log(1 - p)``, ``log|det| = Σ [log(1 - 2α) - log p - log(1 - p)]``."""
        a = self.alpha
        p = a + (1.0 - 2.0 * a) * y
        log_p, log_1mp = jnp.log(p), jnp.log1p(-p)
        return log_p - log_1mp, _event_sum(math.log(1.0 - 2.0 * a) - log_p - log_1mp)

    def forward_and_log_det(self, x, context=None, *, key=None):
        """Noise → data: ``y = (σ(z) - α) / (1 - 2α)``, ``log|det| = Σ [log σ(z) + log σ(-z) - log(1 - 2α)]``."""
        a = self.alpha
        y = (jax.nn.sigmoid(x) - a) / (1.0 - 2.0 * a)
        return y, _event_sum(-jax.nn.softplus(-x) - jax.nn.softplus(x) - math.log(1.0 - 2.0 * a))


class AffineTransform(Bijector):
    """Data ``y`` ↔ noise side ``z = scale · y + shift``, elementwise; log-det ``D log|scale|``.

    Args:
      scale: nonzero; 1 by default.
      shift: -½ by default (Glow's centring of the unit cube).
    """

    def __init__(self, scale: float = 1.0, shift: float = -0.5):
        if scale == 0:
            raise ValueError("AffineTransform: `scale` must be nonzero; got 0.")
        self.scale, self.shift = float(scale), float(shift)

    def _log_det(self, x: Array) -> Array:
        d = math.prod(x.shape[1:])
        return jnp.full(x.shape[:1], d * math.log(abs(self.scale)), x.dtype)

    def inverse_and_log_det(self, y, context=None, *, key=None):
        """Data → noise: ``z = scale · y + shift``."""
        return self.scale * y + self.shift, self._log_det(y)

    def forward_and_log_det(self, x, context=None, *, key=None):
        """Noise → data: ``y = (z - shift) / scale``."""
        return (x - self.shift) / self.scale, -self._log_det(x)
