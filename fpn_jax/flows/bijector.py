"""The one bijector contract of fpn-jax, and composition.

Directions are named once, here, and everywhere else follows:

* ``forward``: noise side → data side, ``y = f(x | c)``. Sampling and ``from_noise`` use it.
* ``inverse``: data side → noise side, ``x = f⁻¹(y | c)``. Density evaluation, training
  and ``to_noise`` use it.

Both return the log absolute Jacobian determinant of the map they apply::

    forward_and_log_det(x, c) -> (y, log|det ∂y/∂x|)          # shapes (N, D), (N,)
    inverse_and_log_det(y, c) -> (x, log|det ∂x/∂y|)          # = -forward log-det at x

The event axis is last; the log-det has the batch shape (N,). ``context`` is an (N, C)
array (or ``None`` for unconditional bijectors) and ``key`` a PRNG key that only stochastic
layers (dropout in training mode) consume; everything else is deterministic.

nflows, whose models the paper used, calls the data → noise direction ``forward``; in
fpn-jax it is ``inverse``. The change of variables for a flow ``y = f(x)``, ``x ~ p_x`` is

    log p_y(y) = log p_x(f⁻¹(y)) + log|det ∂f⁻¹/∂y|.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Float

from fpn_jax.nn.keys import split_key
from fpn_jax.typing import Array, Key, LogDet


class Bijector(nnx.Module):
    """Base class: an invertible map with a tractable Jacobian determinant."""

    def forward_and_log_det(
        self, x: Float[Array, "N D"], context: Float[Array, "N C"] | None = None, *, key: Key | None = None
    ) -> tuple[Float[Array, "N D"], LogDet]:
        """Noise → data: ``y = f(x | c)`` and ``log|det ∂y/∂x|``, shapes (N, D) and (N,)."""
        raise NotImplementedError

    def inverse_and_log_det(
        self, y: Float[Array, "N D"], context: Float[Array, "N C"] | None = None, *, key: Key | None = None
    ) -> tuple[Float[Array, "N D"], LogDet]:
        """Data → noise: ``x = f⁻¹(y | c)`` and ``log|det ∂x/∂y|``, shapes (N, D) and (N,)."""
        raise NotImplementedError


class Chain(Bijector):
    """Composition ``f = f_0 ∘ f_1 ∘ … ∘ f_{K-1}`` (the distrax convention).

    ``bijectors[0]`` sits on the data side: ``forward`` applies ``f_{K-1}`` first and ``f_0``
    last; ``inverse`` applies ``f_0⁻¹`` first. The log-dets add up. This is also the order of
    nflows' ``CompositeTransform``, whose "forward" is our inverse.
    """

    event_ndims: int = 1  # trailing axes of one event: 1 for (N, D) vectors, 3 for (N, H, W, C) images

    def __init__(self, bijectors: list[Bijector]):
        self.bijectors = nnx.List(bijectors)

    def forward_and_log_det(self, x, context=None, *, key=None):
        """Noise → data: ``f_{K-1}`` first, ``f_0`` last; the log-dets add up."""
        log_det = jnp.zeros(x.shape[: x.ndim - self.event_ndims], x.dtype)
        keys = split_key(key, len(self.bijectors))
        for bijector, k in zip(reversed(self.bijectors), reversed(keys), strict=True):
            x, ld = bijector.forward_and_log_det(x, context, key=k)
            log_det = log_det + ld
        return x, log_det

    def inverse_and_log_det(self, y, context=None, *, key=None):
        """Data → noise: ``f_0⁻¹`` first; the log-dets add up."""
        log_det = jnp.zeros(y.shape[: y.ndim - self.event_ndims], y.dtype)
        keys = split_key(key, len(self.bijectors))
        for bijector, k in zip(self.bijectors, keys, strict=True):
            y, ld = bijector.inverse_and_log_det(y, context, key=k)
            log_det = log_det + ld
        return y, log_det


class Reverse(Bijector):
    """Reverses the order of the features: ``y_i = x_{D-1-i}``; volume preserving."""

    def forward_and_log_det(self, x, context=None, *, key=None):
        """``y = x[..., ::-1]``, log-det 0."""
        return x[..., ::-1], jnp.zeros(x.shape[:-1], x.dtype)

    def inverse_and_log_det(self, y, context=None, *, key=None):
        """``x = y[..., ::-1]``, log-det 0."""
        return y[..., ::-1], jnp.zeros(y.shape[:-1], y.dtype)


class Constant(nnx.Variable):
    """A non-trainable array that belongs to the model (MADE and coupling masks).

    Optimisers only see ``nnx.Param``; a ``Constant`` travels with the state like a
    PyTorch buffer does.
    """
