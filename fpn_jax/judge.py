"""An independent CNN classifier that judges conditionally generated images.

To score conditional generation, decode samples ``x = D(T(u | y))`` for every class ``y``
and ask a classifier that never saw the autoencoder or the flow which class each image
shows: the *generation accuracy* is ``1/N Σ_n [judge(x_n) = y_n]``.

``DigitCNN`` is a small LeNet-style network, [conv 3×3 → ReLU → max-pool 2×2] × 2 →
dense → ReLU → dense, for NHWC images with values in [0, 1]. ``train_judge`` minimises
the mean softmax cross-entropy with Adam (cosine-decayed step size); like ``fpn_jax.fit``,
it splits the model once and runs each epoch as one jit-compiled ``lax.scan`` over shuffled
mini-batches. Trained on 50 000 MNIST images for the default 3 epochs it reaches 99.0% test
accuracy in 30 s on 2 CPU cores (75 s when other jobs share them).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from fpn_jax import _checks, checkpoint, parallel
from fpn_jax._batching import map_in_chunks

Array = jax.Array


class Conv3x3(nnx.Module):
    """A 3×3 'SAME' convolution, ``y[n,i,j] = Σ_{a,b,c} x[n,i+a-1,j+b-1,c] K[a,b,c] + bias``.

    Computed as one matmul of the 9 shifted copies of the zero-padded input with the kernel
    reshaped to (9·C_in, C_out): XLA:CPU runs ``lax.conv`` inside a ``lax.scan`` (as in
    ``train_judge``) about ten times slower than outside it, while this form is equally fast
    in both places (and on accelerators).

    Args:
      in_features: C_in.
      out_features: C_out.
      rngs: initialisation randomness (LeCun-normal kernel, zero bias, as ``nnx.Conv``).
    """

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (3, 3, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))

    def __call__(self, x: Array) -> Array:
        """(N, H, W, C_in) → (N, H, W, C_out)."""
        h, w = x.shape[1:3]
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        patches = jnp.concatenate([padded[:, a : a + h, b : b + w] for a in range(3) for b in range(3)], axis=-1)
        kernel = self.kernel[...]
        return patches @ kernel.reshape(-1, kernel.shape[-1]) + self.bias[...]


def _max_pool_2x2(x: Array) -> Array:
    """(N, H, W, C) → (N, ⌊H/2⌋, ⌊W/2⌋, C), the maximum of each 2×2 block."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@checkpoint.register("digit_cnn")
class DigitCNN(nnx.Module):
    """``logits = W₄ relu(W₃ flat(pool(relu(conv₂(pool(relu(conv₁(x)))))))) + b₄``.

    3×3 convolutions (``Conv3x3``), 2×2 max-pooling, a hidden dense layer; (N, H, W, C)
    images in [0, 1] → (N, K) logits.

    Args:
      image_shape: (H, W, C) of the input images; H, W >= 4 (two 2×2 poolings).
      num_classes: K, the number of logits.
      channels: output channels of the two convolutions.
      hidden_features: width of the hidden dense layer.
      rngs: initialisation randomness.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (28, 28, 1),
        num_classes: int = 10,
        *,
        channels: tuple[int, int] = (16, 32),
        hidden_features: int = 128,
        rngs: nnx.Rngs,
    ):
        where = "DigitCNN"
        if len(image_shape) != 3 or min(image_shape[:2]) < 4 or image_shape[2] < 1:
            raise ValueError(
                f"{where}: `image_shape` must be (H, W, C) with H, W >= 4 and C >= 1; got {image_shape!r}."
            )
        self.image_shape = tuple(_checks.positive_int(s, name="image_shape", where=where) for s in image_shape)
        self.num_classes = _checks.positive_int(num_classes, name="num_classes", where=where)
        c1, c2 = (_checks.positive_int(c, name="channels", where=where) for c in channels)
        hidden_features = _checks.positive_int(hidden_features, name="hidden_features", where=where)
        self.hyperparameters = _checks.frozen(dict(
            image_shape=self.image_shape, num_classes=self.num_classes, channels=(c1, c2),
            hidden_features=hidden_features,
        ))
        h, w, c = self.image_shape
        self.conv1 = Conv3x3(c, c1, rngs=rngs)
        self.conv2 = Conv3x3(c1, c2, rngs=rngs)
        self.hidden = nnx.Linear((h // 4) * (w // 4) * c2, hidden_features, rngs=rngs)
        self.out = nnx.Linear(hidden_features, self.num_classes, rngs=rngs)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor's arguments (what a checkpoint stores to rebuild the model)."""
        return dict(self.hyperparameters)

    def __call__(self, x: Array) -> Array:
        """(N, H, W, C) images in [0, 1] → (N, K) logits."""
        x = _max_pool_2x2(jax.nn.relu(self.conv1(x)))
        x = _max_pool_2x2(jax.nn.relu(self.conv2(x)))
        x = jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1)))
        return self.out(x)


