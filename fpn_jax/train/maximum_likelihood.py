"""Maximum-likelihood training of a conditional flow on (latent, context) pairs.

Minimises the mean negative log-likelihood ``-1/B Σ_n log p(z_n | y_n)`` over the flow's
``nnx.Param`` leaves with Adam. Only the flow moves: the latents are fixed data (a frozen
encoder's outputs), so nothing upstream can be updated. The loop itself (jitted epochs,
early stopping, checkpoints to resume from) is ``fpn_jax.train.fit_model``.
"""

from __future__ import annotations

import functools
import os

import jax
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
    noise: float = 0.0,
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
      noise: ε >= 0: every training batch is perturbed, ``z + u`` with ``u ~ U[0, ε)^D`` drawn
        afresh per step (the original FPN's ShapeNet setting, ε = 0.01: a dequantisation-like
        regulariser for small training sets); validation latents are never perturbed.

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
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < float("inf"):
        raise ValueError(f"fit: argument `noise` must be a finite number >= 0; got {noise!r}.")
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
    loss = batch_nll if noise == 0 else functools.partial(batch_nll, noise=float(noise))
    return fit_model(
        flow, loss, (z, context), key=key, config=config, validation=validation,
        name=f"fit {type(flow).__name__}", progress=progress, checkpoint_dir=checkpoint_dir, resume=resume,
    )


def batch_nll(
    flow: ConditionalFlow, batch: tuple[Latents, Context], key: Key | None, *, noise: float = 0.0
) -> Scalar:
    """``-1/B Σ_n log p(z_n + u_n | y_n)`` of a batch ``(z, context)``, in training mode.

    ``u_n ~ U[0, noise)^D`` (drawn with a key split from ``key``); ``u = 0`` when ``noise`` is 0.
    """
    z, context = batch
    if noise > 0:
        if key is None:
            raise ValueError("batch_nll: a key is required to draw the latent noise (noise > 0).")
        key, noise_key = jax.random.split(key)
        z = z + jax.random.uniform(noise_key, z.shape, z.dtype, 0.0, noise)
    return -jnp.mean(flow.log_prob(z, context, key=key))


def row_nll(flow: ConditionalFlow, batch: tuple[Latents, Context]) -> Array:
    """``-log p(z_n | y_n)`` per row, (N,), in eval mode (validation)."""
    z, context = batch
    return -flow.log_prob(z, context)
