"""Maximum-likelihood training of a conditional flow on (latent, context) pairs.

Minimises the mean negative log-likelihood ``-1/B Σ_n log p(z_n | y_n)`` over the flow's
``nnx.Param`` leaves with Adam. Only the flow moves: the latents are fixed data (a frozen
encoder's outputs), so nothing upstream can be updated. The loop itself (jitted epochs,
early stopping, checkpoints to resume from) is ``fpn_jax.train.fit_model``.
"""

from __future__ import annotations

import os

import jax.numpy as jnp

from fpn_jax import validation as checks
from fpn_jax.flows.flow import ConditionalFlow
from fpn_jax.train.config import History, TrainConfig, check_training_setup
from fpn_jax.train.loop import fit_model
from fpn_jax.typing import Array, Context, Key, Latents, Scalar

__all__ = ["History", "TrainConfig", "fit"]


def fit(
    flow: ConditionalFlow,
    z: Latents,
    context: Context,
    *,
    key: Key,
    config: TrainConfig | None = None,
    validation: tuple[Latents, Context] | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
) -> History:
    """Trains ``flow`` in place by maximum likelihood; leaves it in eval mode.

    Args:
      flow: the conditional flow (its parameters are updated).
      z: (N, D) training latents.
      context: (N, C) float contexts of the latents.
      key: PRNG key for shuffling and dropout.
      config: optimisation settings; ``None`` (the default) means ``TrainConfig()``.
      validation: optional ``(z_val, context_val)`` for early stopping and model selection;
        without it the last epoch is kept.
      progress: show a progress bar with the running NLLs.
      checkpoint_dir: folder for the resumable training state, written after every epoch.
      resume: continue an interrupted run found in ``checkpoint_dir``.

    Returns:
      The training history; its losses are mean NLLs in nats per latent.

    Raises:
      ValueError: bad shapes, dtypes or non-finite rows (see ``ConditionalFlow.log_prob``),
        no training rows, or batches of one row for a flow with batch norm.
      FloatingPointError: the training NLL became NaN or infinite; the flow keeps the
        parameters of its best epoch so far.
    """
    config = TrainConfig() if config is None else config
    if not isinstance(flow, ConditionalFlow):
        raise TypeError(f"fit: argument `flow` must be a ConditionalFlow; got {type(flow).__name__}.")
    z, context = flow._check_pair("fit", "z", z, context)
    key = checks.check_key(key, where="fit")
    check_training_setup(flow, config, z.shape[0], where="fit", name="z")
    if validation is not None:
        if not isinstance(validation, (tuple, list)) or len(validation) != 2:
            length = f" of length {len(validation)}." if hasattr(validation, "__len__") else "."
            raise ValueError(
                "fit: argument `validation` must be a pair (z_val, context_val); "
                f"got {type(validation).__name__}{length}"
            )
        z_val, context_val = flow._check_pair("fit (validation)", "z_val", *validation)
        if z_val.shape[0] == 0:
            raise ValueError("fit: argument `validation` has no rows; pass None to train without validation.")
        validation = ((z_val, context_val), row_nll)
    return fit_model(
        flow, batch_nll, (z, context), key=key, config=config, validation=validation,
        name=f"fit {type(flow).__name__}", progress=progress, checkpoint_dir=checkpoint_dir, resume=resume,
    )


def batch_nll(flow: ConditionalFlow, batch: tuple[Latents, Context], key: Key | None) -> Scalar:
    """``-1/B Σ_n log p(z_n | y_n)`` of a batch ``(z, context)``, in training mode."""
    z, context = batch
    return -jnp.mean(flow.log_prob(z, context, key=key))


def row_nll(flow: ConditionalFlow, batch: tuple[Latents, Context]) -> Array:
    """``-log p(z_n | y_n)`` per row, (N,), in eval mode (validation)."""
    z, context = batch
    return -flow.log_prob(z, context)
