"""Layers the flows and models are built from.

Dense and masked (MADE) layers, residual nets, matmul-form convolutions, and the
degree-by-degree MADE inversion.
"""

from fpn_jax.nn.conv import Conv3x3, ConvTranspose, max_pool_2x2
from fpn_jax.nn.linear import Activation, Linear, activation_from_name, activation_name
from fpn_jax.nn.made import MADE
from fpn_jax.nn.masks import MaskedLinear, made_mask
from fpn_jax.nn.mode import is_training
from fpn_jax.nn.residual import Dropout, ResidualBlock, ResidualNet

__all__ = [
    "MADE",
    "Activation",
    "Conv3x3",
    "ConvTranspose",
    "Dropout",
    "Linear",
    "MaskedLinear",
    "ResidualBlock",
    "ResidualNet",
    "activation_from_name",
    "activation_name",
    "is_training",
    "made_mask",
    "max_pool_2x2",
]
