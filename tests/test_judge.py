"""The CNN judge on synthetic seven-segment digits (no data files needed) and on MNIST if present."""

from __future__ import annotations

import gzip
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fpn_jax.judge import Conv3x3, DigitCNN, predict, train_judge

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


def test_digit_cnn_shapes_for_other_image_sizes():
    model = DigitCNN((13, 10, 3), 4, rngs=nnx.Rngs(0))
    assert model(jnp.zeros((2, 13, 10, 3))).shape == (2, 4)
    with pytest.raises(ValueError, match="`image_shape`"):
        DigitCNN((3, 28, 1), rngs=nnx.Rngs(0))


def test_train_judge_learns_and_keeps_the_best_validation_epoch():
    x, y = seven_segment(2000)
    x_test, y_test = seven_segment(500, seed=1)
    model, info = train_judge(
        x, y, key=jax.random.key(0), epochs=2, batch_size=64, validation=(x_test[:200], y_test[:200]), progress=False
    )
    assert len(info.train_loss) == len(info.val_accuracy) == 2 and info.best_epoch in (0, 1)
    assert info.val_accuracy[info.best_epoch] == max(info.val_accuracy)
    pred = predict(model, x_test, batch_size=128)
    assert pred.shape == (500,) and pred.dtype == jnp.int32
    assert float(jnp.mean(pred == y_test)) > 0.7  # chance: 0.1


@pytest.mark.skipif(not MNIST.is_dir(), reason="MNIST IDX files not found")
def test_train_judge_on_a_small_mnist_subset():
    def read(name, offset):
        with gzip.open(MNIST / name) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    x = read("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1)[:3000].astype(np.float32) / 255
    y = read("train-labels-idx1-ubyte.gz", 8)[:3000].astype(np.int32)
    model, _ = train_judge(x[:2000], y[:2000], key=jax.random.key(0), epochs=1, batch_size=64, progress=False)
    assert float(jnp.mean(predict(model, x[2000:]) == y[2000:])) > 0.8


def test_same_key_same_model_and_predictions():
    x, y = seven_segment(256, seed=2)
    runs = [train_judge(x, y, key=jax.random.key(3), epochs=1, batch_size=64, progress=False)[0] for _ in range(2)]
    jax.tree.map(np.testing.assert_array_equal, nnx.state(runs[0], nnx.Param), nnx.state(runs[1], nnx.Param))
    np.testing.assert_array_equal(predict(runs[0], x), predict(runs[1], x))


def test_bad_inputs_name_the_argument():
    x, y = seven_segment(8)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"`images`.*4-D.*images\[\.\.\., None\]"):
        train_judge(x[..., 0], y, key=key)
    with pytest.raises(ValueError, match="`images`.*Divide uint8 pixels by 255"):
        train_judge((x * 255).astype(np.uint8), y, key=key)
    with pytest.raises(ValueError, match=r"`images` must have values in \[0, 1\]"):
        train_judge(x * 2, y, key=key)
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 10\)"):
        train_judge(x, y + 10, key=key)
    with pytest.raises(ValueError, match=r"`labels` must be a 1-D integer array of shape \(8,\)"):
        train_judge(x, y[:-1], key=key)
    with pytest.raises(ValueError, match=r"`validation\[0\]` must have shape \(N, 28, 28, 1\)"):
        train_judge(x, y, key=key, validation=(x[:, :20], y))
    with pytest.raises(ValueError, match="`key`"):
        train_judge(x, y, key=0)
    model = DigitCNN(rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"predict: argument `images` must have shape \(N, 28, 28, 1\)"):
        predict(model, np.zeros((2, 32, 32, 1), np.float32))
