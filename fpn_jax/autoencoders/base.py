"""``Autoencoder``: the interface a frozen base model offers to the plugin.

    encode: x (N, *data_shape) → z (N, latent_features)               (E in the paper)
    decode: z (N, latent_features) → x (N, *data_shape)               (D in the paper)

A subclass implements ``_encode(x, key)`` and ``_decode(z, key, **options)``; this class
adds the input checks (shapes and dtypes always; values on concrete arrays, naming the first
bad row). Data need not be images: ``data_shape`` is whatever one example is (28x28x1 for
MNIST, a point cloud for ShapeNet), and ``data_range`` the interval its values lie in
((0, 1) for MNIST pixels, (-1, 1) for tanh decoders, ``None`` for unbounded coordinates).
``decode`` may be stochastic (a key) and take options (e.g. a number of points).

Training is a separate capability: ``TrainableAutoencoder`` adds ``loss(x, key)``, what
``fpn_jax.autoencoders.fit`` minimises. A converted model that is only used frozen needs
none. Frozen means eval mode (batch norm uses its running statistics) and no gradient:
``fpn_jax.autoencoders.load`` returns models that way, and ``fpn_jax.latents`` encodes and
decodes under ``stop_gradient``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fpn_jax import validation as checks
from fpn_jax.typing import Array, ArrayLike, Batch, Key, Latents


class Autoencoder(nnx.Module):
    """Base class of the base models (see the module docstring).

    Attributes:
      latent_features: width of z.
      data_shape: shape of one example, e.g. (28, 28, 1).
      data_range: ``(low, high)`` bounds of the data's values, or None (any finite value).
      config: the constructor's keyword arguments (JSON-able), stored in checkpoints; kept
        as the hashable ``hyperparameters`` tuple.
    """

    hyperparameters: tuple[tuple[str, Any], ...] = ()

    @property
    def config(self) -> dict[str, Any]:
        """The constructor's keyword arguments (what a checkpoint stores to rebuild the model)."""
        return dict(self.hyperparameters)

    def __init__(
        self,
        latent_features: int,
        *,
        data_shape: tuple[int, ...],
        data_range: tuple[float, float] | None = None,
    ):
        self.latent_features = checks.positive_int(latent_features, name="latent_features", where=type(self).__name__)
        self.data_shape = tuple(int(d) for d in data_shape)
        self.data_range = None if data_range is None else (float(data_range[0]), float(data_range[1]))

    # -- to implement ---------------------------------------------------------------------
    def _encode(self, x: Batch, key: Key | None) -> Latents:
        raise NotImplementedError

    def _decode(self, z: Latents, key: Key | None, **options: Any) -> Batch:
        raise NotImplementedError

    # -- public ---------------------------------------------------------------------------
    def check_data(self, x: ArrayLike, *, name: str, where: str) -> Array:
        """``x`` checked to be (N, *data_shape) floats within ``data_range``, as float32."""
        return check_data(x, self.data_shape, name=name, where=where, data_range=self.data_range)

    def encode(self, x: Batch, *, key: Key | None = None) -> Latents:
        """Z = E(x), (N, latent_features); with ``key``, a sample of q(z | x) where defined."""
        x = self.check_data(x, name="x", where=f"{type(self).__name__}.encode")
        if key is not None:
            key = checks.check_key(key, where=f"{type(self).__name__}.encode")
        return self._encode(x, key)

    def decode(self, z: Latents, *, key: Key | None = None, **options: Any) -> Batch:
        """X = D(z), (N, *data_shape); ``z`` finite; ``key`` for a stochastic decoder."""
        where = f"{type(self).__name__}.decode"
        z = checks.as_float_matrix(z, name="z", width=self.latent_features, where=where, width_name="latent_features")
        if key is not None:
            key = checks.check_key(key, where=where)
        return self._decode(z, key, **options)


class TrainableAutoencoder(Autoencoder):
    """A base model that can be trained here: it defines its training loss."""

    def _loss(self, x: Batch, key: Key) -> tuple[Array, dict[str, Array]]:
        """Per-example training loss (N,) and named per-example parts of it for logging."""
        raise NotImplementedError

    def loss(self, x: Batch, key: Key) -> tuple[Array, dict[str, Array]]:
        """Per-example training loss (N,) of data ``x`` (N, *data_shape), with named parts for logging.

        Returns the loss and named per-example parts of it for logging; ``key`` drives the
        model's noise (the VAE's).
        """
        where = f"{type(self).__name__}.loss"
        x = self.check_data(x, name="x", where=where)
        key = checks.check_key(key, where=where)
        return self._loss(x, key)


def check_data(
    x: ArrayLike,
    data_shape: tuple[int, ...],
    *,
    name: str,
    where: str,
    data_range: tuple[float, float] | None = (0.0, 1.0),
) -> Array:
    """Checks a batch of examples: shape (N, *data_shape), floating, values in ``data_range``.

    Values are checked only on concrete arrays (not under jit): a value outside
    ``data_range`` (or, with ``data_range=None``, a NaN or infinity) is reported with the
    index of its first row.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    shape = tuple(x.shape)
    if shape[1:] != tuple(data_shape) or len(shape) != len(data_shape) + 1:
        raise ValueError(
            f"{where}: argument `{name}` must have shape (N, {', '.join(map(str, data_shape))}) "
            f"(NHWC for images); got shape {shape}."
        )
    within = "" if data_range is None else f" with values in [{_num(data_range[0])}, {_num(data_range[1])}]"
    if not jnp.issubdtype(x.dtype, jnp.floating):
        hint = " (divide uint8 images by 255)" if data_range == (0.0, 1.0) else ""
        raise ValueError(f"{where}: argument `{name}` must be floating point{within}; got dtype {x.dtype}{hint}.")
    if data_range is None:
        checks.check_finite(x, name=name, where=where)
    elif not checks.is_traced(x) and x.size:
        # NaN fails both comparisons. A device array is reduced where it lives (N booleans move).
        low, high = data_range
        xp = jnp if isinstance(x, jnp.ndarray) else np
        flat = x.reshape(shape[0], -1)
        try:
            bad = ~np.asarray(xp.all((flat >= low) & (flat <= high), axis=1))
        except jax.errors.TracerArrayConversionError:  # a concrete array closed over by a traced function
            bad = np.zeros(0, bool)  # its values cannot be read here; shape and dtype were checked
        if bad.any():
            row = int(np.argmax(bad))
            values = np.asarray(flat[row], np.float64)
            values = values[~np.isnan(values)]
            found = f"min {values.min():.4g}, max {values.max():.4g}" if values.size else "only NaN"
            nan = " and NaN" if values.size < flat.shape[1] and values.size else ""
            raise ValueError(
                f"{where}: argument `{name}` must hold values in [{_num(low)}, {_num(high)}]; row {row} of "
                f"{shape[0]} has {found}{nan} ({int(bad.sum())} bad rows in all)."
            )
    return jnp.asarray(x, dtype=jnp.float32)


def _num(value: float) -> str:
    return f"{value:g}"
