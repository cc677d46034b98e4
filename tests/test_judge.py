"""The CNN judge on synthetic seven-segment digits (no data files needed) and on MNIST if present."""

from __future__ import annotations

import gzip
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturb
from flax import nnx

from fpn_jax import checkpoint
from fpn_jax.evaluation.judge import DigitCNN, default_config, fit_judge, predict
from fpn_jax.nn import Conv3x3
from fpn_jax.train import TrainConfig

SEGMENTS = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg"]
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def seven_segment(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28, 1) images in [0, 1] of digits drawn as 7 segments at random places, noisy."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = np.zeros((n, 28, 28), np.float32)
    for i, k in enumerate(labels):
        top, left = rng.integers(2, 9), rng.integers(2, 15)
        h, w = 9, 10  # half height, width
        boxes = {
            "a": (top, top + 2, left, left + w), "g": (top + h, top + h + 2, left, left + w),
            "d": (top + 2 * h, top + 2 * h + 2, left, left + w), "f": (top, top + h + 2, left, left + 2),
            "b": (top, top + h + 2, left + w - 2, left + w), "e": (top + h, top + 2 * h + 2, left, left + 2),
            "c": (top + h, top + 2 * h + 2, left + w - 2, left + w),
        }
        for s in SEGMENTS[k]:
            r0, r1, c0, c1 = boxes[s]
            images[i, r0:r1, c0:c1] = 1.0
    images += 0.15 * rng.normal(size=images.shape).astype(np.float32)
    return np.clip(images, 0.0, 1.0)[..., None], labels.astype(np.int32)


def test_conv3x3_is_a_same_convolution():
    conv = Conv3x3(3, 5, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 7, 6, 3))
    expected = jax.lax.conv_general_dilated(
        x, conv.kernel[...], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
    ) + conv.bias[...]
    np.testing.assert_allclose(conv(x), expected, atol=1e-5)


