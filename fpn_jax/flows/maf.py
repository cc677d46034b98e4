"""Conditional masked autoregressive flow (C-MAF), as in the FPN paper.

Papamakarios, Pavlakou, Murray, "Masked Autoregressive Flow for Density Estimation"
(NeurIPS 2017), with MADE conditioners (Germain et al., 2015), used as the plugin of Flow
Plugin Networks (Wielopolski, Koperski, Zięba).

``T⁻¹ = L_{K-1}⁻¹ ∘ … ∘ L_0⁻¹`` (data → noise), each layer, data side first::

    L = Reverse ∘ MaskedAffineAutoregressive ∘ [BatchNormBijector]

i.e. reverse the feature order, apply the conditional MADE affine map, optionally batch-norm.
This is nflows 0.14's ``MaskedAutoregressiveFlow`` with a context, layer for layer. The K
layers share one structure, so their parameters are stacked and scanned (``Repeat``).
"""

from __future__ import annotations

import jax
from flax import nnx

from fpn_jax import registry
from fpn_jax import validation as checks
from fpn_jax.flows.autoregressive import MaskedAffineAutoregressive
from fpn_jax.flows.batch_norm import BatchNormBijector
from fpn_jax.flows.bijector import Chain, Reverse
from fpn_jax.flows.flow import ConditionalFlow
from fpn_jax.flows.stack import Repeat
from fpn_jax.nn import Activation, activation_from_name, activation_name


def check_hyperparameters(where: str, hidden_features, num_layers, num_blocks, dropout) -> None:
    """Shared validation of the flows' constructor arguments."""
    checks.positive_int(hidden_features, name="hidden_features", where=where)
    checks.positive_int(num_layers, name="num_layers", where=where)
    checks.positive_int(num_blocks, name="num_blocks", where=where, allow_zero=True)
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"{where}: `dropout` must be in [0, 1); got {dropout!r}.")


@registry.register("conditional_maf")
class ConditionalMAF(ConditionalFlow):
    """Conditional MAF: ``num_layers`` × [reverse → masked affine autoregressive → (batch norm)].

    Density evaluation is one MADE pass per layer; sampling solves each layer degree by
    degree (``MADE.solve_by_degree``), about one pass of work in D small sequential steps.

    Args:
      features: D, latent width.
      context_features: C, context width (one-hot classes or multi-hot attributes).
      hidden_features: MADE width.
      num_layers: number of MAF layers.
      num_blocks: residual blocks per MADE.
      batch_norm_within: batch norm inside the MADE's residual blocks.
      batch_norm_between: a ``BatchNormBijector`` after every layer.
      dropout: dropout rate inside the residual blocks (training mode only).
      embedding_features: optional linear context embedding width.
      activation: hidden activation (ReLU).
      rngs: initialisation keys.
    """

    # Sampling's D small steps per layer ran faster with XLA:CPU's default (YNNPACK) kernels
    # (MNIST-VAE 120k vs 72k samples/s), so those programs skip fpn_jax.runtime.compiler's options.
    untuned_methods = frozenset({"_from_noise", "_sample_and_log_prob"})

    def __init__(
        self,
        features: int,
        context_features: int,
        *,
        hidden_features: int,
        num_layers: int = 5,
        num_blocks: int = 2,
        batch_norm_within: bool = False,
        batch_norm_between: bool = False,
        dropout: float = 0.0,
        embedding_features: int | None = None,
        activation: Activation | str = jax.nn.relu,
        rngs: nnx.Rngs,
    ):
        super().__init__(features, context_features, embedding_features=embedding_features, rngs=rngs)
        check_hyperparameters(type(self).__name__, hidden_features, num_layers, num_blocks, dropout)
        activation = activation_from_name(activation)
        self.hyperparameters = checks.frozen(dict(
            features=features, context_features=context_features, hidden_features=hidden_features,
            num_layers=num_layers, num_blocks=num_blocks, batch_norm_within=batch_norm_within,
            batch_norm_between=batch_norm_between, dropout=dropout, embedding_features=embedding_features,
            activation=activation_name(activation),
        ))

        def layer(index, rngs):
            made_transform = MaskedAffineAutoregressive(
                self.features,
                self.conditioner_features,
                hidden_features,
                num_blocks=num_blocks,
                activation=activation,
                dropout=dropout,
                batch_norm=batch_norm_within,
                rngs=rngs,
            )
            parts = [Reverse(), made_transform]
            if batch_norm_between:
                parts.append(BatchNormBijector(self.features))
            return Chain(parts)

        self.transform = Repeat(layer, num_layers, rngs=rngs)
