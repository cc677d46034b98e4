"""Latents of a frozen base model: encode a data set once, decode latents back to data.

    z = E(x)   (N, *data_shape) → (N, latent)      ``encode``
    x = D(z)   (N, latent) → (N, *data_shape)      ``decode``

Both run the model in eval mode under ``stop_gradient`` (the base model is frozen: nothing
downstream can train it), jit-compiled once per model and chunk size, in fixed-size chunks
so memory stays bounded whatever N is, each chunk split over all devices
(``fpn_jax.runtime.mesh``, ``fpn_jax.parallel``).

Inputs are checked first: examples of the model's ``data_shape``, floating, within its
``data_range`` (a NaN or a value out of range is reported with its first row); latents
finite and of the model's width; N = 0 gives an empty result. A non-finite result from finite inputs raises
``FloatingPointError`` naming the rows (it means broken weights or an overflow inside).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
from flax import nnx

from fpn_jax import validation as checks
from fpn_jax.autoencoders.base import Autoencoder
from fpn_jax.nn.mode import is_training
from fpn_jax.runtime import mesh
from fpn_jax.runtime.chunks import map_in_chunks
from fpn_jax.typing import Array, Batch, Key, Latents


def _require_frozen(model: Autoencoder, where: str) -> None:
    if not isinstance(model, Autoencoder):
        raise TypeError(
            f"{where}: argument `model` must be a base model (fpn_jax.autoencoders.Autoencoder); "
            f"got {type(model).__name__}."
        )
    if is_training(model):
        raise RuntimeError(
            f"{where}: the base model is in training mode; freeze it first (fpn_jax.autoencoders.freeze)."
        )


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef: nnx.GraphDef, state: nnx.State, x: Array, key: Array | None) -> Array:
    return jax.lax.stop_gradient(nnx.merge(graphdef, state).encode(x, key=key))


@functools.partial(jax.jit, static_argnums=0)
def _encode_sampled(graphdef: nnx.GraphDef, state: nnx.State, x: Array, keys: Array) -> Array:
    """One posterior sample per example, example n drawn with ``keys[n]``."""
    model = nnx.merge(graphdef, state)
    return jax.lax.stop_gradient(jax.vmap(lambda xi, ki: model.encode(xi[None], key=ki)[0])(x, keys))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _decode(graphdef: nnx.GraphDef, state: nnx.State, z: Array, options: tuple) -> Array:
    return jax.lax.stop_gradient(nnx.merge(graphdef, state).decode(z, **dict(options)))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _decode_sampled(graphdef: nnx.GraphDef, state: nnx.State, z: Array, keys: Array, options: tuple) -> Array:
    """One draw of a stochastic decoder per latent, latent n drawn with ``keys[n]``."""
    model = nnx.merge(graphdef, state)
    return jax.lax.stop_gradient(
        jax.vmap(lambda zi, ki: model.decode(zi[None], key=ki, **dict(options))[0])(z, keys)
    )


_BROKEN = "Check the base model's parameters (e.g. with np.isfinite on nnx.state(model))."


@checks.overflow_checked(what="the latents", where="fpn_jax.latents.encode", hint=_BROKEN)
def encode(model: Autoencoder, x: Batch, *, key: Key | None = None, batch_size: int = 2048) -> np.ndarray:
    """Z = E(x) for a whole data set, (N, latent_features) float32 on the host.

    Args:
      model: a frozen base model.
      x: (N, *model.data_shape) floats within ``model.data_range``.
      key: sample z ~ q(z | x) where the model has a posterior (the VAE); default its mean.
      batch_size: examples per compiled call.

    Raises:
      ValueError: ``x`` of the wrong shape or dtype, or a row with values outside ``model.data_range`` or
        NaN (naming the first); a bad ``key`` or ``batch_size``.
      TypeError / RuntimeError: ``model`` is not a base model / not frozen.
      FloatingPointError: a latent came out non-finite (broken weights), naming the rows.
    """
    where = "fpn_jax.latents.encode"
    _require_frozen(model, where)
    batch_size = checks.positive_int(batch_size, name="batch_size", where=where)
    if key is not None:
        key = checks.check_key(key, where=where)
    x = model.check_data(x, name="x", where=where)
    graphdef, state = nnx.split(model)
    state = mesh.replicate(state)
    if key is None:
        return np.asarray(map_in_chunks(lambda c: _encode(graphdef, state, c, None), x, batch_size=batch_size))
    keys = jax.random.split(key, x.shape[0])  # one key per example: results do not depend on batch_size
    return np.asarray(map_in_chunks(
        lambda c, k: _encode_sampled(graphdef, state, c, k), x, keys, batch_size=batch_size
    ))


@checks.overflow_checked(what="the decoded data", where="fpn_jax.latents.decode", hint=_BROKEN)
def decode(
    model: Autoencoder, z: Latents, *, key: Key | None = None, batch_size: int = 2048, **options: Any
) -> np.ndarray:
    """X = D(z) for many latents, (N, *data_shape) float32 on the host.

    Args:
      model: a frozen base model.
      z: (N, model.latent_features) latents.
      key: for a stochastic decoder; latent n is decoded with the n-th of N keys split from
        it, so results do not depend on ``batch_size``.
      batch_size: latents per compiled call.
      **options: passed to ``model.decode`` (hashable: they are compiled in).

    Raises:
      ValueError: ``z`` of the wrong shape or dtype or with a non-finite row (naming the
        first); a bad ``key`` or ``batch_size``.
      TypeError / RuntimeError: ``model`` is not a base model / not frozen.
      FloatingPointError: a decoded example came out non-finite, naming the rows.
    """
    where = "fpn_jax.latents.decode"
    _require_frozen(model, where)
    batch_size = checks.positive_int(batch_size, name="batch_size", where=where)
    if key is not None:
        key = checks.check_key(key, where=where)
    z = checks.as_float_matrix(z, name="z", width=model.latent_features, where=where, width_name="latent_features")
    graphdef, state = nnx.split(model)
    state = mesh.replicate(state)
    frozen_options = tuple(sorted(options.items()))
    if key is None:
        return np.asarray(
            map_in_chunks(lambda c: _decode(graphdef, state, c, frozen_options), z, batch_size=batch_size)
        )
    keys = jax.random.split(key, z.shape[0])
    return np.asarray(map_in_chunks(
        lambda c, k: _decode_sampled(graphdef, state, c, k, frozen_options), z, keys, batch_size=batch_size
    ))
