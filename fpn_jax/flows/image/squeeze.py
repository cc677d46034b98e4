"""Squeeze (space-to-depth): trades spatial resolution for channels, volume preserving.

Reference: Dinh et al., "Density estimation using Real NVP" (ICLR 2017), section 3.6.

Every 2×2 block of pixels becomes one pixel with four times the channels::

    squeeze: (N, H, W, C) → (N, H/2, W/2, 4C),
    z[n, i, j, (2a + b) C + c] = x[n, 2i + a, 2j + b, c]      (a, b ∈ {0, 1})

It is a permutation of the entries, so ``log|det| = 0``. As a bijector the event is the
whole image: ``forward`` (noise → data) is ``unsqueeze`` and ``inverse`` (data → noise) is
``squeeze``, so data-side images are the larger ones. An image condition is squeezed the same
way (``squeeze``) to follow the flow down the scales.
"""

from __future__ import annotations

import jax.numpy as jnp

from fpn_jax.flows.bijector import Bijector
from fpn_jax.typing import Array


def squeeze(x: Array) -> Array:
    """(N, H, W, C) → (N, H/2, W/2, 4C), channel ``(2a + b) C + c`` from pixel offset (a, b).

    Raises:
      ValueError: H or W is odd.
    """
    n, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"squeeze: the image height and width must be even; got shape {tuple(x.shape)}.")
    x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // 2, w // 2, 4 * c)


def unsqueeze(z: Array) -> Array:
    """The inverse of ``squeeze``: (N, H, W, 4C) → (N, 2H, 2W, C).

    Raises:
      ValueError: the channels are not a multiple of 4.
    """
    n, h, w, c4 = z.shape
    if c4 % 4:
        raise ValueError(f"unsqueeze: the channels must be a multiple of 4; got shape {tuple(z.shape)}.")
    c = c4 // 4
    z = z.reshape(n, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return z.reshape(n, 2 * h, 2 * w, c)


class Squeeze(Bijector):
    """Space-to-depth as a bijector: data (N, 2H, 2W, C) ↔ noise side (N, H, W, 4C), log-det 0.

    ``inverse`` (data → noise) squeezes, ``forward`` (noise → data) unsqueezes; the context is
    ignored. The log-det has shape (N,).
    """

    def forward_and_log_det(self, x, context=None, *, key=None):
        """Noise → data: ``unsqueeze(x)``, (N, H, W, 4C) → (N, 2H, 2W, C); log-det 0."""
        return unsqueeze(x), jnp.zeros(x.shape[:1], x.dtype)

    def inverse_and_log_det(self, y, context=None, *, key=None):
        """Data → noise: ``squeeze(y)``, (N, 2H, 2W, C) → (N, H, W, 4C); log-det 0."""
        return squeeze(y), jnp.zeros(y.shape[:1], y.dtype)
