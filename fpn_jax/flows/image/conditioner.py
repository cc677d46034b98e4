"""The convolutional residual net that computes a coupling's shift and scale.

``ConvResidualNet``: ``Conv3x3([x, c]) → B × residual block → ReLU → Conv3x3``, all 3×3
'SAME' convolutions (``fpn_jax.nn.Conv3x3``, a matmul form that runs well inside
``lax.scan``). Each block is pre-activation, ``h + Conv₁(act(Conv₀(act(h))))``, with
``Conv₁`` started near zero so the block starts close to the identity (as
``fpn_jax.nn.ResidualBlock``). The condition enters as channels concatenated to the input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fpn_jax.flows.scale import IDENTITY_INIT_SCALE
from fpn_jax.nn import Activation, Conv3x3
from fpn_jax.typing import Array


class ConvResidualBlock(nnx.Module):
    """``h + Conv₁(act(Conv₀(act(h))))``, (N, H, W, F) → (N, H, W, F); ``Conv₁`` starts ≈ 0."""

    def __init__(self, features: int, *, activation: Activation = jax.nn.relu, rngs: nnx.Rngs):
        self.conv_0 = Conv3x3(features, features, rngs=rngs)
        self.conv_1 = Conv3x3(features, features, rngs=rngs)
        s = IDENTITY_INIT_SCALE
        self.conv_1.kernel[...] = jax.random.uniform(rngs.params(), self.conv_1.kernel.shape, minval=-s, maxval=s)
        self.activation = activation

    def __call__(self, h: Array) -> Array:
        """(N, H, W, F) → (N, H, W, F)."""
        return h + self.conv_1(self.activation(self.conv_0(self.activation(h))))


class ConvResidualNet(nnx.Module):
    """Residual CNN ``[x, c] → out`` with 3×3 convolutions.

    Args:
      in_channels: channels of x.
      out_channels: channels of the output.
      hidden_channels: width of the hidden feature maps.
      context_channels: channels of the condition c (0 for none).
      num_blocks: residual blocks.
      activation: between the convolutions.
      rngs: initialisation keys.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        context_channels: int = 0,
        *,
        num_blocks: int = 2,
        activation: Activation = jax.nn.relu,
        rngs: nnx.Rngs,
    ):
        self.context_channels = context_channels
        self.initial_conv = Conv3x3(in_channels + context_channels, hidden_channels, rngs=rngs)
        self.blocks = nnx.List(
            [ConvResidualBlock(hidden_channels, activation=activation, rngs=rngs) for _ in range(num_blocks)]
        )
        self.final_conv = Conv3x3(hidden_channels, out_channels, rngs=rngs)
        self.activation = activation

    def __call__(self, x: Array, context: Array | None = None) -> Array:
        """(N, H, W, in) and (N, H, W, context_channels) or None → (N, H, W, out)."""
        if self.context_channels:
            if context is None:
                raise ValueError(
                    f"ConvResidualNet: built for {self.context_channels} condition channels but got no condition."
                )
            x = jnp.concatenate([x, context], axis=-1)
        h = self.initial_conv(x)
        for block in self.blocks:
            h = block(h)
        return self.final_conv(self.activation(h))
