"""MADE's masks (Germain et al., 2015, "MADE: Masked Autoencoder for Distribution Estimation").

Every unit gets a degree: inputs ``1..D``, hidden units cycling over ``1..D-1``, outputs
``1..D`` (each repeated ``m`` times, interleaved). A unit of degree d may feed a hidden
unit of degree ``>= d`` and an output of degree ``> d``, so output i depends only on inputs
``1..i-1``: the network is strictly autoregressive. ``MaskedLinear`` is
``y = x (W ⊙ M) + b`` with that mask, a trace-time constant computed from static sizes.
"""

from __future__ import annotations

import functools

import numpy as np
from flax import nnx

from fpn_jax.nn.linear import Linear
from fpn_jax.typing import Array


def input_degrees(features: int) -> np.ndarray:
    """MADE degrees of the inputs: 1..D."""
    return np.arange(1, features + 1)


def hidden_degrees(units: int, features: int) -> np.ndarray:
    """MADE degrees of hidden units: cycling over 1..D-1 (all 0 when D = 1)."""
    return np.arange(units) % max(1, features - 1) + min(1, features - 1)


def output_degrees(units: int, features: int) -> np.ndarray:
    """MADE degrees of outputs: each of 1..D repeated ``units // D`` times, interleaved."""
    return np.repeat(input_degrees(features), units // features)


def degrees(role: str, units: int, features: int) -> np.ndarray:
    """MADE degrees of a layer's units; ``role`` is "input", "hidden" or "output"."""
    if role == "input":
        return input_degrees(features)
    if role == "hidden":
        return hidden_degrees(units, features)
    return output_degrees(units, features)


@functools.cache
def made_mask(in_role: str, in_units: int, out_role: str, out_units: int, features: int) -> np.ndarray:
    """The (in_units, out_units) 0/1 MADE mask between two layers of the given roles.

    A unit of degree d may feed a hidden unit of degree ≥ d and an output of degree > d, so
    output i depends only on inputs 1..i-1 (strictly autoregressive).
    """
    d_in = degrees(in_role, in_units, features)[:, None]
    d_out = degrees(out_role, out_units, features)[None, :]
    mask = d_out > d_in if out_role == "output" else d_out >= d_in
    return mask.astype(np.float32)


class MaskedLinear(Linear):
    """``y = x (W ⊙ M) + b`` with the MADE mask ``M = made_mask(in_role, out_role)``.

    The mask is a trace-time constant computed from static sizes, never stored.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        features: int,
        in_role: str,
        out_role: str,
        init_scale: float | None = None,
        rngs: nnx.Rngs,
    ):
        super().__init__(in_features, out_features, init_scale=init_scale, rngs=rngs)
        self.features = features
        self.in_role = in_role
        self.out_role = out_role

    def mask(self) -> np.ndarray:
        """The (in_features, out_features) 0/1 MADE mask of this layer."""
        return made_mask(self.in_role, self.in_features, self.out_role, self.out_features, self.features)

    def weight(self) -> Array:
        """The masked weight ``W ⊙ M``."""
        return self.kernel[...] * self.mask()
