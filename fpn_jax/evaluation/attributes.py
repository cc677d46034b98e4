"""Independent judges of binary attributes: a CNN on images and a logistic regression on latents.

CelebA-style experiments condition on A binary attributes (A = 40) and edit them. Two
classifiers that never see the plugin score what the plugin does:

* ``AttributeCNN``: an image classifier with A sigmoid outputs, trained here on the training
  images (``fit_attribute_classifier``). It measures whether an edited face shows the flipped
  attribute and keeps the others (``edit_effects``), and which attributes conditional
  samples show. It never sees the base model, the flow or MSP's matrix.
* ``LinearProbe``: multi-output logistic regression on the latents,
  ``p(y_a = 1 | z) = σ(((z − μ) / s) w_a + b_a)`` with the training latents' mean μ and
  standard deviation s (``fit_linear_probe``), the baseline for the plugin's Bayes-rule
  attribute prediction. Its loss is a sum over attributes of terms with separate parameters,
  so it is A independent logistic regressions fitted at once.

Both train with the one loop, ``fpn_jax.train.fit_model``, and are registered architectures
(``checkpoint.save`` / ``load``). Images are NHWC in [-1, 1] (MSP's range), float, or uint8
pixels u read as ``u / 127.5 − 1`` (a quarter of the memory, for a training set held in
memory); ``resize_images`` brings decoded images to the classifier's size. Attributes are
(N, A) floats in {0, 1}.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fpn_jax import registry
from fpn_jax import validation as checks
from fpn_jax.nn.conv import Conv3x3, max_pool_2x2
from fpn_jax.runtime import mesh
from fpn_jax.runtime.chunks import map_in_chunks
from fpn_jax.train.config import History, TrainConfig, check_training_setup
from fpn_jax.train.loop import fit_model
from fpn_jax.typing import Array, ArrayLike, Key, Scalar

__all__ = [
    "AttributeCNN",
    "LinearProbe",
    "attribute_accuracy",
    "default_classifier_config",
    "default_probe_config",
    "edit_effects",
    "fit_attribute_classifier",
    "fit_linear_probe",
    "predict_probabilities",
    "probe_probabilities",
    "resize_images",
    "to_uint8",
]


# --------------------------------------------------------------------------- the image classifier


def _as_signed(x: Array) -> Array:
    """Images in [-1, 1] as float32: uint8 pixels u become u / 127.5 − 1, floats pass."""
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / 127.5 - 1.0
    return x.astype(jnp.float32)


@registry.register("attribute_cnn")
class AttributeCNN(nnx.Module):
    """``logits = W_o relu(W_h flat(B_K(... B_1(x)))) + b_o``, B_k = max-pool 2×2 ∘ relu ∘ conv 3×3.

    Shapes: x (N, H, W, C) in [-1, 1] (float) or uint8 → after block k (N, H/2^k, W/2^k,
    c_k) → flattened (N, H W c_K / 4^K) → hidden (N, F) → logits (N, A). ``sigmoid(logits)``
    are the attribute probabilities.

    Args:
      image_shape: (H, W, C); H and W divisible by 2^K, K = ``len(channels)``.
      num_attributes: A, the number of sigmoid outputs.
      channels: c_1..c_K, the widths of the K convolution blocks.
      hidden_features: F, the width of the hidden dense layer.
      rngs: initialisation randomness.
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (64, 64, 3),
        num_attributes: int = 40,
        *,
        channels: Sequence[int] = (32, 64, 128, 256),
        hidden_features: int = 256,
        rngs: nnx.Rngs,
    ):
        where = "AttributeCNN"
        image_shape = tuple(checks.positive_int(s, name="image_shape", where=where) for s in image_shape)
        channels = tuple(checks.positive_int(c, name="channels", where=where) for c in channels)
        if len(image_shape) != 3 or not channels:
            raise ValueError(f"{where}: `image_shape` must be (H, W, C) and `channels` non-empty; got "
                             f"{image_shape!r} and {channels!r}.")
        factor = 2 ** len(channels)
        if image_shape[0] % factor or image_shape[1] % factor:
            raise ValueError(f"{where}: H and W of `image_shape` {image_shape} must be divisible by 2^{len(channels)} "
                             f"= {factor} ({len(channels)} pooling blocks); use fewer `channels` for small images.")
        self.image_shape = image_shape
        self.num_attributes = checks.positive_int(num_attributes, name="num_attributes", where=where)
        hidden_features = checks.positive_int(hidden_features, name="hidden_features", where=where)
        self.hyperparameters = checks.frozen(dict(
            image_shape=image_shape, num_attributes=self.num_attributes, channels=channels,
            hidden_features=hidden_features,
        ))
        widths = (image_shape[2], *channels)
        self.convs = nnx.List([Conv3x3(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)])
        flat = (image_shape[0] // factor) * (image_shape[1] // factor) * channels[-1]
        self.hidden = nnx.Linear(flat, hidden_features, rngs=rngs)
        self.out = nnx.Linear(hidden_features, self.num_attributes, rngs=rngs)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor's arguments (what a checkpoint stores to rebuild the model)."""
        return dict(self.hyperparameters)

    def __call__(self, x: Array) -> Array:
        """(N, H, W, C) images in [-1, 1] (or uint8) → (N, A) logits."""
        h = _as_signed(x)
        for conv in self.convs:
            h = max_pool_2x2(jax.nn.relu(conv(h)))
        h = jax.nn.relu(self.hidden(h.reshape(h.shape[0], -1)))
        return self.out(h)


def _check_images(images: Any, *, name: str, where: str, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """(N, H, W, C) uint8, or floats in [-1, 1] (returned as float32)."""
    images = np.asarray(images)
    expected = "(N, H, W, C)" if image_shape is None else f"(N, {', '.join(map(str, image_shape))})"
    if images.ndim != 4 or (image_shape is not None and images.shape[1:] != tuple(image_shape)):
        raise ValueError(f"{where}: argument `{name}` must have shape {expected}; got {images.shape}.")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{where}: argument `{name}` must hold uint8 pixels or floats in [-1, 1]; got dtype "
                         f"{images.dtype}.")
    if images.size:
        low, high = float(images.min()), float(images.max())
        if not (-1.0 <= low and high <= 1.0):  # also catches NaN
            raise ValueError(f"{where}: argument `{name}` must have values in [-1, 1] (MSP's range; map [0, 1] "
                             f"images by 2x - 1); got values in [{low}, {high}].")
    return images.astype(np.float32, copy=False)


def _check_attributes(attributes: Any, *, n: int, width: int | None, name: str, where: str) -> np.ndarray:
    """(n, A) floats in {0, 1}, as float32."""
    attributes = np.asarray(attributes)
    shape_ok = attributes.ndim == 2 and attributes.shape[0] == n and (width is None or attributes.shape[1] == width)
    if not shape_ok or not np.issubdtype(attributes.dtype, np.number) or attributes.dtype == bool:
        wanted = f"({n}, {'A' if width is None else width})"
        raise ValueError(f"{where}: argument `{name}` must be a numeric {wanted} array of 0 / 1 attributes; got "
                         f"shape {attributes.shape} and dtype {attributes.dtype}.")
    bad = ~np.all((attributes == 0) | (attributes == 1), axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{where}: argument `{name}` must hold 0 / 1 attributes (convert MSP's -1 / +1 labels with "
                         f"(y + 1) / 2); row {row} has {sorted(set(attributes[row].tolist()))[:4]}.")
    return attributes.astype(np.float32, copy=False)


def default_classifier_config(**overrides: object) -> TrainConfig:
    """The classifier's training settings: Adam 1e-3 decayed along a cosine, batch 128, 10 epochs, no patience."""
    settings = dict(learning_rate=1e-3, batch_size=128, max_epochs=10, patience=None, schedule="cosine",
                    eval_batch_size=512)
    return TrainConfig(**(settings | overrides))


def fit_attribute_classifier(
    images: ArrayLike,
    attributes: ArrayLike,
    *,
    key: Key,
    config: TrainConfig | None = None,
    validation: tuple[ArrayLike, ArrayLike] | None = None,
    channels: Sequence[int] = (32, 64, 128, 256),
    hidden_features: int = 256,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
) -> tuple[AttributeCNN, History]:
    """Trains a fresh ``AttributeCNN`` by minimising the mean binary cross-entropy over attributes.

    ``loss = −1/(B A) Σ_n Σ_a [y_na log σ(l_na) + (1 − y_na) log(1 − σ(l_na))]`` per batch of B
    images, through ``fpn_jax.train.fit_model``. With ``validation`` the epoch with the
    lowest validation error ``1/(N A) Σ_n Σ_a [(σ(l_na) > ½) ≠ y_na]`` is kept (that is
    ``History.val_loss``).

    Args:
      images: (N, H, W, C) floats in [-1, 1], or uint8 pixels.
      attributes: (N, A) {0, 1} floats.
      key: PRNG key of the initialisation and the shuffling.
      config: optimisation settings (default ``default_classifier_config()``).
      validation: optional ``(images, attributes)`` of the same shapes but N.
      channels: c_1..c_K, the widths of the convolution blocks (``AttributeCNN``).
      hidden_features: F, the width of the hidden dense layer.
      progress: show a progress bar.
      checkpoint_dir: folder for the resumable state (``resume/``) and the best model (``best/``).

    Returns:
      ``(model, history)``: the classifier at its best epoch and the training history.

    Raises:
      ValueError: bad shapes or dtypes, pixel values outside [-1, 1], attributes not 0 / 1,
        image sides not divisible by 2^len(channels).
    """
    where = "fit_attribute_classifier"
    config = default_classifier_config() if config is None else config
    key = checks.check_key(key, where=where)
    images = _check_images(images, name="images", where=where)
    n = images.shape[0]
    attributes = _check_attributes(attributes, n=n, width=None, name="attributes", where=where)
    held_out = None
    if validation is not None:
        val_images = _check_images(validation[0], name="validation[0]", where=where, image_shape=images.shape[1:])
        val_attributes = _check_attributes(validation[1], n=val_images.shape[0], width=attributes.shape[1],
                                           name="validation[1]", where=where)
        if val_images.shape[0]:
            held_out = ((jnp.asarray(val_images), jnp.asarray(val_attributes)), _row_error)
    init_key, key = jax.random.split(key)
    model = AttributeCNN(images.shape[1:], attributes.shape[1], channels=channels, hidden_features=hidden_features,
                         rngs=nnx.Rngs(params=init_key))
    check_training_setup(model, config, n, where=where, name="images")
    history = fit_model(
        model, _batch_cross_entropy, (jnp.asarray(images), jnp.asarray(attributes)), key=key, config=config,
        validation=held_out, name=where, progress=progress, checkpoint_dir=checkpoint_dir,
    )
    return model, history


def _batch_cross_entropy(model: nnx.Module, batch: tuple[Array, Array], key: Key) -> Scalar:
    x, y = batch
    return optax.sigmoid_binary_cross_entropy(model(x), y).mean()


def _row_error(model: nnx.Module, batch: tuple[Array, Array]) -> Array:
    """The share of a row's attributes predicted wrongly, (N,)."""
    x, y = batch
    return jnp.mean(((model(x) > 0).astype(jnp.float32) != y).astype(jnp.float32), axis=1)


@functools.partial(jax.jit, static_argnums=0)
def _probabilities(graphdef: nnx.GraphDef, state: nnx.State, x: Array) -> Array:
    return jax.nn.sigmoid(nnx.merge(graphdef, state)(x))


def predict_probabilities(model: AttributeCNN, images: ArrayLike, *, batch_size: int = 512) -> np.ndarray:
    """``σ(logits)``: the probability of each attribute in each image, (N, A) float32 on the host.

    Args:
      model: a trained ``AttributeCNN``.
      images: (N, *model.image_shape) floats in [-1, 1], or uint8 pixels (``resize_images``
        brings other sizes to the model's).
      batch_size: images per compiled call.

    Raises:
      ValueError: bad shape, dtype, values or ``batch_size``.
    """
    where = "predict_probabilities"
    images = _check_images(images, name="images", where=where, image_shape=model.image_shape)
    batch_size = checks.positive_int(batch_size, name="batch_size", where=where)
    graphdef, state = nnx.split(model)
    state = mesh.replicate(state)
    return np.asarray(map_in_chunks(lambda c: _probabilities(graphdef, state, c), images, batch_size=batch_size))


@functools.partial(jax.jit, static_argnums=1)
def _resize(x: Array, size: int) -> Array:
    out = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), method="linear", antialias=True)
    return jnp.clip(out, -1.0, 1.0)


