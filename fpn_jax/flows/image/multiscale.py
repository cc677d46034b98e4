"""The multi-scale architecture: squeeze, flow steps, factor out half the channels, recurse.

Reference: Dinh et al., 2017, section 3.6; Kingma & Dhariwal, 2018, figure 2.

One level, data → noise (``inverse``), on an (N, H, W, C) image y with condition c::

    h = squeeze(y)                                  (N, H/2, W/2, 4C)
    h = steps⁻¹(h | c')                             c' = squeeze(c) for an image condition
    [z, r] = h                                      z, r: 2C channels each
    r = inner⁻¹(r | c')                             the next level (absent at the last one)
    u = unsqueeze([z, r])                           (N, H, W, C)

so the factored-out half ``z`` goes straight to the base distribution, and only ``r`` is
transformed further, at half the resolution. Keeping ``z`` in place (and unsqueezing back)
makes every level a bijection of the image onto itself, (N, H, W, C) → (N, H, W, C): a
standard normal over all of ``u`` is exactly "each factored part ~ N(0, I)", the log-det is
the sum of the levels' (the factor-out is a permutation), and the whole flow satisfies the
bijector contract (and its tests) like any other. Noise → data (``forward``) runs the same
steps backwards: ``[z, r] = squeeze(u)``, ``r = inner(r)``, ``h = steps([z, r])``, unsqueeze.
"""

from __future__ import annotations

import jax.numpy as jnp

from fpn_jax.flows.bijector import Bijector
from fpn_jax.flows.image.condition import squeeze_condition
from fpn_jax.flows.image.squeeze import squeeze, unsqueeze


class MultiScaleLevel(Bijector):
    """One scale of a multi-scale flow (and, through ``inner``, all the scales below it).

    Args:
      steps: a bijector over the squeezed image (N, H/2, W/2, 4C) (e.g. ``Repeat`` of
        [actnorm, 1×1 convolution, coupling]), taking the squeezed condition.
      inner: the next level, a bijector over (N, H/2, W/2, 2C); None at the last scale,
        which keeps all its channels.
    """

    def __init__(self, steps: Bijector, inner: Bijector | None = None):
        self.steps = steps
        self.inner = inner

    def inverse_and_log_det(self, y, context=None, *, key=None):
        """Data → noise: squeeze, steps⁻¹, factor out half, the next level on the rest, unsqueeze."""
        h, c = squeeze(y), squeeze_condition(context)
        h, log_det = self.steps.inverse_and_log_det(h, c)
        if self.inner is not None:
            half = h.shape[-1] // 2
            rest, ld = self.inner.inverse_and_log_det(h[..., half:], c)
            h, log_det = jnp.concatenate([h[..., :half], rest], axis=-1), log_det + ld
        return unsqueeze(h), log_det

    def forward_and_log_det(self, x, context=None, *, key=None):
        """Noise → data: squeeze, the next level on the kept half, steps, unsqueeze."""
        h, c = squeeze(x), squeeze_condition(context)
        log_det = jnp.zeros(x.shape[:1], x.dtype)
        if self.inner is not None:
            half = h.shape[-1] // 2
            rest, log_det = self.inner.forward_and_log_det(h[..., half:], c)
            h = jnp.concatenate([h[..., :half], rest], axis=-1)
        h, ld = self.steps.forward_and_log_det(h, c)
        return unsqueeze(h), log_det + ld
