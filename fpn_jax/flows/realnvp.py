"""Conditional RealNVP (C-RealNVP), as in the FPN paper.

Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP" (ICLR 2017), conditioned
on a context, used as the plugin of Flow Plugin Networks (Wielopolski, Koperski, Zięba).

``T⁻¹ = L_{K-1}⁻¹ ∘ … ∘ L_0⁻¹`` (data → noise), each layer, data side first::

    L_k = AffineCoupling(parity = k mod 2) ∘ [BatchNormBijector]

The checkerboard mask flips every layer (layer 0 transforms the odd positions given the even
ones, as nflows' ``SimpleRealNVP``); the coupling nets are residual MLPs over
``[masked input, context]`` whose blocks are also gated by the context.
"""

from __future__ import annotations

import jax
from flax import nnx

from fpn_jax import registry
from fpn_jax import validation as checks
from fpn_jax.flows.batch_norm import BatchNormBijector
from fpn_jax.flows.bijector import Chain
from fpn_jax.flows.coupling import AffineCoupling
from fpn_jax.flows.flow import ConditionalFlow
from fpn_jax.flows.maf import check_hyperparameters
from fpn_jax.flows.stack import Repeat
from fpn_jax.nn import Activation, activation_from_name, activation_name


@registry.register("conditional_realnvp")
class ConditionalRealNVP(ConditionalFlow):
    """Conditional RealNVP: ``num_layers`` × [checkerboard affine coupling → (batch norm)].

    Both directions cost one residual-net pass per layer.

    Args: as ``ConditionalMAF`` (``hidden_features`` is the coupling nets' width,
      ``batch_norm_within`` puts batch norm inside their residual blocks), plus
      scale_function: ``"softplus"`` (default: s = softplus(a) + 1e-3, can stretch and shrink)
        or ``"sigmoid"`` (nflows: s = sigmoid(a + 2) + 1e-3 ≤ 1.001, for converted models).
    """

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
        scale_function: str = "softplus",
        rngs: nnx.Rngs,
    ):
        super().__init__(features, context_features, embedding_features=embedding_features, rngs=rngs)
        check_hyperparameters(type(self).__name__, hidden_features, num_layers, num_blocks, dropout)
        activation = activation_from_name(activation)
        self.hyperparameters = checks.frozen(dict(
            features=features, context_features=context_features, hidden_features=hidden_features,
            num_layers=num_layers, num_blocks=num_blocks, batch_norm_within=batch_norm_within,
            batch_norm_between=batch_norm_between, dropout=dropout, embedding_features=embedding_features,
            scale_function=scale_function,
            activation=activation_name(activation),
        ))

        def layer(index, rngs):
            coupling = AffineCoupling(
                self.features,
                self.conditioner_features,
                hidden_features,
                parity=index,
                num_blocks=num_blocks,
                activation=activation,
                dropout=dropout,
                batch_norm=batch_norm_within,
                scale_function=scale_function,
                rngs=rngs,
            )
            parts = [coupling]
            if batch_norm_between:
                parts.append(BatchNormBijector(self.features))
            return Chain(parts)

        self.transform = Repeat(layer, num_layers, rngs=rngs)
