"""Maximum-likelihood training of a conditional image flow on 8-bit images, in bits per dimension.

The image counterpart of ``fpn_jax.train.maximum_likelihood``: the same training loop
(``fit_model``) and step, with the batch loss ``dequantized_bits_per_dim``: for a batch
``(x, c)`` of integer levels ``x ∈ {0, …, 255}^D`` and conditions c, fresh dequantisation noise
``u ~ U[0, 1)^D`` from the step's key, ``y = (x + u) / 256``, and::

    loss = 1/B Σ_n -(log p(y_n | c_n) - D log 256) / (D log 2)

the mean negative discrete log-likelihood bound in bits per dimension
(``fpn_jax.flows.image.preprocess``). Validation uses a fixed dequantisation key, so epochs
compare on the same noise.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

from fpn_jax import validation as checks
from fpn_jax.flows.image.flow import ConditionalImageFlow
from fpn_jax.train.config import History, TrainConfig, check_training_setup
from fpn_jax.train.loop import fit_model
from fpn_jax.typing import Array, Key

__all__ = ["dequantized_bits_per_dim", "fit_image_flow", "row_bits_per_dim"]


def dequantized_bits_per_dim(flow: ConditionalImageFlow, batch: tuple[Array, Array], key: Key | None) -> Array:
    """The training loss of a batch ``(images, context)``: mean bits/dim, freshly dequantised.

    ``images`` are (B, H, W, C) integer levels {0, …, 255} as floats; the dequantisation noise
    comes from ``key`` (a ``fpn_jax.train.step.BatchLoss``).

    Raises:
      ValueError: no key.
    """
    if key is None:
        raise ValueError("dequantized_bits_per_dim: a key is required to draw the dequantisation noise.")
    images, context = batch
    return jnp.mean(flow._bits_per_dim(images, context, key))


def row_bits_per_dim(flow: ConditionalImageFlow, batch: tuple[Array, Array]) -> Array:
    """Per-row bits/dim (validation), dequantised with a fixed key so epochs compare."""
    images, context = batch
    return flow._bits_per_dim(images, context, jax.random.key(0))


def fit_image_flow(
    flow: ConditionalImageFlow,
    images: Array,
    context: Array,
    *,
    key: Key,
    config: TrainConfig | None = None,
    validation: tuple[Array, Array] | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
) -> History:
    """Trains ``flow`` in place by maximum likelihood (bits/dim); leaves it in eval mode.

    Args:
      flow: the image flow (its parameters are updated).
      images: (N, H, W, C) integer levels in {0, …, 255} (any numeric dtype).
      context: (N, K) float vectors or (N, H, W, Ci) float condition images.
      key: PRNG key for shuffling and the dequantisation noise.
      config: optimisation settings; None means ``TrainConfig()``.
      validation: optional ``(images_val, context_val)`` for early stopping and model selection.
      progress: show a progress bar.
      checkpoint_dir: folder for the resumable training state (as ``fpn_jax.fit``).
      resume: continue an interrupted run found in ``checkpoint_dir``.

    Returns:
      The training ``History``; its losses are bits per dimension.

    Raises:
      TypeError: ``flow`` is not a ``ConditionalImageFlow``.
      ValueError: bad shapes, dtypes or non-finite values (naming the argument), no rows.
    """
    where = "fit_image_flow"
    if not isinstance(flow, ConditionalImageFlow):
        raise TypeError(f"{where}: argument `flow` must be a ConditionalImageFlow; got {type(flow).__name__}.")
    config = TrainConfig() if config is None else config
    key = checks.check_key(key, where=where)
    images, context = flow._check_pair(where, "images", _as_float(images), context)
    check_training_setup(flow, config, images.shape[0], where=where, name="images")
    val: Any = None
    if validation is not None:
        if not isinstance(validation, (tuple, list)) or len(validation) != 2:
            raise ValueError(f"{where}: argument `validation` must be a pair (images_val, context_val).")
        val = (flow._check_pair(f"{where} (validation)", "images", _as_float(validation[0]), validation[1]),
               row_bits_per_dim)
    return fit_model(
        flow, dequantized_bits_per_dim, (images, context), key=key, config=config, validation=val,
        name=where, progress=progress, checkpoint_dir=checkpoint_dir, resume=resume,
    )


def _as_float(images: Any) -> Array:
    return jnp.asarray(images, jnp.float32)
