"""Batch normalisation as a bijector (between flow layers), as in nflows 0.14 / MAF.

References: Dinh et al., 2017, section 3.7; Papamakarios et al., 2017.

Data → noise (``inverse``), with ``w = softplus(w̃) + ε`` > 0::

    u = w ⊙ (y - μ) / sqrt(σ² + ε) + b,      log|det ∂u/∂y| = Σ_i [log w_i - ½ log(σ²_i + ε)]

In training mode (``model.train()``) μ, σ² are the batch mean and (unbiased) variance and
the running averages move by ``r ← 0.9 r + 0.1 batch`` (PyTorch's momentum 0.1). In eval
mode the running averages are used and the map is a fixed affine bijection, so noise → data
(``forward``) is available; in training mode ``forward`` raises, because a map that depends
on the batch has no per-sample inverse. Running variances start at 1 (nflows: 0), so an
untrained flow is already a valid density in eval mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fpn_jax.flows.bijector import Bijector
from fpn_jax.typing import Array


class BatchNormBijector(Bijector):
    """Invertible batch norm over the last axis.

    Args:
      features: D.
      eps: ε, 1e-5 as nflows.
      momentum: weight of the old running average (Flax convention; PyTorch's 0.1 is 0.9).
    """

    def __init__(self, features: int, *, eps: float = 1e-5, momentum: float = 0.9):
        self.eps = eps
        self.momentum = momentum
        self.unconstrained_weight = nnx.Param(jnp.full((features,), np.log(np.expm1(1.0 - eps)), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
        self.running_mean = nnx.BatchStat(jnp.zeros((features,), jnp.float32))
        self.running_var = nnx.BatchStat(jnp.ones((features,), jnp.float32))
        self.use_running_average = True

    def weight(self) -> Array:
        """``w = softplus(w̃) + ε`` (D,), the positive scale."""
        return jax.nn.softplus(self.unconstrained_weight[...]) + self.eps

    def inverse_and_log_det(self, y, context=None, *, key=None):
        """Data → noise: ``u = w (y - μ) / sqrt(σ² + ε) + b`` (batch statistics in training mode)."""
        if self.use_running_average:
            mean, var = self.running_mean[...], self.running_var[...]
        else:
            batch = y.reshape(-1, y.shape[-1])
            mean, var = batch.mean(0), batch.var(0, ddof=1)
            m = self.momentum
            self.running_mean[...] = m * self.running_mean[...] + (1 - m) * jax.lax.stop_gradient(mean)
            self.running_var[...] = m * self.running_var[...] + (1 - m) * jax.lax.stop_gradient(var)
        w = self.weight()
        u = w * (y - mean) / jnp.sqrt(var + self.eps) + self.bias[...]
        log_det = jnp.sum(jnp.log(w) - 0.5 * jnp.log(var + self.eps))
        return u, jnp.broadcast_to(log_det, y.shape[:-1])

    def forward_and_log_det(self, x, context=None, *, key=None):
        """Noise → data: ``y = sqrt(σ² + ε) (x - b) / w + μ`` with the running statistics."""
        if not self.use_running_average:
            raise RuntimeError(
                "BatchNormBijector: the noise -> data direction (sampling, from_noise) is only "
                "defined with running statistics; call model.eval() first."
            )
        var = self.running_var[...] + self.eps
        w = self.weight()
        y = jnp.sqrt(var) * (x - self.bias[...]) / w + self.running_mean[...]
        log_det = jnp.sum(0.5 * jnp.log(var) - jnp.log(w))
        return y, jnp.broadcast_to(log_det, x.shape[:-1])
