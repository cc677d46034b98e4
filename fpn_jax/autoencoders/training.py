"""Training a base model: minimise its own loss (``TrainableAutoencoder.loss``) over its data.

Training is a capability of its own: a base model that can be trained subclasses
``TrainableAutoencoder`` (the MNIST ConvVAE / ConvAE do); a converted model that is only
used frozen need not define a loss. The loop is ``fpn_jax.train.fit_model`` (jitted epochs,
early stopping on a validation split, the best epoch's model kept); with ``checkpoint_dir``
every epoch is saved to resume from, and the best model to ``checkpoint_dir/best`` (what
``fpn_jax.autoencoders.load`` reads).

Defaults: Adam with batch 1024 as in the paper's code; learning rate 1e-3 for both models
(the original used 5e-3 for the AE; see ``default_config``).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from fpn_jax import validation as checks
from fpn_jax.autoencoders.base import TrainableAutoencoder
from fpn_jax.train.config import History, TrainConfig, check_training_setup
from fpn_jax.train.loop import fit_model
from fpn_jax.typing import Array, Batch, Key, Scalar


def default_config(model: TrainableAutoencoder, **overrides: object) -> TrainConfig:
    """The base-model training settings: Adam 1e-3, batch 1024, ≤ 30 epochs, patience 3."""
    settings = dict(learning_rate=1e-3, batch_size=1024, max_epochs=30, patience=3, eval_batch_size=2048)
    return TrainConfig(**(settings | overrides))


def fit(
    model: TrainableAutoencoder,
    images: Batch,
    *,
    key: Array,
    config: TrainConfig | None = None,
    validation: Array | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
) -> History:
    """Trains ``model`` in place on ``images``; leaves it frozen (eval mode) at its best epoch.

    Args:
      model: a base model, e.g. ``fpn_jax.autoencoders.create("conv_ae")``.
      images: (N, *model.data_shape) floats within ``model.data_range``.
      key: PRNG key (shuffling, the VAE's reparameterisation noise).
      config: optimisation settings (default ``default_config(model)``).
      validation: held-out images for early stopping, scored by the same loss with a fixed key.
      checkpoint_dir: folder for resumable state (``resume/``) and the best model (``best/``).
      resume: continue an interrupted run found in ``checkpoint_dir``.
      progress: show a progress bar.

    Returns:
      The history of mean per-batch losses (the model's ``loss``).
    """
    where = f"fit({type(model).__name__})"
    if not isinstance(model, TrainableAutoencoder):
        raise TypeError(
            f"fit: argument `model` must be a trainable base model (TrainableAutoencoder); got {type(model).__name__}."
        )
    images = model.check_data(images, name="images", where=where)
    key = checks.check_key(key, where=where)
    config = config or default_config(model)
    check_training_setup(model, config, images.shape[0], where=where, name="images")
    if validation is not None:
        key, validation_key = jax.random.split(key)

        def row_loss(model: TrainableAutoencoder, batch: tuple[Array]) -> Array:
            return model.loss(batch[0], validation_key)[0]

        validation = model.check_data(validation, name="validation", where=where)
        if validation.shape[0] == 0:
            raise ValueError(f"{where}: argument `validation` has no rows; pass None to train without validation.")
        validation = ((validation,), row_loss)
    return fit_model(
        model, _batch_loss, (images,), key=key, config=config, validation=validation,
        name=f"fit {type(model).__name__}", progress=progress, checkpoint_dir=checkpoint_dir, resume=resume,
    )


def _batch_loss(model: TrainableAutoencoder, batch: tuple[Array], key: Key) -> Scalar:
    return jnp.mean(model.loss(batch[0], key)[0])


train = fit
"""Deprecated name of ``fit`` (kept for one release)."""
