"""Latents of a frozen base model: encode a data set once, decode latents back to data.

    z = E(x)   (N, *data_shape) → (N, latent)      ``encode``
    x = D(z)   (N, latent) → (N, *data_shape)      ``decode``

Both run the model in eval mode under ``stop_gradient`` (the base model is frozen: nothing
downstream can train it), jit-compiled once per model and chunk size, in fixed-size chunks
so memory stays bounded whatever N is, each chunk split over all devices (``fpn_jax.parallel``).

Inputs are checked first: images of the model's ``data_shape``, floating, in [0, 1] (a NaN or
a value out of range is reported with its first row); latents finite and of the model's
width; N = 0 gives an empty result. A non-finite result from finite inputs raises
``FloatingPointError`` naming the rows (it means broken weights or an overflow inside).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from fpn_jax import _checks, parallel
from fpn_jax._batching import map_in_chunks
from fpn_jax.autoencoders.base import Autoencoder, check_data
from fpn_jax.flows.stack import is_training

Array = jax.Array


def _require_frozen(model: Autoencoder, where: str) -> None:
    if not isinstance(model, Autoencoder):
        raise TypeError(
            f"{where}: argument `model` must be a base model (fpn_jax.autoencoders.Autoencoder); "
            f"got {type(model).__name__}."
        )
    if is_training(model):
        raise RuntimeError(f"{where}: the base model is in training mode; freeze it first (fpn_jax.autoencoders.freeze).")


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef: nnx.GraphDef, state: nnx.State, x: Array, key: Array | None) -> Array:
    return jax.lax.stop_gradient(nnx.merge(graphdef, state).encode(x, key=key))


@functools.partial(jax.jit, static_argnums=0)
def _encode_sampled(graphdef: nnx.GraphDef, state: nnx.State, x: Array, keys: Array) -> Array:
    """One posterior sample per example, example n drawn with ``keys[n]``."""
    model = nnx.merge(graphdef, state)
    return jax.lax.stop_gradient(jax.vmap(lambda xi, ki: model.encode(xi[None], key=ki)[0])(x, keys))


@functools.partial(jax.jit, static_argnums=0)
def _decode(graphdef: nnx.GraphDef, state: nnx.State, z: Array) -> Array:
    return jax.lax.stop_gradient(nnx.merge(graphdef, state).decode(z))


_BROKEN = "Check the base model's parameters (e.g. with np.isfinite on nnx.state(model))."


@_checks.overflow_checked(what="the latents", where="fpn_jax.latents.encode", hint=_BROKEN)
def encode(model: Autoencoder, x: Array, *, key: Array | None = None, batch_size: int = 2048) -> np.ndarray:
    """z = E(x) for a whole data set, (N, latent_features) float32 on the host.

    Args:
      model: a frozen base model.
      x: (N, *model.data_shape) floats in [0, 1].
      key: sample z ~ q(z | x) where the model has a posterior (the VAE); default its mean.
      batch_size: examples per compiled call.

    Raises:
      ValueError: ``x`` of the wrong shape or dtype, or a row with values outside [0, 1] or
        NaN (naming the first); a bad ``key`` or ``batch_size``.
      TypeError / RuntimeError: ``model`` is not a base model / not frozen.
      FloatingPointError: a latent came out non-finite (broken weights), naming the rows.
    """
    where = "fpn_jax.latents.encode"
    _require_frozen(model, where)
    batch_size = _checks.positive_int(batch_size, name="batch_size", where=where)
    if key is not None:
        key = _checks.check_key(key, where=where)
    x = check_data(x, model.data_shape, name="x", where=where)
    graphdef, state = nnx.split(model)
    state = parallel.replicate(state)
    if key is None:
        return np.asarray(map_in_chunks(lambda c: _encode(graphdef, state, c, None), x, batch_size=batch_size))
    keys = jax.random.split(key, x.shape[0])  # one key per example: results do not depend on batch_size
    return np.asarray(map_in_chunks(
        lambda c, k: _encode_sampled(graphdef, state, c, k), x, keys, batch_size=batch_size
    ))


@_checks.overflow_checked(what="the decoded data", where="fpn_jax.latents.decode", hint=_BROKEN)
def decode(model: Autoencoder, z: Array, *, batch_size: int = 2048) -> np.ndarray:
    """x = D(z) for many latents, (N, *data_shape) float32 on the host.

    Raises:
      ValueError: ``z`` of the wrong shape or dtype or with a non-finite row (naming the
        first); a bad ``batch_size``.
      TypeError / RuntimeError: ``model`` is not a base model / not frozen.
      FloatingPointError: a decoded example came out non-finite, naming the rows.
    """
    where = "fpn_jax.latents.decode"
    _require_frozen(model, where)
    batch_size = _checks.positive_int(batch_size, name="batch_size", where=where)
    z = _checks.as_float_matrix(z, name="z", width=model.latent_features, where=where, width_name="latent_features")
    graphdef, state = nnx.split(model)
    state = parallel.replicate(state)
    return np.asarray(map_in_chunks(lambda c: _decode(graphdef, state, c), z, batch_size=batch_size))
