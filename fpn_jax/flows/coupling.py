"""Affine coupling with a checkerboard mask over the feature vector (the layer of RealNVP).

Reference: Dinh et al., 2017.

With ``m_i = 1`` on the transformed positions (odd i when ``parity`` = 0, even i when 1) and
``y_id = y ⊙ (1 - m)`` the positions left unchanged, data → noise (``inverse``) is::

    (t, a) = ResidualNet([y_id, c]),   s = softplus(a) + 1e-3  (or sigmoid(a + 2) + 1e-3)
    u = y_id + m ⊙ (s · y + t),        log|det ∂u/∂y| = Σ_i m_i log s_i

and noise → data (``forward``) is ``y = x_id + m ⊙ (x - t) / s`` with the same (t, s), since
``x_id = y_id``. Both directions cost one network pass.

The scale function is ``softplus`` by default; ``scale_function="sigmoid"`` is nflows'
``SimpleRealNVP`` (see ``fpn_jax.flows.scale`` for why it is not the default). The net's
last layer starts at ``W ≈ 0`` with the identity scale bias, so every layer starts as (nearly)
the identity. nflows indexes the
two halves with gathers of different sizes; the mask keeps every layer the same shape so the
layers stack and scan; the weights of masked-out rows and columns are simply unused.
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
        self.scale_function = check_scale_function(scale_function, type(self).__name__)
        self.parity = Constant(jnp.asarray(parity, jnp.int32) % 2)
        self.net = ResidualNet(
            features,
            2 * features,
            hidden_features,
            context_features,
            num_blocks=num_blocks,
            activation=activation,
            dropout=dropout,
            batch_norm=batch_norm,
            rngs=rngs,
        )
        raw_bias = jnp.zeros(2 * features).at[features:].set(initial_raw_scale(scale_function))  # (t, a)
        start_near_identity(self.net.final_layer, raw_bias, rngs)

    def transformed(self) -> Array:
        """Boolean (D,) mask of the positions this layer transforms."""
        return jnp.arange(self.features) % 2 != self.parity[...]

    def _scale_and_shift(self, unchanged: Array, context: Array | None, key: Array | None):
        out = self.net(unchanged, context, key)
        shift, raw_scale = out[..., : self.features], out[..., self.features :]
        return positive_scale(raw_scale, self.scale_function), shift

    def inverse_and_log_det(self, y, context=None, *, key=None):
        """Data → noise: ``u = y_id + m ⊙ (s y + t)``, ``log|det| = Σ_i m_i log s_i``."""
        m = self.transformed()
        scale, shift = self._scale_and_shift(jnp.where(m, 0.0, y), context, key)
        log_det = jnp.sum(jnp.where(m, jnp.log(scale), 0.0), axis=-1)
        return jnp.where(m, scale * y + shift, y), log_det

    def forward_and_log_det(self, x, context=None, *, key=None):
        """Noise → data: ``y = x_id + m ⊙ (x - t) / s``, ``log|det| = -Σ_i m_i log s_i``."""
        m = self.transformed()
        scale, shift = self._scale_and_shift(jnp.where(m, 0.0, x), context, key)
        log_det = -jnp.sum(jnp.where(m, jnp.log(scale), 0.0), axis=-1)
        return jnp.where(m, (x - shift) / scale, x), log_det
