"""Residual blocks and the residual MLP (RealNVP's coupling nets), as in nflows 0.14.

* ``ResidualBlock``: pre-activation ``h + L₁(drop(act(BN(L₀(act(BN(h)))))))``, the context
  entering either additively after ``L₀`` (MADE's masked blocks) or as a GLU gate on the
  block's output (nflows' ``ResidualBlock``). ``L₁`` starts near zero, so every block starts
  close to the identity (He et al., 2016, "Identity Mappings in Deep Residual Networks").
* ``ResidualNet``: ``Linear([x, c])``, residual blocks gated by the context, ``Linear``.
* ``Dropout`` with an explicit key, and ``batch_norm_affine`` (eval-mode batch norm as an
  affine map).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fpn_jax.nn.keys import split_key
from fpn_jax.nn.linear import Activation, Linear
from fpn_jax.nn.masks import MaskedLinear
from fpn_jax.typing import Array


def batch_norm_affine(bn: nnx.BatchNorm) -> tuple[Array, Array]:
    """Eval-mode ``nnx.BatchNorm`` as ``x ↦ a ⊙ x + b``: ``a = γ / sqrt(σ² + ε)``, ``b = β - a μ``."""
    a = jax.lax.rsqrt(bn.var[...] + bn.epsilon)
    if bn.scale is not None:
        a = a * bn.scale[...]
    b = -a * bn.mean[...]
    if bn.bias is not None:
        b = b + bn.bias[...]
    return a, b


class Dropout(nnx.Module):
    """Inverted dropout with an explicit key; identity when ``deterministic`` (eval mode)."""

    def __init__(self, rate: float):
        self.rate = float(rate)
        self.deterministic = True

    def __call__(self, x: Array, key: Array | None) -> Array:
        """``x`` with entries zeroed with probability ``rate`` and the rest scaled by ``1/(1-rate)``."""
        if self.deterministic or self.rate == 0.0:
            return x
        if key is None:
            raise ValueError(
                f"dropout (rate {self.rate}) is active in training mode and needs a PRNG key: "
                "pass key=... to the call, or call model.eval()."
            )
        keep = jax.random.bernoulli(key, 1.0 - self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), 0.0)


class ResidualBlock(nnx.Module):
    """Pre-activation residual block, optionally masked (MADE) and conditioned.

    ``h' = h + L₁(drop(act(BN₁(L₀(act(BN₀(h))) [+ C(c)]))))`` with ``context_mode="add"``, or
    ``h' = h + L₁(…) ⊙ σ(C(c))`` with ``context_mode="glu"``.

    Args:
      features: width of h.
      context_features: width of c (0 for none).
      context_mode: ``"add"`` (nflows' MaskedResidualBlock) or ``"glu"`` (nflows' ResidualBlock).
      autoregressive_features: D for masked blocks (hidden → hidden MADE masks), or None.
      activation, dropout, batch_norm: as named; batch norm uses eps 1e-3 as nflows.
      rngs: initialisation keys.
    """

    def __init__(
        self,
        features: int,
        context_features: int,
        *,
        context_mode: str,
        autoregressive_features: int | None = None,
        activation: Activation = jax.nn.relu,
        dropout: float = 0.0,
        batch_norm: bool = False,
        rngs: nnx.Rngs,
    ):
        def linear(init_scale=None):
            if autoregressive_features is None:
                return Linear(features, features, init_scale=init_scale, rngs=rngs)
            return MaskedLinear(
                features,
                features,
                features=autoregressive_features,
                in_role="hidden",
                out_role="hidden",
                init_scale=init_scale,
                rngs=rngs,
            )

        self.context_mode = context_mode
        self.context_layer = (
            Linear(context_features, features, rngs=rngs) if context_features else None
        )
        self.batch_norms = (
            nnx.List(
                [
                    nnx.BatchNorm(features, epsilon=1e-3, momentum=0.9, use_running_average=True, rngs=rngs)
                    for _ in range(2)
                ]
            )
            if batch_norm
            else None
        )
        self.linear_0 = linear()
        self.linear_1 = linear(init_scale=1e-3)  # near zero: the block starts as identity
        self.activation = activation
        self.dropout = Dropout(dropout)

    def __call__(self, h: Array, context: Array | None, key: Array | None = None) -> Array:
        """(N, H) hidden state and (N or 1, C) context → (N, H)."""
        t = self.batch_norms[0](h) if self.batch_norms is not None else h
        t = self.linear_0(self.activation(t))
        if self.context_layer is not None and self.context_mode == "add":
            t = t + self.context_layer(context)
        if self.batch_norms is not None:
            t = self.batch_norms[1](t)
        t = self.linear_1(self.dropout(self.activation(t), key))
        if self.context_layer is not None and self.context_mode == "glu":
            t = t * jax.nn.sigmoid(self.context_layer(context))
        return h + t


class ResidualNet(nnx.Module):
    """Residual MLP ``[x, c] -> out``, the context also gating every block (GLU).

    The context enters only through linear maps, so it may be a single row (1, C) shared by
    all rows of x (classification evaluates every class this way).

    Args:
      in_features, out_features, hidden_features, context_features: sizes (C may be 0).
      num_blocks, activation, dropout, batch_norm: of the residual blocks.
      rngs: initialisation keys.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int,
        context_features: int,
        *,
        num_blocks: int = 2,
        activation: Activation = jax.nn.relu,
        dropout: float = 0.0,
        batch_norm: bool = False,
        rngs: nnx.Rngs,
    ):
        self.initial_layer = Linear(in_features + context_features, hidden_features, rngs=rngs)
        self.blocks = nnx.List(
            [
                ResidualBlock(
                    hidden_features,
                    context_features,
                    context_mode="glu",
                    activation=activation,
                    dropout=dropout,
                    batch_norm=batch_norm,
                    rngs=rngs,
                )
                for _ in range(num_blocks)
            ]
        )
        self.final_layer = Linear(hidden_features, out_features, rngs=rngs)

    def __call__(self, x: Array, context: Array | None, key: Array | None = None) -> Array:
        """(N, in_features) and (N or 1, C) context → (N, out_features)."""
        if context is None:
            h = self.initial_layer(x)
        else:  # Linear([x, c]) = x W_x + c W_c + b: c may be one row broadcast over x's rows
            kernel, d = self.initial_layer.weight(), x.shape[-1]
            h = x @ kernel[:d] + (context @ kernel[d:] + self.initial_layer.bias[...])
        for block, k in zip(self.blocks, split_key(key, len(self.blocks)), strict=True):
            h = block(h, context, k)
        return self.final_layer(h)
