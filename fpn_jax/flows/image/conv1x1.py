"""Invertible 1×1 convolution (Glow), LU-parametrised, and fixed channel permutations.

Reference: Kingma & Dhariwal, 2018, section 3.2.

A 1×1 convolution mixes the channels of every pixel with one (C, C) matrix W. Data → noise
(``inverse``) is ``u[n, i, j] = y[n, i, j] W`` (row vectors), so::

    log|det ∂u/∂y| = H W log|det W|

W is parametrised as ``W = P L (U + diag(σ ⊙ s))`` with P a fixed permutation, L unit lower
triangular, U strictly upper triangular, σ fixed signs and ``s = positive_scale(a)`` > 1e-3
(the floor of ``fpn_jax.flows.scale``), so ``log|det W| = Σ_c log s_c`` costs O(C) and W can
never become singular. It starts as a random rotation (the LU factors of the Q of a Gaussian
matrix's QR). Noise → data multiplies by ``W⁻¹ = (U + diag(σ s))⁻¹ L⁻¹ Pᵀ``, from two
triangular solves.

``ChannelPermutation`` is the parameter-free alternative: a fixed (reversed or random)
order of the channels, log-det 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fpn_jax.flows.bijector import Bijector, Constant
from fpn_jax.flows.scale import SCALE_FLOOR, positive_scale
from fpn_jax.typing import Array


class InvertibleConv1x1(Bijector):
    """Glow's invertible 1×1 convolution over (N, H, W, C) images, LU-decomposed.

    Args:
      channels: C.
      rngs: the random rotation it starts as.
    """

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        q, _ = jnp.linalg.qr(jax.random.normal(rngs.params(), (channels, channels)))
        p, lower, upper = jax.scipy.linalg.lu(q)
        diag = jnp.diagonal(upper)
        magnitude = jnp.maximum(jnp.abs(diag) - SCALE_FLOOR, SCALE_FLOOR)
        self.permutation = Constant(p)
        self.sign = Constant(jnp.where(diag < 0, -1.0, 1.0))
        self.lower = nnx.Param(lower)
        self.upper = nnx.Param(upper)
        self.raw_scale = nnx.Param(magnitude + jnp.log(-jnp.expm1(-magnitude)))  # softplus⁻¹
        self.channels = channels

    def _factors(self) -> tuple[Array, Array, Array]:
        """(L, U + diag(σ s), s): the triangular factors and the positive diagonal magnitudes."""
        c = self.channels
        s = positive_scale(self.raw_scale[...])
        lower = jnp.tril(self.lower[...], -1) + jnp.eye(c)
        upper = jnp.triu(self.upper[...], 1) + jnp.diag(self.sign[...] * s)
        return lower, upper, s

    def weight(self) -> Array:
        """``W = P L (U + diag(σ s))``, (C, C)."""
        lower, upper, _ = self._factors()
        return self.permutation[...] @ lower @ upper

    def inverse_weight(self) -> Array:
        """``W⁻¹ = (U + diag(σ s))⁻¹ L⁻¹ Pᵀ``, (C, C), by triangular solves."""
        lower, upper, _ = self._factors()
        l_inv_pt = jax.scipy.linalg.solve_triangular(lower, self.permutation[...].T, lower=True, unit_diagonal=True)
        return jax.scipy.linalg.solve_triangular(upper, l_inv_pt, lower=False)

    def _log_det(self, x: Array) -> Array:
        h, w = x.shape[1:3]
        _, _, s = self._factors()
        return jnp.broadcast_to(h * w * jnp.sum(jnp.log(s)), x.shape[:1])

    def inverse_and_log_det(self, y, context=None, *, key=None):
        """Data → noise: ``u = y W`` per pixel, ``log|det| = H W Σ_c log s_c``."""
        return y @ self.weight(), self._log_det(y)

    def forward_and_log_det(self, x, context=None, *, key=None):
        """Noise → data: ``y = x W⁻¹`` per pixel, ``log|det| = -H W Σ_c log s_c``."""
        return x @ self.inverse_weight(), -self._log_det(x)


class ChannelPermutation(Bijector):
    """A fixed order of the channels, ``u[..., c] = y[..., π(c)]``; log-det 0.

    Args:
      channels: C.
      kind: ``"reverse"`` (π(c) = C - 1 - c, RealNVP's alternation) or ``"random"`` (one
        random permutation drawn from ``rngs`` at construction, as Glow's shuffle).
      rngs: needed for ``kind="random"``.
    """

    def __init__(self, channels: int, *, kind: str = "reverse", rngs: nnx.Rngs | None = None):
        if kind == "reverse":
            perm = jnp.arange(channels)[::-1]
        elif kind == "random":
            if rngs is None:
                raise ValueError("ChannelPermutation: kind='random' needs `rngs`.")
            perm = jax.random.permutation(rngs.params(), channels)
        else:
            raise ValueError(f"ChannelPermutation: `kind` must be 'reverse' or 'random'; got {kind!r}.")
        self.perm = Constant(perm.astype(jnp.int32))
        self.inverse_perm = Constant(jnp.argsort(perm).astype(jnp.int32))

    def inverse_and_log_det(self, y, context=None, *, key=None):
        """Data → noise: ``u = y[..., π]``, log-det 0."""
        return jnp.take(y, self.perm[...], axis=-1), jnp.zeros(y.shape[:1], y.dtype)

    def forward_and_log_det(self, x, context=None, *, key=None):
        """Noise → data: ``y = x[..., π⁻¹]``, log-det 0."""
        return jnp.take(x, self.inverse_perm[...], axis=-1), jnp.zeros(x.shape[:1], x.dtype)
