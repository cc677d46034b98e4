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

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
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

    def legacy_layout(
        self, target: dict[str, Any], expected: dict[str, tuple[int, ...]], stored: dict[str, tuple[int, ...]]
    ) -> tuple[dict[str, Any], Callable[[dict[str, Any]], dict[str, Any]]] | None:
        """Reads checkpoints of the full-width couplings (fpn-jax before the half-width nets).

        Those nets took ``[y ⊙ (1 - m), c]`` (D + C inputs) and produced (t, a) for all D
        positions (2D outputs), the unused rows and columns ignored. The current nets take the
        identity half and produce the transformed half (``AffineCoupling.split``), so an old
        kernel gives its rows ``2j + parity`` (and the context rows) and its columns
        ``2j + 1 - parity`` (of the shift and of the raw scale): exactly the same function.

        Args:
          target: this model's state as a pure dict (what ``checkpoint.load`` restores).
          expected: its arrays' shapes by dotted path.
          stored: the checkpoint's arrays' shapes by dotted path.

        Returns:
          ``(legacy_target, upgrade)`` if ``stored`` is this model in the old layout (and
          nothing else differs), else None; ``upgrade`` maps the restored legacy pure dict to
          the current one.
        """
        d, half = self.features, (self.features + 1) // 2
        path = ("transform", "layers", "bijectors", 0, "net")
        prefix = ".".join(map(str, path)) + "."
        layers, rows, hidden = expected[prefix + "initial_layer.kernel"]
        old = {
            "initial_layer.kernel": (layers, rows - half + d, hidden),
            "final_layer.kernel": (layers, hidden, 2 * d),
            "final_layer.bias": (layers, 2 * d),
        }
        if stored != expected | {prefix + k: v for k, v in old.items()}:
            return None
        legacy = _copy_path(target, path)
        net = _node(legacy, path)
        for name, shape in old.items():
            layer, leaf = name.split(".")
            net[layer] = {**net[layer], leaf: jax.ShapeDtypeStruct(shape, net[layer][leaf].dtype)}

        def upgrade(state: dict[str, Any]) -> dict[str, Any]:
            out = _copy_path(state, path)
            net = _node(out, path)
            parity = np.asarray(_node(state, path[:-1])["parity"]).reshape(-1, 1)  # (L, 1)
            ident, trans = 2 * np.arange(half) + parity, 2 * np.arange(half) + 1 - parity  # (L, h) positions

            def take(a: np.ndarray, positions: np.ndarray) -> np.ndarray:
                """(L, ..., d) → (L, ..., h): layer l's entries at ``positions[l]`` of the last axis, 0 at the pad."""
                shape = (positions.shape[0],) + (1,) * (a.ndim - 2) + (half,)
                picked = np.take_along_axis(a, np.minimum(positions, d - 1).reshape(shape), axis=-1)
                return np.where((positions < d).reshape(shape), picked, 0).astype(a.dtype)

            kernel = np.asarray(net["initial_layer"]["kernel"])  # (L, d + C, H)
            rows = take(kernel[:, :d].swapaxes(1, 2), ident).swapaxes(1, 2)
            net["initial_layer"] = {**net["initial_layer"], "kernel": np.concatenate([rows, kernel[:, d:]], axis=1)}
            final = {k: np.asarray(v) for k, v in net["final_layer"].items()}  # (L, H, 2d), (L, 2d)
            net["final_layer"] = {
                k: np.concatenate([take(v[..., :d], trans), take(v[..., d:], trans)], axis=-1) for k, v in final.items()
            }
            return out

        return legacy, upgrade


def _copy_path(tree: dict[Any, Any], path: tuple[Any, ...]) -> dict[Any, Any]:
    """A copy of the nested dict ``tree`` that shares everything but the dicts along ``path``."""
    out = dict(tree)
    node = out
    for part in path:
        node[part] = dict(node[part])
        node = node[part]
    return out


def _node(tree: dict[Any, Any], path: tuple[Any, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree
