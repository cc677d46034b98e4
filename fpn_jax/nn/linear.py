"""Dense layers with PyTorch's (and so nflows') parametrisation, and activations by name.

* ``Linear``: ``y = x W + b`` with W of shape (in, out); PyTorch's default initialisation
  ``U(±1/sqrt(in))`` for W and b, so that models trained with nflows convert exactly.
* ``activation_name`` / ``activation_from_name``: a ``jax.nn`` activation and the name a
  checkpoint stores for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from fpn_jax.typing import Array

Activation = Callable[[Array], Array]


def activation_name(activation: Activation) -> str | Activation:
    """The name of a ``jax.nn`` activation (what checkpoints store), else the callable itself."""
    name = getattr(activation, "__name__", None)
    return name if name and getattr(jax.nn, name, None) is activation else activation


def activation_from_name(activation: str | Activation) -> Activation:
    """Inverse of ``activation_name``: ``"relu"`` → ``jax.nn.relu``; callables pass through."""
    if callable(activation):
        return activation
    found = getattr(jax.nn, str(activation), None)
    if not callable(found):
        raise ValueError(f"`activation` must be a jax.nn function or its name; got {activation!r}.")
    return found


def _torch_uniform(scale: float) -> nnx.Initializer:
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


class Linear(nnx.Module):
    """Affine map ``y = x W + b``; W: (in_features, out_features).

    Args:
      in_features, out_features: sizes.
      init_scale: W and b start ``U(±init_scale)``; default ``1/sqrt(in_features)`` as in
        PyTorch's ``nn.Linear``.
      rngs: initialisation keys.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        init_scale: float | None = None,
        rngs: nnx.Rngs,
    ):
        scale = 1.0 / math.sqrt(in_features) if init_scale is None else init_scale
        init = _torch_uniform(scale)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features)))
        self.bias = nnx.Param(init(rngs.params(), (out_features,)))
        self.in_features = in_features
        self.out_features = out_features

    def weight(self) -> Array:
        """The (in_features, out_features) weight used in the product."""
        return self.kernel[...]

    def __call__(self, x: Array) -> Array:
        """``x W + b``: (..., in_features) → (..., out_features)."""
        return x @ self.weight() + self.bias[...]
