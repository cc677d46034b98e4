"""Affine coupling with a checkerboard mask over the feature vector (the layer of RealNVP).

Reference: Dinh et al., 2017.

The D positions split into the identity half ``y_id`` (even positions when ``parity`` = 0, odd
ones when 1) and the transformed half ``y_tr`` (the others), each padded to ``h = ⌈D/2⌉``
entries (the pad, a position D that exists only for odd D, is 0 on input and dropped on
output). Data → noise (``inverse``) is::

    (t, a) = ResidualNet([y_id, c]),   s = softplus(a) + 1e-3  (or sigmoid(a + 2) + 1e-3)
    u_id = y_id,   u_tr = s ⊙ y_tr + t,   log|det ∂u/∂y| = Σ_j log s_j (over real positions)

and noise → data (``forward``) is ``y_tr = (x_tr - t) / s`` with the same (t, s), since
``x_id = y_id``. Both directions cost one network pass of ``h + C → H → … → 2h``: only the
halves that are used are computed (as nflows, whose ``identity_features`` / ``transform_features``
gathers give the same sizes for even D). The halves are read by de-interleaving the pairs
``(y_{2j}, y_{2j+1})``, so every layer has the same shapes whatever its parity and the layers
stack and scan.

The scale function is ``softplus`` by default; ``scale_function="sigmoid"`` is nflows'
``SimpleRealNVP`` (see ``fpn_jax.flows.scale`` for why it is not the default). The net's
last layer starts at ``W ≈ 0`` with the identity scale bias, so every layer starts as (nearly)
the identity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fpn_jax.flows.bijector import Bijector, Constant
from fpn_jax.flows.scale import check_scale_function, initial_raw_scale, positive_scale, start_near_identity
from fpn_jax.nn import Activation, ResidualNet
from fpn_jax.typing import Array


class AffineCoupling(Bijector):
    """Checkerboard affine coupling conditioned on a context.

    Args:
      features: D.
      context_features: C.
      hidden_features: width of the residual net.
      parity: 0 transforms the odd positions (nflows' first layer), 1 the even ones; may be a
        traced integer (layer index inside ``Repeat``).
      num_blocks, activation, dropout, batch_norm: of the residual net.
      scale_function: "softplus" (default) or "sigmoid" (nflows), see ``fpn_jax.flows.scale``.
      rngs: initialisation keys.
    """

    def __init__(
        self,
        features: int,
        context_features: int,
        hidden_features: int,
        *,
        parity: int | Array,
        num_blocks: int = 2,
        activation: Activation = jax.nn.relu,
        dropout: float = 0.0,
        batch_norm: bool = False,
        scale_function: str = "softplus",
        rngs: nnx.Rngs,
    ):
        self.features = features
        self.half = half = (features + 1) // 2
        self.scale_function = check_scale_function(scale_function, type(self).__name__)
        self.parity = Constant(jnp.asarray(parity, jnp.int32) % 2)
        self.net = ResidualNet(
            half,
            2 * half,
            hidden_features,
            context_features,
            num_blocks=num_blocks,
            activation=activation,
            dropout=dropout,
            batch_norm=batch_norm,
            rngs=rngs,
        )
        raw_bias = jnp.zeros(2 * half).at[half:].set(initial_raw_scale(scale_function))  # (t, a)
        start_near_identity(self.net.final_layer, raw_bias, rngs)

    def transformed(self) -> Array:
        """Boolean (D,) mask of the positions this layer transforms."""
        return jnp.arange(self.features) % 2 != self.parity[...]

    def split(self, x: Array) -> tuple[Array, Array]:
        """(..., D) → the identity and transformed halves, each (..., h), zero-padded."""
        pad = 2 * self.half - self.features
        if pad:
            x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
        pairs = x.reshape(*x.shape[:-1], self.half, 2)
        even, odd = pairs[..., 0], pairs[..., 1]
        first = self.parity[...] == 0  # parity 0: the even positions stay
        return jnp.where(first, even, odd), jnp.where(first, odd, even)

    def merge(self, identity: Array, transformed: Array) -> Array:
        """The inverse of ``split``: two (..., h) halves → (..., D)."""
        first = self.parity[...] == 0
        even, odd = jnp.where(first, identity, transformed), jnp.where(first, transformed, identity)
        return jnp.stack([even, odd], axis=-1).reshape(*even.shape[:-1], 2 * self.half)[..., : self.features]

    def _scale_shift_and_log_det(self, identity: Array, context: Array | None, key: Array | None):
        """(s, t, Σ_j log s_j) for the transformed half, the pad's scale left out of the sum."""
        out = self.net(identity, context, key)
        shift, raw_scale = out[..., : self.half], out[..., self.half :]
        scale = positive_scale(raw_scale, self.scale_function)
        real = 2 * jnp.arange(self.half) + 1 - self.parity[...] < self.features  # not the pad
        return scale, shift, jnp.sum(jnp.where(real, jnp.log(scale), 0.0), axis=-1)

    def inverse_and_log_det(self, y, context=None, *, key=None):
        """Data → noise: ``u_tr = s ⊙ y_tr + t``, ``log|det| = Σ_j log s_j``."""
        identity, transformed = self.split(y)
        scale, shift, log_det = self._scale_shift_and_log_det(identity, context, key)
        return self.merge(identity, scale * transformed + shift), log_det

    def forward_and_log_det(self, x, context=None, *, key=None):
        """Noise → data: ``y_tr = (x_tr - t) / s``, ``log|det| = -Σ_j log s_j``."""
        identity, transformed = self.split(x)
        scale, shift, log_det = self._scale_shift_and_log_det(identity, context, key)
        return self.merge(identity, (transformed - shift) / scale), -log_det
