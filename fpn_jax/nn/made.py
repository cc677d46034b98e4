"""Conditional MADE with residual blocks, the conditioner of MAF, as in nflows 0.14.

MADE: Germain et al., 2015, "MADE: Masked Autoencoder for Distribution Estimation"; MAF:
Papamakarios et al., 2017.

Masked initial layer (+ ``act(Linear(c))``), masked residual blocks with the context added
in every block, masked output layer with ``output_multiplier`` (m) outputs per feature.
The output layer's parameters keep nflows' interleaved column order (column ``i·m + k`` is
parameter k of feature i); the product is computed with the columns regrouped by parameter,
so the result comes out as (N, m, D), each parameter a contiguous (N, D) block (reading
strided (N, D, m) slices made the affine layer's elementwise tail twice as slow).
Sampling inverts it degree by degree (``fpn_jax.nn.by_degree``).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from fpn_jax.nn import by_degree
from fpn_jax.nn.by_degree import Solve
from fpn_jax.nn.keys import split_key
from fpn_jax.nn.linear import Activation, Linear
from fpn_jax.nn.masks import MaskedLinear
from fpn_jax.nn.residual import ResidualBlock
from fpn_jax.typing import Array


class MADE(nnx.Module):
    """Conditional MADE with residual blocks: outputs (N, output_multiplier, D).

    ``out[:, :, i]`` depends on ``x[:, :i]`` and on the context only (strictly
    autoregressive in the natural order). Hidden degrees cycle over 1..D-1.

    Args:
      features: D.
      hidden_features: width of the hidden layers.
      context_features: C (0 for an unconditional MADE).
      num_blocks: residual blocks.
      output_multiplier: parameters per feature (2 for affine: raw scale, shift).
      activation, dropout, batch_norm: of the residual blocks.
      rngs: initialisation keys.
    """

    def __init__(
        self,
        features: int,
        hidden_features: int,
        context_features: int,
        *,
        num_blocks: int = 2,
        output_multiplier: int = 2,
        activation: Activation = jax.nn.relu,
        dropout: float = 0.0,
        batch_norm: bool = False,
        rngs: nnx.Rngs,
    ):
        self.features = features
        self.output_multiplier = output_multiplier
        self.initial_layer = MaskedLinear(
            features, hidden_features, features=features, in_role="input", out_role="hidden", rngs=rngs
        )
        self.context_layer = (
            Linear(context_features, hidden_features, rngs=rngs) if context_features else None
        )
        self.blocks = nnx.List(
            [
                ResidualBlock(
                    hidden_features,
                    context_features,
                    context_mode="add",
                    autoregressive_features=features,
                    activation=activation,
                    dropout=dropout,
                    batch_norm=batch_norm,
                    rngs=rngs,
                )
                for _ in range(num_blocks)
            ]
        )
        self.final_layer = MaskedLinear(
            hidden_features,
            features * output_multiplier,
            features=features,
            in_role="hidden",
            out_role="output",
            rngs=rngs,
        )
        self.activation = activation

    def __call__(self, x: Array, context: Array | None, key: Array | None = None) -> Array:
        """(N, D) inputs and (N, C) context → (N, output_multiplier, D) parameters."""
        h = self.initial_layer(x)
        if self.context_layer is not None:
            h = h + self.activation(self.context_layer(context))
        for block, k in zip(self.blocks, split_key(key, len(self.blocks)), strict=True):
            h = block(h, context, k)
        d, m = self.features, self.output_multiplier
        # Column i·m + k → k·D + i as a reshape-transpose, not a gather: a gather's gradient is a
        # scatter-add, which XLA:CPU runs element by element (half the cost of this layer's
        # backward pass at CelebA's 1024 × 4096).
        weight = self.final_layer.weight()
        weight = weight.reshape(weight.shape[0], d, m).swapaxes(1, 2).reshape(weight.shape[0], m * d)
        bias = self.final_layer.bias[...].reshape(d, m).T.reshape(m * d)
        out = h @ weight + bias
        return out.reshape(*out.shape[:-1], m, d)

    def grouped_output_order(self) -> np.ndarray:
        """Output columns regrouped by parameter: ``[k·D + i] -> i·m + k`` (a trace-time constant)."""
        d, m = self.features, self.output_multiplier
        return (np.arange(d)[None, :] * m + np.arange(m)[:, None]).reshape(-1)

    def can_solve_by_degree(self) -> bool:
        """True when ``solve_by_degree`` applies: eval mode (a fixed map), no active dropout."""
        return all(
            (b.batch_norms is None or b.batch_norms[0].use_running_average)
            and (b.dropout.deterministic or b.dropout.rate == 0.0)
            for b in self.blocks
        )

    def solve_by_degree(self, x: Array, context: Array | None, solve: Solve) -> tuple[Array, Array]:
        """Inverts ``x_i = g(y_i; MADE(y | c)_i)`` for y (``fpn_jax.nn.by_degree.solve_by_degree``).

        Only valid for ``can_solve_by_degree()``; returns ``(y, aux)``, each (N, D).
        """
        return by_degree.solve_by_degree(self, x, context, solve)