@dataclasses.dataclass
class JudgeInfo:
    """Per-epoch training loss and accuracy (running means over the epoch's batches),
    validation accuracy (if any), the epoch whose parameters were kept, and wall time."""

    train_loss: list[float]
    train_accuracy: list[float]
    val_accuracy: list[float]
    best_epoch: int
    seconds: float


def _check_images(images: Any, *, name: str, where: str, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """(N, H, W, C) floating images with values in [0, 1], as float32 numpy."""
    images = np.asarray(images)
    expected = "(N, H, W, C)" if image_shape is None else f"(N, {', '.join(map(str, image_shape))})"
    if images.ndim != 4:
        hint = " Add a channel axis: images[..., None]." if images.ndim == 3 else ""
        raise ValueError(
            f"{where}: argument `{name}` must be a 4-D NHWC array of shape {expected}; "
            f"got shape {images.shape}.{hint}"
        )
    if image_shape is not None and images.shape[1:] != tuple(image_shape):
        raise ValueError(f"{where}: argument `{name}` must have shape {expected}; got {images.shape}.")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            f"{where}: argument `{name}` must be a floating array with values in [0, 1]; got dtype "
            f"{images.dtype}." + (" Divide uint8 pixels by 255." if images.dtype == np.uint8 else "")
        )
    if images.size:
        low, high = float(images.min()), float(images.max())
        if not (0.0 <= low and high <= 1.0):  # also catches NaN
            raise ValueError(
                f"{where}: argument `{name}` must have values in [0, 1]; got values in [{low}, {high}]."
                " Clip decoder outputs with np.clip(x, 0, 1)."
            )
    return images.astype(np.float32, copy=False)


def _check_labels(labels: Any, *, n: int, num_classes: int, name: str, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{where}: argument `{name}` must be a 1-D integer array of shape ({n},) (one label per "
            f"image); got shape {labels.shape} and dtype {labels.dtype}."
        )
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{where}: argument `{name}` must lie in [0, {num_classes}) (num_classes={num_classes}); "
            f"got values in [{labels.min()}, {labels.max()}]."
        )
    return labels.astype(np.int32, copy=False)


