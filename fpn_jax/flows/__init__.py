"""Conditional normalizing flows and the bijectors they are built from."""

from fpn_jax.flows.autoregressive import MaskedAffineAutoregressive
from fpn_jax.flows.batch_norm import BatchNormBijector
from fpn_jax.flows.bijector import Bijector, Chain, Constant, Reverse
from fpn_jax.flows.coupling import AffineCoupling
from fpn_jax.flows.flow import ConditionalFlow
from fpn_jax.flows.image import ConditionalImageFlow
from fpn_jax.flows.maf import ConditionalMAF
from fpn_jax.flows.realnvp import ConditionalRealNVP
from fpn_jax.flows.stack import Repeat
from fpn_jax.nn import MADE, ResidualNet

__all__ = [
    "AffineCoupling",
    "BatchNormBijector",
    "Bijector",
    "Chain",
    "ConditionalFlow",
    "ConditionalImageFlow",
    "ConditionalMAF",
    "ConditionalRealNVP",
    "Constant",
    "MADE",
    "MaskedAffineAutoregressive",
    "Repeat",
    "ResidualNet",
    "Reverse",
]
