"""Masked affine autoregressive transform (the layer of MAF; Papamakarios et al., 2017).

Data → noise (``inverse``, one MADE pass)::

    (a, m) = MADE(y | c),   s = softplus(a) + 1e-3
    u_i = s_i(y_<i, c) · y_i + m_i(y_<i, c),        log|det ∂u/∂y| = Σ_i log s_i

Noise → data (``forward``) inverts it coordinate by coordinate: ``y_i = (u_i - m_i) / s_i``
needs ``y_<i`` first. nflows runs D full MADE passes (pass k makes coordinate k exact);
fpn-jax computes the MADE's hidden units degree by degree instead (``MADE.solve_by_degree``),
each once, so a sample costs about one density pass of work spread over D small steps.
``log|det ∂y/∂u| = -Σ_i log s_i`` with the scales of the solved coordinates.

The scale is bounded below by 1e-3 (never a division by ~0) and the MADE's last layer starts
at ``W ≈ 0`` with the scale bias at ``softplus⁻¹(1 - 1e-3)``, so every layer starts as the
identity. This is nflows 0.14's ``MaskedAffineAutoregressiveTransform``, whose "forward" is
our inverse.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fpn_jax.flows.bijector import Bijector
from fpn_jax.flows.scale import initial_raw_scale, positive_scale, start_near_identity
from fpn_jax.nn import MADE, Activation
from fpn_jax.nn.mode import is_training
from fpn_jax.typing import Array


class MaskedAffineAutoregressive(Bijector):
    """One MAF layer: an affine map whose parameters come from a conditional MADE.

    Args:
      features: D.
      context_features: C (width of the, possibly embedded, context).
      hidden_features: MADE width.
      num_blocks: MADE residual blocks.
      activation, dropout, batch_norm: of the MADE's residual blocks.
      rngs: initialisation keys.
    """

    def __init__(
        self,
        features: int,
        context_features: int,
        hidden_features: int,
        *,
        num_blocks: int = 2,
        activation: Activation = jax.nn.relu,
        dropout: float = 0.0,
        batch_norm: bool = False,
        rngs: nnx.Rngs,
    ):
        self.features = features
        self.made = MADE(
            features,
            hidden_features,
            context_features,
            num_blocks=num_blocks,
            output_multiplier=2,
            activation=activation,
            dropout=dropout,
            batch_norm=batch_norm,
            rngs=rngs,
        )
        raw_bias = jnp.zeros((features, 2)).at[:, 0].set(initial_raw_scale())  # interleaved (a, m)
        start_near_identity(self.made.final_layer, raw_bias.reshape(-1), rngs)

    def scale_and_shift(self, y: Array, context: Array | None, key: Array | None = None) -> tuple[Array, Array]:
        """``(s, m)``, each (N, D), from one MADE pass over ``y``."""
        params = self.made(y, context, key)  # (N, 2, D)
        return positive_scale(params[..., 0, :]), params[..., 1, :]

    def inverse_and_log_det(self, y, context=None, *, key=None):
        """Data → noise: ``u = s(y_<i) y + m(y_<i)``, ``log|det| = Σ_i log s_i`` (one MADE pass)."""
        scale, shift = self.scale_and_shift(y, context, key)
        return scale * y + shift, jnp.sum(jnp.log(scale), axis=-1)

    def forward_and_log_det(self, x, context=None, *, key=None):
        """Noise → data: ``y_i = (x_i - m_i) / s_i`` solved degree by degree, ``log|det| = -Σ_i log s_i``."""
        if is_training(self.made):
            raise RuntimeError(
                "MaskedAffineAutoregressive: sampling (noise -> data) with batch norm inside "
                "the MADE needs running statistics; call model.eval() first."
            )
        if not self.made.can_solve_by_degree():
            return self.forward_and_log_det_by_passes(x, context, key=key)

        def solve(x_i, params_i):
            scale = positive_scale(params_i[0])
            return (x_i - params_i[1]) / scale, jnp.log(scale)

        y, log_scale = self.made.solve_by_degree(x, context, solve)
        return y, -jnp.sum(log_scale, axis=-1)

    def forward_and_log_det_by_passes(self, x, context=None, *, key=None):
        """Noise → data by the same inversion as D full MADE passes (``lax.fori_loop``).

        Pass k makes coordinate k exact; this is the reference for ``forward_and_log_det`` and
        the path taken when dropout is active.
        """

        def solve_one_more(_, carry):
            y, _ = carry
            scale, shift = self.scale_and_shift(y, context, key)
            return (x - shift) / scale, scale

        init = (jnp.zeros_like(x), jnp.ones_like(x))
        y, scale = jax.lax.fori_loop(0, self.features, solve_one_more, init)
        return y, -jnp.sum(jnp.log(scale), axis=-1)