def _reference_logits(model: DigitCNN, x: np.ndarray) -> np.ndarray:
    """The CNN written out in float64 numpy: [conv 3x3 'same' -> relu -> 2x2 max-pool] x 2 -> dense -> relu -> dense."""

    def conv(x, kernel, bias):  # y[n,i,j] = sum_{a,b,c} pad(x)[n,i+a,j+b,c] K[a,b,c] + bias
        n, h, w, _ = x.shape
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        y = np.zeros((n, h, w, kernel.shape[-1]))
        for a in range(3):
            for b in range(3):
                y += padded[:, a : a + h, b : b + w] @ kernel[a, b]
        return y + bias

    def pool(x):  # the maximum of each 2x2 block; an odd last row / column is dropped
        n, h, w, c = x.shape
        out = np.full((n, h // 2, w // 2, c), -np.inf)
        for i in range(h // 2):
            for j in range(w // 2):
                out[:, i, j] = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].max(axis=(1, 2))
        return out

    p = jax.tree.map(lambda v: np.asarray(v, np.float64), nnx.state(model, nnx.Param))
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    h = pool(relu(conv(np.asarray(x, np.float64), p["conv1"]["kernel"][...], p["conv1"]["bias"][...])))
    h = pool(relu(conv(h, p["conv2"]["kernel"][...], p["conv2"]["bias"][...])))
    h = relu(h.reshape(h.shape[0], -1) @ p["hidden"]["kernel"][...] + p["hidden"]["bias"][...])
    return h @ p["out"]["kernel"][...] + p["out"]["bias"][...]


@pytest.mark.parametrize("image_shape", [(28, 28, 1), (13, 10, 3)])
def test_digit_cnn_logits_match_a_reference_computation(image_shape):
    num_classes = 4
    model = DigitCNN(image_shape, num_classes, channels=(3, 5), hidden_features=7, rngs=nnx.Rngs(0))
    perturb(model, jax.random.key(1), scale=0.3)  # non-zero biases
    x = jax.random.uniform(jax.random.key(2), (6, *image_shape))
    logits = model(x)
    assert logits.shape == (6, num_classes) and logits.dtype == jnp.float32
    expected = _reference_logits(model, np.asarray(x))
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4)
    # predict is the argmax of those logits, whatever the chunk size.
    x_pred = jnp.clip(x, 0.0, 1.0)
    for batch_size in (1, 4, 1000):
        np.testing.assert_array_equal(predict(model, x_pred, batch_size=batch_size), expected.argmax(axis=-1))
    with pytest.raises(ValueError, match="`image_shape`"):
        DigitCNN((3, 28, 1), rngs=nnx.Rngs(0))


def test_default_config_is_the_judges_settings():
    assert default_config() == TrainConfig(
        learning_rate=2e-3, batch_size=128, max_epochs=3, patience=None, schedule="cosine"
    )
    assert default_config(max_epochs=1, batch_size=64) == TrainConfig(
        learning_rate=2e-3, batch_size=64, max_epochs=1, patience=None, schedule="cosine"
    )


def test_fit_judge_learns_and_keeps_the_best_validation_epoch():
    x, y = seven_segment(2000)
    x_test, y_test = seven_segment(500, seed=1)
    x_val, y_val = x_test[:200], y_test[:200]
    model, history = fit_judge(
        x, y, key=jax.random.key(0), config=default_config(max_epochs=3, batch_size=64),
        validation=(x_val, y_val), progress=False,
    )
    assert len(history.train_loss) == len(history.val_loss) == 3
    assert all(np.isfinite(history.train_loss)) and history.train_loss[-1] < history.train_loss[0]
    # val_loss is the validation error rate: a multiple of 1/200 in [0, 1].
    errors = np.asarray(history.val_loss) * len(y_val)
    np.testing.assert_allclose(errors, np.round(errors), atol=1e-3)
    assert all(0.0 <= v <= 1.0 for v in history.val_loss)
    # The epoch kept is the one with the lowest error, and the model returned is that epoch's.
    assert history.best_epoch == int(np.argmin(history.val_loss))
    val_accuracy = float(np.mean(np.asarray(predict(model, x_val)) == y_val))
    assert val_accuracy == pytest.approx(1.0 - history.val_loss[history.best_epoch], abs=1e-6)
    pred = predict(model, x_test, batch_size=128)
    assert pred.shape == (500,) and pred.dtype == jnp.int32
    assert float(jnp.mean(pred == y_test)) > 0.7  # chance: 0.1


def test_fit_judge_keeps_an_earlier_epoch_when_validation_gets_worse(tmp_path):
    """Validation labels shifted by one: the better the judge learns, the higher its validation error.

    So the epoch kept is an early one, not the last, and the model returned (and written to
    ``checkpoint_dir/best``) is that epoch's.
    """
    x, y = seven_segment(1000, seed=4)
    x_val, y_val = seven_segment(100, seed=5)
    y_val = (y_val + 1) % 10
    model, history = fit_judge(
        x, y, key=jax.random.key(1), config=default_config(max_epochs=4, batch_size=32),
        validation=(x_val, y_val), progress=False, checkpoint_dir=tmp_path / "judge",
    )
    assert len(history.val_loss) == 4 and history.train_loss[-1] < history.train_loss[0]
    assert history.best_epoch == int(np.argmin(history.val_loss)) < 3
    assert history.val_loss[history.best_epoch] < history.val_loss[-1] - 0.03  # a margin of > 3 images
    val_accuracy = float(np.mean(np.asarray(predict(model, x_val)) == y_val))
    assert val_accuracy == pytest.approx(1.0 - history.val_loss[history.best_epoch], abs=1e-6)
    best = checkpoint.load(tmp_path / "judge" / "best")
    assert isinstance(best, DigitCNN) and best.config == model.config
    assert checkpoint.read_meta(tmp_path / "judge" / "best")["extra"]["epoch"] == history.best_epoch
    jax.tree.map(np.testing.assert_array_equal, nnx.state(best, nnx.Param), nnx.state(model, nnx.Param))


@pytest.mark.skipif(not MNIST.is_dir(), reason="MNIST IDX files not found")
def test_fit_judge_on_a_small_mnist_subset():
    def read(name, offset):
        with gzip.open(MNIST / name) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    x = read("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1)[:3000].astype(np.float32) / 255
    y = read("train-labels-idx1-ubyte.gz", 8)[:3000].astype(np.int32)
    model, history = fit_judge(
        x[:2000], y[:2000], key=jax.random.key(0), config=default_config(max_epochs=1, batch_size=64), progress=False
    )
    assert len(history.train_loss) == 1 and history.val_loss == [] and history.best_epoch == 0
    assert float(jnp.mean(predict(model, x[2000:]) == y[2000:])) > 0.8


def test_same_key_same_model_and_predictions():
    x, y = seven_segment(256, seed=2)
    config = default_config(max_epochs=1, batch_size=64)
    runs = [fit_judge(x, y, key=jax.random.key(3), config=config, progress=False)[0] for _ in range(2)]
    jax.tree.map(np.testing.assert_array_equal, nnx.state(runs[0], nnx.Param), nnx.state(runs[1], nnx.Param))
    np.testing.assert_array_equal(predict(runs[0], x), predict(runs[1], x))


def test_bad_inputs_name_the_argument():
    x, y = seven_segment(8)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"`images`.*4-D.*images\[\.\.\., None\]"):
        fit_judge(x[..., 0], y, key=key)
    with pytest.raises(ValueError, match="`images`.*Divide uint8 pixels by 255"):
        fit_judge((x * 255).astype(np.uint8), y, key=key)
    with pytest.raises(ValueError, match=r"`images` must have values in \[0, 1\]"):
        fit_judge(x * 2, y, key=key)
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 10\)"):
        fit_judge(x, y + 10, key=key)
    with pytest.raises(ValueError, match=r"`labels` must be a 1-D integer array of shape \(8,\)"):
        fit_judge(x, y[:-1], key=key)
    with pytest.raises(ValueError, match=r"`validation\[0\]` must have shape \(N, 28, 28, 1\)"):
        fit_judge(x, y, key=key, validation=(x[:, :20], y))
    with pytest.raises(ValueError, match="`key`"):
        fit_judge(x, y, key=0)
    with pytest.raises(TypeError, match="argument `config` must be a fpn_jax.TrainConfig; got dict"):
        fit_judge(x, y, key=key, config={"max_epochs": 1})
    model = DigitCNN(rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"predict: argument `images` must have shape \(N, 28, 28, 1\)"):
        predict(model, np.zeros((2, 32, 32, 1), np.float32))