def resize_images(images: ArrayLike, size: int, *, batch_size: int = 256) -> np.ndarray:
    """Square images resized to ``size`` × ``size`` (bilinear, antialiased when shrinking), float32.

    ``jax.image.resize(..., "linear", antialias=True)`` per chunk of ``batch_size`` images,
    clipped to [-1, 1]; images already of that size are returned as float32 unchanged. Apply
    it to the classifier's training images and to decoded images alike, so both reach the
    classifier through the same resampling.

    Args:
      images: (N, S, S, C) floats in [-1, 1] or uint8 pixels.
      size: the output side.
      batch_size: images per compiled call.

    Returns:
      (N, size, size, C) float32 in [-1, 1].
    """
    where = "resize_images"
    size = checks.positive_int(size, name="size", where=where)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"{where}: argument `images` must be square NHWC images (N, S, S, C); got {images.shape}.")
    x = images.astype(np.float32) / np.float32(127.5) - 1 if images.dtype == np.uint8 else images.astype(np.float32)
    if images.shape[1] == size or images.shape[0] == 0:
        return x if images.shape[1] == size else np.zeros((0, size, size, images.shape[3]), np.float32)
    return np.asarray(map_in_chunks(lambda c: _resize(c, size), x, batch_size=batch_size))


def to_uint8(images: ArrayLike) -> np.ndarray:
    """Images in [-1, 1] as uint8 pixels ``round((x + 1) · 127.5)`` (for a training set held in memory)."""
    x = np.clip(np.asarray(images, np.float32), -1.0, 1.0)
    return np.rint((x + 1.0) * 127.5).astype(np.uint8)


