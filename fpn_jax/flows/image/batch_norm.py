"""Batch normalisation of NHWC images as a bijector (RealNVP's choice between couplings).

Reference: Dinh et al., 2017, section 3.7.

``fpn_jax.flows.BatchNormBijector`` normalises over the last axis with statistics over all
other axes, so on an (N, H, W, C) image it normalises each channel with the statistics over
N, H and W, and gives a per-pixel log-det (N, H, W). This wrapper sums it over the pixels::

    log|det ∂u/∂y| = H W Σ_c [log w_c - ½ log(σ²_c + ε)]             (N,)

Training mode uses (and records) batch statistics; noise → data needs eval mode.
"""

from __future__ import annotations

from fpn_jax.flows.batch_norm import BatchNormBijector
from fpn_jax.flows.bijector import Bijector


class ImageBatchNorm(Bijector):
    """Per-channel invertible batch norm over (N, H, W, C) images, log-det shape (N,).

    Args:
      channels: C.
      eps, momentum: as ``BatchNormBijector``.
    """

    def __init__(self, channels: int, *, eps: float = 1e-5, momentum: float = 0.9):
        self.norm = BatchNormBijector(channels, eps=eps, momentum=momentum)

    def inverse_and_log_det(self, y, context=None, *, key=None):
        """Data → noise: ``u = w (y - μ) / sqrt(σ² + ε) + b`` per channel."""
        u, log_det = self.norm.inverse_and_log_det(y)
        return u, log_det.sum(axis=(1, 2))

    def forward_and_log_det(self, x, context=None, *, key=None):
        """Noise → data with the running statistics (eval mode only)."""
        y, log_det = self.norm.forward_and_log_det(x)
        return y, log_det.sum(axis=(1, 2))