def train_judge(
    images: Any,
    labels: Any,
    *,
    key: Array,
    num_classes: int = 10,
    epochs: int = 3,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    validation: tuple[Any, Any] | None = None,
    progress: bool = True,
) -> tuple[DigitCNN, JudgeInfo]:
    """Trains a fresh ``DigitCNN`` on labelled images by minimising the cross-entropy.

    Each epoch visits ``ceil(N / batch_size)`` batches of a fresh permutation (wrapping
    around to fill the last one); the step size decays from ``learning_rate`` to 0 along a
    cosine over all steps.

    Args:
      images: (N, H, W, C) float images with values in [0, 1].
      labels: (N,) integer labels in ``[0, num_classes)``.
      key: PRNG key for initialisation and shuffling; the same key gives the same model.
      num_classes: K.
      epochs: passes over the data.
      batch_size: images per Adam step.
      learning_rate: initial Adam step size.
      validation: optional ``(images_val, labels_val)``; then the epoch with the best
        validation accuracy is kept, else the last one.
      progress: show a progress bar.

    Returns:
      ``(model, info)``: the trained classifier and its ``JudgeInfo``.

    Raises:
      ValueError: bad shapes, dtypes, pixel values outside [0, 1] or labels out of range.
    """
    where = "train_judge"
    start = time.perf_counter()
    num_classes = _checks.positive_int(num_classes, name="num_classes", where=where)
    epochs = _checks.positive_int(epochs, name="epochs", where=where)
    batch_size = _checks.positive_int(batch_size, name="batch_size", where=where)
    if not learning_rate > 0:
        raise ValueError(f"{where}: `learning_rate` must be > 0; got {learning_rate!r}.")
    key = _checks.check_key(key, where=where)
    images = _check_images(images, name="images", where=where)
    n = images.shape[0]
    if n == 0:
        raise ValueError(f"{where}: argument `images` is empty.")
    labels = _check_labels(labels, n=n, num_classes=num_classes, name="labels", where=where)
    if validation is not None:
        val_images = _check_images(validation[0], name="validation[0]", where=where, image_shape=images.shape[1:])
        val_labels = _check_labels(
            validation[1], n=val_images.shape[0], num_classes=num_classes, name="validation[1]", where=where
        )

    init_key, key = jax.random.split(key)
    model = DigitCNN(images.shape[1:], num_classes, rngs=nnx.Rngs(params=init_key))
    graphdef, params = nnx.split(model, nnx.Param)
    batch = min(batch_size, n)
    steps = math.ceil(n / batch)
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, epochs * steps))
    opt_state = optimizer.init(params)
    x, y = jnp.asarray(images), jnp.asarray(labels)

    @jax.jit
    def train_epoch(params, opt_state, x, y, key):
        order = jnp.resize(jax.random.permutation(key, n), (steps, batch))

        def step(carry, rows):
            params, opt_state = carry

            def loss(params):
                logits = nnx.merge(graphdef, params)(x[rows])
                ce = optax.softmax_cross_entropy_with_integer_labels(logits, y[rows]).mean()
                return ce, jnp.mean(jnp.argmax(logits, -1) == y[rows])

            (ce, acc), grads = jax.value_and_grad(loss, has_aux=True)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), (ce, acc)

        carry, (ce, acc) = jax.lax.scan(step, (params, opt_state), order)
        return carry, jnp.mean(ce), jnp.mean(acc)

    info = JudgeInfo(train_loss=[], train_accuracy=[], val_accuracy=[], best_epoch=-1, seconds=0.0)
    best, best_acc = params, -1.0
    bar = tqdm(range(epochs), desc="train_judge", disable=not progress, unit="epoch")
    for epoch in bar:
        key, epoch_key = jax.random.split(key)
        (params, opt_state), ce, acc = train_epoch(params, opt_state, x, y, epoch_key)
        info.train_loss.append(float(ce))
        info.train_accuracy.append(float(acc))
        postfix = {"loss": f"{float(ce):.4f}", "acc": f"{float(acc):.4f}"}
        if validation is None:
            best, info.best_epoch = params, epoch
        else:
            nnx.update(model, params)
            val_acc = float(np.mean(np.asarray(predict(model, val_images)) == val_labels))
            info.val_accuracy.append(val_acc)
            postfix["val_acc"] = f"{val_acc:.4f}"
            if val_acc > best_acc:
                best, best_acc, info.best_epoch = params, val_acc, epoch
        bar.set_postfix(postfix)
    bar.close()
    nnx.update(model, best)
    info.seconds = time.perf_counter() - start
    return model, info


@functools.partial(jax.jit, static_argnums=0)
def _predict(graphdef: nnx.GraphDef, state: nnx.State, x: Array) -> Array:
    return jnp.argmax(nnx.merge(graphdef, state)(x), axis=-1).astype(jnp.int32)


def predict(model: DigitCNN, images: Any, *, batch_size: int = 1000) -> Array:
    """The judge's class for each image, ``argmax_k logits_k(x_n)``.

    Args:
      model: a trained ``DigitCNN``.
      images: (N, H, W, C) float images with values in [0, 1], (H, W, C) = ``model.image_shape``.
      batch_size: images per compiled call (bounds memory).

    Returns:
      (N,) int32 predicted labels.
    """
    where = "predict"
    images = _check_images(images, name="images", where=where, image_shape=model.image_shape)
    batch_size = _checks.positive_int(batch_size, name="batch_size", where=where)
    graphdef, state = nnx.split(model)
    state = parallel.replicate(state)
    return map_in_chunks(lambda chunk: _predict(graphdef, state, chunk), jnp.asarray(images), batch_size=batch_size)