def attribute_accuracy(probabilities: ArrayLike, attributes: ArrayLike) -> np.ndarray:
    """Per attribute, the share of rows where ``[p > ½]`` equals the {0, 1} attribute, (A,)."""
    p, y = np.asarray(probabilities), np.asarray(attributes)
    if p.shape != y.shape or p.ndim != 2:
        raise ValueError(f"attribute_accuracy: `probabilities` and `attributes` must both be (N, A); got {p.shape} "
                         f"and {y.shape}.")
    return np.mean((p > 0.5) == (y > 0.5), axis=0)


def edit_effects(before: ArrayLike, after: ArrayLike, attribute: int, target: ArrayLike) -> dict[str, float]:
    """What an edit of one attribute did, as the classifier sees it.

    For N edited images, with p (N, A) the classifier's probabilities on the unedited image
    (``before``; the reconstruction D(z), so the autoencoder's own loss does not count
    against the edit) and p' on the edited one (``after``), attribute a = ``attribute`` set
    to t_n ∈ {0, 1} (``target``)::

        success = 1/N Σ_n [ [p'_na > ½] = t_n ]              the attribute shows the intended value
        before  = 1/N Σ_n [ [p_na > ½] = t_n ]               ... already before the edit
        moved   = 1/N Σ_n [ (p'_na − p_na)(2 t_n − 1) > 0 ]  it moved in the intended direction
        kept    = 1/(N (A−1)) Σ_n Σ_{b≠a} [ [p'_nb > ½] = [p_nb > ½] ]   the others stay

    Args:
      before: (N, A) probabilities on the unedited images.
      after: (N, A) probabilities on the edited images.
      attribute: a, the edited column.
      target: (N,) the value each row's attribute a was set to (0 or 1).

    Returns:
      ``{"success", "before", "moved", "kept", "rows"}``.
    """
    p, q = np.asarray(before, np.float64), np.asarray(after, np.float64)
    t = np.asarray(target, np.float64)
    if p.shape != q.shape or p.ndim != 2 or t.shape != (p.shape[0],) or not 0 <= attribute < p.shape[1]:
        raise ValueError(f"edit_effects: `before` and `after` must be (N, A), `target` (N,) and `attribute` in [0, A); "
                         f"got {p.shape}, {q.shape}, {t.shape} and {attribute}.")
    others = np.arange(p.shape[1]) != attribute
    return {
        "success": float(np.mean((q[:, attribute] > 0.5) == (t > 0.5))),
        "before": float(np.mean((p[:, attribute] > 0.5) == (t > 0.5))),
        "moved": float(np.mean((q[:, attribute] - p[:, attribute]) * (2 * t - 1) > 0)),
        "kept": float(np.mean((q[:, others] > 0.5) == (p[:, others] > 0.5))) if others.any() else 1.0,
        "rows": int(p.shape[0]),
    }


