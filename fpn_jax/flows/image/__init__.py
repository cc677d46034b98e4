"""Conditional image flows (RealNVP / Glow) on the bijector contract of ``fpn_jax.flows``.

One concept per module: ``squeeze`` (space-to-depth), ``actnorm`` and ``batch_norm``
(normalisation), ``conv1x1`` (invertible 1×1 convolution, channel permutations),
``coupling`` (checkerboard / channel affine coupling) with its ``conditioner`` (residual
CNN), ``condition`` (class vectors or images as channels), ``multiscale`` (factor-out),
``preprocess`` (dequantisation, logit / affine transforms, bits per dimension), ``compose``
(``Chain`` / ``Repeat`` for image events) and ``flow`` (``ConditionalImageFlow``). Training:
``fpn_jax.train.image_flow.fit_image_flow`` (the project's training loop, loss in bits/dim).

Images are NHWC, the event is the last three axes, every log-det has shape (N,).
"""

from fpn_jax.flows.image.actnorm import ActNorm
from fpn_jax.flows.image.batch_norm import ImageBatchNorm
from fpn_jax.flows.image.compose import ImageChain, ImageRepeat
from fpn_jax.flows.image.condition import condition_channels, squeeze_condition
from fpn_jax.flows.image.conditioner import ConvResidualBlock, ConvResidualNet
from fpn_jax.flows.image.conv1x1 import ChannelPermutation, InvertibleConv1x1
from fpn_jax.flows.image.coupling import ImageAffineCoupling, coupling_mask
from fpn_jax.flows.image.flow import ConditionalImageFlow
from fpn_jax.flows.image.multiscale import MultiScaleLevel
from fpn_jax.flows.image.preprocess import (
    AffineTransform,
    LogitTransform,
    bits_per_dim,
    dequantize,
    discrete_log_likelihood,
)
from fpn_jax.flows.image.squeeze import Squeeze, squeeze, unsqueeze

__all__ = [
    "ActNorm",
    "AffineTransform",
    "ChannelPermutation",
    "ConditionalImageFlow",
    "ConvResidualBlock",
    "ConvResidualNet",
    "ImageAffineCoupling",
    "ImageBatchNorm",
    "ImageChain",
    "ImageRepeat",
    "InvertibleConv1x1",
    "LogitTransform",
    "MultiScaleLevel",
    "Squeeze",
    "bits_per_dim",
    "condition_channels",
    "coupling_mask",
    "dequantize",
    "discrete_log_likelihood",
    "squeeze",
    "squeeze_condition",
    "unsqueeze",
]
