"""The one training step: what every model fpn-jax trains does with a batch.

Every model means the flows, the base models, the judge, and the benchmark's timed step.

A model is split once, in training mode, into its parameters (``nnx.Param``), batch-norm
statistics (``nnx.BatchStat``) and the rest (``split``). A step then, for a batch ``b`` and
a key ``k``::

    (ℓ, stats'), g = value_and_grad(θ ↦ loss(merge(θ, stats), b, k))(θ)
    updates, opt' = optimizer.update(g, opt, θ);   θ' = θ + updates

The merged model is a copy (``copy=True``), so batch norm can record its batch statistics
under ``jax.grad``; they are returned as ``stats'``. ``finite`` says whether ``ℓ`` and every
gradient entry are finite; with ``skip_nonfinite`` a step that is not leaves the state as it
was (``TrainConfig(nonfinite="skip")``). The optimiser (Adam, its schedule and clipping)
comes from ``TrainConfig.optimizer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from fpn_jax.typing import Array, Key, Scalar

BatchLoss = Callable[[nnx.Module, tuple[Array, ...], Key], Scalar]
"""``loss(model, batch, key)``: the scalar mean loss of a batch (row-aligned arrays), in training mode."""


class TrainState(NamedTuple):
    """What a step changes: parameters, batch-norm statistics and the optimiser's state."""

    params: nnx.State
    stats: nnx.State
    opt_state: Any


class Split(NamedTuple):
    """A model split for training: the graphs in training and eval mode, and the fixed rest.

    Fields: the graph in training mode, the fixed rest, and the graph in eval mode (for
    validation).
    """

    graph: nnx.GraphDef
    rest: nnx.State
    eval_graph: nnx.GraphDef


def split(model: nnx.Module, optimizer: optax.GradientTransformation) -> tuple[Split, TrainState]:
    """Splits ``model`` once for training; returns the fixed parts and the initial state.

    The model is left in eval mode.
    """
    model.train()
    graph, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    model.eval()
    return Split(graph, rest, nnx.graphdef(model)), TrainState(params, stats, optimizer.init(params))


def make_train_step(
    parts: Split,
    loss: BatchLoss,
    optimizer: optax.GradientTransformation,
    *,
    skip_nonfinite: bool = False,
) -> Callable[[TrainState, tuple[Array, ...], Key], tuple[TrainState, tuple[Scalar, Array]]]:
    """``step(state, batch, key) -> (state', (loss, finite))``, a pure function (see the module doc).

    Args:
      parts: the model's fixed parts from ``split``.
      loss: ``loss(model, batch, key)``, the mean loss of a batch.
      optimizer: an optax transformation, e.g. ``TrainConfig.optimizer(steps_per_epoch)``.
      skip_nonfinite: a step whose loss or gradient is not finite returns the state unchanged.
    """

    def step(state: TrainState, batch: tuple[Array, ...], key: Key) -> tuple[TrainState, tuple[Scalar, Array]]:
        def batch_loss(params: nnx.State) -> tuple[Scalar, nnx.State]:
            merged = nnx.merge(parts.graph, params, state.stats, parts.rest, copy=True)
            return loss(merged, batch, key), nnx.state(merged, nnx.BatchStat)

        (value, stats), grads = jax.value_and_grad(batch_loss, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new = TrainState(optax.apply_updates(state.params, updates), stats, opt_state)
        finite = jnp.isfinite(value) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        if skip_nonfinite:
            new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
        return new, (value, finite)

    return step


def evaluate(parts: Split, state: TrainState) -> nnx.Module:
    """The model with ``state``'s parameters and statistics, in eval mode (inside a jit)."""
    return nnx.merge(parts.eval_graph, state.params, state.stats, parts.rest)