# --------------------------------------------------------------------------- the linear probe


class Standardization(nnx.Variable):
    """A fixed (non-trained) statistic of the probe's inputs."""


@registry.register("attribute_probe")
class LinearProbe(nnx.Module):
    """``logits = ((z − μ) / s) W + b``: A logistic regressions on standardised latents.

    Shapes: z (N, D) → logits (N, A). μ and s (D,) are ``Standardization`` variables (set
    by ``fit_linear_probe`` from the training latents, never trained); W (D, A), b (A,).

    Args:
      features: D.
      num_attributes: A.
      rngs: initialisation randomness (W and b start at 0).
    """

    def __init__(self, features: int, num_attributes: int = 40, *, rngs: nnx.Rngs):
        where = "LinearProbe"
        self.features = checks.positive_int(features, name="features", where=where)
        self.num_attributes = checks.positive_int(num_attributes, name="num_attributes", where=where)
        self.hyperparameters = checks.frozen(dict(features=self.features, num_attributes=self.num_attributes))
        self.mean = Standardization(jnp.zeros(self.features))
        self.scale = Standardization(jnp.ones(self.features))
        self.linear = nnx.Linear(self.features, self.num_attributes, kernel_init=nnx.initializers.zeros,
                                 rngs=rngs)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor's arguments (what a checkpoint stores to rebuild the model)."""
        return dict(self.hyperparameters)

    def __call__(self, z: Array) -> Array:
        """(N, D) latents → (N, A) logits."""
        return self.linear((z - self.mean[...]) / self.scale[...])


