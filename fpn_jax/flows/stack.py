"""``Repeat``: L layers of one structure, parameters stacked, applied with ``lax.scan``.

Flows repeat one layer many times. Unrolling them in Python makes the compiled program (and
the compile time) grow with the depth; stacking each parameter along a leading layer axis
and scanning over it compiles one layer body whatever the depth.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from fpn_jax.flows.bijector import Bijector
from fpn_jax.nn.mode import is_training
from fpn_jax.typing import Array


class Repeat(Bijector):
    """``f = g_0 ∘ g_1 ∘ … ∘ g_{L-1}``: ``num_layers`` bijectors of identical structure.

    ``g_0`` sits on the data side (as in ``Chain``): ``inverse`` (data → noise) scans the
    layers in order 0..L-1, ``forward`` (noise → data) in reverse. Each layer has its own
    parameters; every array in ``self.layers`` carries a leading axis of size L.

    Args:
      make_layer: ``make_layer(index, rngs) -> Bijector``; ``index`` is the layer's number as
        a traced int32 scalar (use it for data such as alternating masks, not for Python
        control flow).
      num_layers: L.
      rngs: parameter initialisation keys; split once per layer.
    """

    event_ndims: int = 1  # trailing axes of one event: 1 for (N, D) vectors, 3 for (N, H, W, C) images

    def __init__(
        self,
        make_layer: Callable[[Array, nnx.Rngs], Bijector],
        num_layers: int,
        *,
        rngs: nnx.Rngs,
    ):
        @nnx.split_rngs(splits=num_layers)
        @nnx.vmap(in_axes=(0, 0), out_axes=0)
        def make(index: Array, rngs: nnx.Rngs) -> Bijector:
            return make_layer(index, rngs)

        self.layers = make(jnp.arange(num_layers), rngs)
        self.num_layers = num_layers

    def _scan(self, method: str, x: Array, context: Array | None, key: Array | None, reverse: bool):
        graphdef, state = nnx.split(self.layers)
        keys = None if key is None else jax.random.split(key, self.num_layers)

        def body(carry, xs):
            x, log_det = carry
            layer_state, layer_key = xs
            layer = nnx.merge(graphdef, layer_state)
            x, ld = getattr(layer, method)(x, context, key=layer_key)
            return (x, log_det + ld), nnx.state(layer, nnx.BatchStat)

        training = is_training(self.layers)
        if training:
            # Under jax.grad, batch norm's batch statistics add many elementwise residuals per
            # layer; XLA on CPU stacks each of them across the scan through slow buffer copies
            # (a quarter of a MNIST-AE training step). Saving only the matrix products and
            # recomputing the elementwise work in the backward pass was 1.25-1.6x faster
            # there; without batch norm it was not faster, so eval mode is left alone.
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
        init = (x, jnp.zeros(x.shape[: x.ndim - self.event_ndims], x.dtype))
        (x, log_det), batch_stats = jax.lax.scan(body, init, (state, keys), reverse=reverse)
        if training:
            # Training mode updates running statistics; eval mode leaves state untouched,
            # which keeps closures over the model valid under an outer jit/vmap.
            nnx.update(self.layers, batch_stats)
        return x, log_det

    def forward_and_log_det(self, x, context=None, *, key=None):
        """Noise → data: the layers in reverse order (L-1 first), scanned; the log-dets add up."""
        return self._scan("forward_and_log_det", x, context, key, reverse=True)

    def inverse_and_log_det(self, y, context=None, *, key=None):
        """Data → noise: the layers in order (0 first), scanned; the log-dets add up."""
        return self._scan("inverse_and_log_det", y, context, key, reverse=False)
