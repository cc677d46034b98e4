"""``Autoencoder``: the interface a frozen base model offers to the plugin.

    encode: x (N, *data_shape) → z (N, latent_features)     (E in the paper)
    decode: z (N, latent_features) → x (N, *data_shape)     (D in the paper)

A subclass implements ``_encode(x, key)``, ``decode_logits(z)`` and ``_loss(x, key)``; this
class adds the input checks (shapes and dtypes always; values, NaN and the [0, 1] range of
the data, on concrete arrays, naming the first bad row). Data need not be images: ``data_shape`` is whatever one example
is (28x28x1 for MNIST, a point cloud for ShapeNet). Frozen means eval mode (batch norm uses
its running statistics) and no gradient: ``fpn_jax.autoencoders.load`` returns models that
way, and ``fpn_jax.latents`` encodes and decodes under ``stop_gradient``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fpn_jax import _checks

Array = jax.Array


class Autoencoder(nnx.Module):
    """Base class of the base models (see the module docstring).

    Attributes:
      latent_features: width of z.
      data_shape: shape of one example, e.g. (28, 28, 1).
      config: the constructor's keyword arguments (JSON-able), stored in checkpoints; kept
        as the hashable ``hyperparameters`` tuple.
    """

    hyperparameters: tuple[tuple[str, Any], ...] = ()

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.hyperparameters)

    def __init__(self, latent_features: int, *, data_shape: tuple[int, ...]):
        self.latent_features = _checks.positive_int(
            latent_features, name="latent_features", where=type(self).__name__
        )
        self.data_shape = tuple(int(d) for d in data_shape)

    # -- to implement ---------------------------------------------------------------------
    def _encode(self, x: Array, key: Array | None) -> Array:
        raise NotImplementedError

    def decode_logits(self, z: Array) -> Array:
        """Pre-sigmoid decoder output, (N, *data_shape)."""
        raise NotImplementedError

    def _loss(self, x: Array, key: Array) -> tuple[Array, dict[str, Array]]:
        """Per-example training loss (N,) and named per-example parts of it for logging."""
        raise NotImplementedError

    # -- public ---------------------------------------------------------------------------
    def encode(self, x: Array, *, key: Array | None = None) -> Array:
        """z = E(x), (N, latent_features); with ``key``, a sample of q(z | x) where defined."""
        x = check_data(x, self.data_shape, name="x", where=f"{type(self).__name__}.encode")
        if key is not None:
            key = _checks.check_key(key, where=f"{type(self).__name__}.encode")
        return self._encode(x, key)

    def loss(self, x: Array, key: Array) -> tuple[Array, dict[str, Array]]:
        """Per-example training loss (N,) of data ``x`` (N, *data_shape) in [0, 1], and named
        per-example parts of it for logging; ``key`` drives the model's noise (the VAE's)."""
        where = f"{type(self).__name__}.loss"
        x = check_data(x, self.data_shape, name="x", where=where)
        key = _checks.check_key(key, where=where)
        return self._loss(x, key)

    def decode(self, z: Array) -> Array:
        """x = D(z) = sigmoid(decoder logits), (N, *data_shape) in [0, 1]; ``z`` finite."""
        where = f"{type(self).__name__}.decode"
        z = _checks.as_float_matrix(
            z, name="z", width=self.latent_features, where=where, width_name="latent_features"
        )
        return jax.nn.sigmoid(self.decode_logits(z))


def check_data(x: Any, data_shape: tuple[int, ...], *, name: str, where: str) -> Array:
    """Checks a batch of examples: shape (N, *data_shape), floating, values in [0, 1].

    The value range is checked only on concrete arrays (not under jit), where a NaN is
    reported with the index of its first row.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    shape = tuple(x.shape)
    if shape[1:] != tuple(data_shape) or len(shape) != len(data_shape) + 1:
        raise ValueError(
            f"{where}: argument `{name}` must have shape (N, {', '.join(map(str, data_shape))}) "
            f"(NHWC for images); got shape {shape}."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{where}: argument `{name}` must be floating point with values in [0, 1]; got dtype "
            f"{x.dtype} (divide uint8 images by 255)."
        )
    if not _checks.is_traced(x) and x.size:
        # NaN fails both comparisons. A device array is reduced where it lives (N booleans move).
        xp = jnp if isinstance(x, jax.Array) else np
        flat = x.reshape(shape[0], -1)
        bad = ~np.asarray(xp.all((flat >= 0.0) & (flat <= 1.0), axis=1))
        if bad.any():
            row = int(np.argmax(bad))
            values = np.asarray(flat[row], np.float64)
            values = values[~np.isnan(values)]
            found = f"min {values.min():.4g}, max {values.max():.4g}" if values.size else "only NaN"
            nan = " and NaN" if values.size < flat.shape[1] and values.size else ""
            raise ValueError(
                f"{where}: argument `{name}` must hold values in [0, 1]; row {row} of {shape[0]} "
                f"has {found}{nan} ({int(bad.sum())} bad rows in all)."
            )
    return jnp.asarray(x, dtype=jnp.float32)