def default_probe_config(**overrides: object) -> TrainConfig:
    """The probe's training settings: Adam 1e-3, batch 1024, 100 epochs, patience 5."""
    settings = dict(learning_rate=1e-3, batch_size=1024, max_epochs=100, patience=5)
    return TrainConfig(**(settings | overrides))


def fit_linear_probe(
    z: ArrayLike,
    attributes: ArrayLike,
    *,
    key: Key,
    config: TrainConfig | None = None,
    validation: tuple[ArrayLike, ArrayLike] | None = None,
    l2: float = 1e-4,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
) -> tuple[LinearProbe, History]:
    """Fits ``LinearProbe``: mean binary cross-entropy over attributes plus ``l2/2 ‖W‖²``.

    μ and s are the training latents' mean and standard deviation (s floored at 1e-6). With
    ``validation`` the epoch of lowest validation cross-entropy is kept.

    Args:
      z: (N, D) training latents.
      attributes: (N, A) {0, 1} floats.
      key: PRNG key of the shuffling.
      config: optimisation settings (default ``default_probe_config()``).
      validation: optional ``(z, attributes)``.
      l2: weight of the L2 penalty on W (≥ 0).
      progress: show a progress bar.
      checkpoint_dir: folder for the resumable state and the best model.

    Returns:
      ``(probe, history)``.

    Raises:
      ValueError: bad shapes, non-finite latents, attributes not 0 / 1, a negative ``l2``.
    """
    where = "fit_linear_probe"
    config = default_probe_config() if config is None else config
    key = checks.check_key(key, where=where)
    z = np.asarray(z)
    width = z.shape[1] if z.ndim == 2 else 0
    z = np.asarray(checks.as_float_matrix(z, name="z", width=width, where=where, width_name="D"))
    attributes = _check_attributes(attributes, n=z.shape[0], width=None, name="attributes", where=where)
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not 0 <= l2 < math.inf:
        raise ValueError(f"{where}: `l2` must be a finite number >= 0; got {l2!r}.")
    held_out = None
    if validation is not None:
        val_z = checks.as_float_matrix(validation[0], name="validation[0]", width=width, where=where, width_name="D")
        val_attributes = _check_attributes(validation[1], n=val_z.shape[0], width=attributes.shape[1],
                                           name="validation[1]", where=where)
        if val_z.shape[0]:
            held_out = ((val_z, jnp.asarray(val_attributes)), _row_cross_entropy)
    probe = LinearProbe(width, attributes.shape[1], rngs=nnx.Rngs(0))
    probe.mean[...] = jnp.asarray(z.mean(axis=0))
    probe.scale[...] = jnp.asarray(np.maximum(z.std(axis=0), 1e-6))
    check_training_setup(probe, config, z.shape[0], where=where, name="z")

    def loss(model: LinearProbe, batch: tuple[Array, Array], key: Key) -> Scalar:
        return _batch_cross_entropy(model, batch, key) + 0.5 * l2 * jnp.sum(model.linear.kernel[...] ** 2)

    history = fit_model(probe, loss, (jnp.asarray(z), jnp.asarray(attributes)), key=key, config=config,
                        validation=held_out, name=where, progress=progress, checkpoint_dir=checkpoint_dir)
    return probe, history


def _row_cross_entropy(model: nnx.Module, batch: tuple[Array, Array]) -> Array:
    z, y = batch
    return jnp.mean(optax.sigmoid_binary_cross_entropy(model(z), y), axis=1)


def probe_probabilities(probe: LinearProbe, z: ArrayLike, *, batch_size: int = 8192) -> np.ndarray:
    """``σ(logits)`` of the probe, (N, A) float32 on the host.

    Raises:
      ValueError: ``z`` not (N, D) finite floats, a bad ``batch_size``.
    """
    where = "probe_probabilities"
    z = checks.as_float_matrix(z, name="z", width=probe.features, where=where, width_name="features")
    batch_size = checks.positive_int(batch_size, name="batch_size", where=where)
    graphdef, state = nnx.split(probe)
    state = mesh.replicate(state)
    return np.asarray(map_in_chunks(lambda c: _probabilities(graphdef, state, c), z, batch_size=batch_size))
