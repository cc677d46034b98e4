"""Morpho-MNIST measurements (fpn_jax.data.morpho) on drawn images of known size, thickness and slant.

The vectorised measurement is also checked against a plain image-by-image transcription of
Morpho-MNIST's ``measure_image`` (dccastro/Morpho-MNIST, morphomnist/morpho.py), written below.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage import morphology, transform

from fpn_jax.data import Dataset, Split, morpho


def bar(width: int, height: int = 20, shear: float = 0.0, side: int = 28) -> np.ndarray:
    """A white bar ``width`` px wide, ``height`` tall, centred, its rows shifted by ``shear`` px per row up."""
    image = np.zeros((side, side))
    top = (side - height) // 2
    for i in range(height):
        row = top + i
        shift = shear * ((height - 1) / 2 - i)  # the top moves right for shear > 0
        left = (side - width) / 2 + shift
        columns = np.arange(side) + 0.5
        image[row] = np.clip(np.minimum(columns + 0.5, left + width) - np.maximum(columns - 0.5, left), 0, 1)
    return image


def rectangle(width: int, height: int, side: int = 28) -> np.ndarray:
    image = np.zeros((side, side))
    top, left = (side - height) // 2, (side - width) // 2
    image[top: top + height, left: left + width] = 1.0
    return image


def reference(img: np.ndarray, threshold: float = 0.5, scale: int = 4, bound_frac: float = 0.02) -> dict:
    """Morpho-MNIST's measure_image, one image at a time, written out plainly (floats in [0, 1])."""
    hires = np.clip(transform.pyramid_expand(img, upscale=scale, order=3), 0, 1)
    binary = hires >= hires.min() + (hires.max() - hires.min()) * threshold
    skeleton, distance = morphology.medial_axis(binary, return_distance=True, rng=0)
    mask = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [np.sqrt(2.0), 1.0, np.sqrt(2.0)]])
    s = skeleton.astype(float)
    length = np.einsum("ij,ij->", ndimage.correlate(s, mask, mode="constant"), s) / scale
    x = np.arange(hires.shape[1])[None, :]
    y = np.arange(hires.shape[0])[:, None]
    m00 = hires.sum()
    m10, m01 = (x * hires).sum() / m00, (y * hires).sum() / m00
    u11 = (x * y * hires).sum() / m00 - m10 * m01
    u02 = (y**2 * hires).sum() / m00 - m01**2
    shear = u11 / u02
    locations = np.arange(hires.shape[1])
    horizontal = np.array([((x + 0.5 < t + shear * (y - m01)) * hires).sum() for t in locations]) / m00
    vertical = np.array([((y < t) * hires).sum() for t in range(hires.shape[0])]) / m00
    f = bound_frac / 2
    left, right = np.interp([f, 1 - f], horizontal, locations)
    top, bottom = np.interp([f, 1 - f], vertical, np.arange(len(vertical)))
    return {"area": binary.sum() / scale**2, "length": length,
            "thickness": 2 * np.mean(distance[skeleton]) / scale, "slant": np.arctan(-shear),
            "width": (right - left) / scale, "height": (bottom - top) / scale}


def shapes() -> np.ndarray:
    images = [bar(3), bar(5, shear=0.3), rectangle(12, 8), bar(2, 16, shear=-0.4)]
    ring = np.zeros((28, 28))
    yy, xx = np.mgrid[:28, :28]
    r = np.hypot(yy - 13.5, xx - 13.5)
    ring[(r > 6) & (r < 9)] = 1.0
    images.append(ring)
    images.append(ndimage.gaussian_filter(bar(4, shear=0.2), 0.8))
    return np.stack(images)


def test_matches_the_plain_transcription_of_morpho_mnist():
    images = shapes()
    got = morpho.measure(images, progress=False)
    for i, image in enumerate(images):
        want = reference(image)
        for name in ("area", "slant", "width", "height"):
            np.testing.assert_allclose(got[name][i], want[name], rtol=1e-9, atol=1e-9, err_msg=f"{name}, image {i}")
        # the skeleton is seeded per mosaic: ties may break differently than one image at a time
        for name in ("length", "thickness"):
            np.testing.assert_allclose(got[name][i], want[name], rtol=0.05, err_msg=f"{name}, image {i}")


def test_bars_of_known_thickness_and_size():
    widths = [2, 3, 4, 5, 6]
    m = morpho.measure(np.stack([bar(w) for w in widths]), progress=False)
    assert np.all(np.diff(m["thickness"]) > 0.5)  # one pixel wider: about one pixel thicker
    np.testing.assert_allclose(m["thickness"], widths, atol=1.0)
    np.testing.assert_allclose(m["height"], 20, atol=1.0)
    # the width of the grey-level mass: the upsampling's smoothing adds about a pixel to thin bars
    assert np.all(np.diff(m["width"]) > 0) and np.all((m["width"] - widths > 0.5) & (m["width"] - widths < 2.5))
    np.testing.assert_allclose(m["slant"], 0, atol=1e-6)
    np.testing.assert_allclose(m["area"], np.multiply(widths, 20), rtol=0.15)
    # the medial axis of a bar: its centre line plus a branch into each corner
    assert np.all((m["length"] >= 20 - np.asarray(widths)) & (m["length"] <= 20 + 2 * np.asarray(widths)))


def test_rectangles_width_and_height():
    m = morpho.measure(np.stack([rectangle(12, 8), rectangle(6, 18), rectangle(16, 16)]), progress=False)
    np.testing.assert_allclose(m["width"], [12, 6, 16], atol=1.0)
    np.testing.assert_allclose(m["height"], [8, 18, 16], atol=1.0)
    np.testing.assert_allclose(m["area"], [96, 108, 256], rtol=0.1)


def test_shear_changes_slant_with_the_right_sign():
    shears = np.array([-0.5, -0.25, 0.0, 0.25, 0.5])
    m = morpho.measure(np.stack([bar(4, shear=s) for s in shears]), progress=False)
    assert np.all(np.diff(m["slant"]) > 0)  # leaning further right: larger slant
    assert np.all(np.sign(m["slant"][[0, 1, 3, 4]]) == np.sign(shears[[0, 1, 3, 4]]))
    np.testing.assert_allclose(m["slant"], np.arctan(shears), atol=0.05)
    # de-slanted: the sheared bars keep their width and height
    np.testing.assert_allclose(m["width"], m["width"][2], atol=0.6)
    np.testing.assert_allclose(m["height"], 20, atol=1.0)


def test_shapes_batches_and_channel_axis_agree():
    images = shapes()
    one = morpho.measure(images, batch_size=1, progress=False)
    many = morpho.measure(images[..., None], batch_size=4, progress=False)
    for name in morpho.MEASUREMENTS:
        # medial_axis breaks ties at random: the rectangle's skeleton branches differently per mosaic
        tolerance = {"length": 0.15, "thickness": 0.05}.get(name, 1e-9)
        np.testing.assert_allclose(one[name], many[name], rtol=tolerance, atol=1e-9, err_msg=name)


def test_blank_images_and_empty_input():
    m = morpho.measure(np.stack([np.zeros((28, 28)), np.full((28, 28), 0.3), bar(3)]), progress=False)
    for name in morpho.MEASUREMENTS:
        assert np.isnan(m[name][:2]).all() and np.isfinite(m[name][2])
    empty = morpho.measure(np.zeros((0, 28, 28)), progress=False)
    assert all(v.shape == (0,) for v in empty.values())


@pytest.mark.parametrize(
    ("images", "options", "message"),
    [
        (np.zeros((2, 28)), {}, r"\(N, H, W\)"),
        (np.zeros((2, 28, 28, 3)), {}, r"\(N, H, W, 1\)"),
        (np.zeros((2, 28, 28), bool), {}, "booleans"),
        (np.full((2, 28, 28), np.nan), {}, "image 0 of 2"),
        (np.zeros((2, 28, 28)), {"scale": 0}, "scale"),
        (np.zeros((2, 28, 28)), {"threshold": 1.5}, "threshold"),
        (np.zeros((2, 28, 28)), {"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_are_named(images, options, message):
    with pytest.raises(ValueError, match=message):
        morpho.measure(images, progress=False, **options)


def test_binarize_at_medians():
    measured = {"thickness": np.array([1.0, 2.0, 3.0, 4.0, np.nan]), "slant": np.array([-0.2, 0.1, 0.0, 0.3, 0.0]),
                "width": np.array([10.0, 12.0, 14.0, 16.0, 18.0])}
    thresholds = morpho.medians(measured, ("thick", "slanted", "wide"))
    assert thresholds == {"thick": 2.5, "slanted": 0.0, "wide": 14.0}
    y = morpho.binarize(measured, thresholds)
    np.testing.assert_array_equal(y, [[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 1]])  # NaN: 0
    assert y.dtype == np.float32
    np.testing.assert_array_equal(morpho.binarize(measured, thresholds, ("wide",)), y[:, 2:])
    with pytest.raises(ValueError, match="unknown"):
        morpho.medians(measured, ("bold",))
    with pytest.raises(ValueError, match="no 'height'"):
        morpho.medians(measured, ("tall",))
    with pytest.raises(ValueError, match="no threshold"):
        morpho.binarize(measured, thresholds, ("thick", "tall"))


def _tiny_dataset() -> Dataset:
    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        widths = rng.integers(2, 7, n)
        shears = rng.uniform(-0.5, 0.5, n)
        images = np.stack([bar(int(w), shear=s) for w, s in zip(widths, shears, strict=True)])[..., None]
        labels = rng.integers(0, 10, n).astype(np.int32)
        return Split.from_labels(images.astype(np.float32), labels, 10)

    return Dataset(train=split(12), validation=split(4), test=split(5), num_classes=10)


def test_morpho_dataset_contexts_and_kept_measurements(tmp_path, monkeypatch):
    data = _tiny_dataset()
    measured = morpho.measure_dataset(data, folder=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.npz", "train.npz", "validation.npz"]
    out, thresholds = morpho.morpho_dataset(data, measured, attributes=("thick", "slanted"))
    assert out.context_names == tuple(f"digit {i}" for i in range(10)) + ("thick", "slanted")
    assert out.context_features == 12 and out.num_classes == 10
    assert thresholds["thick"] == pytest.approx(np.median(measured["train"]["thickness"]))
    for name in ("train", "validation", "test"):
        split, original = getattr(out, name), getattr(data, name)
        np.testing.assert_array_equal(split.context[:, :10], original.context)
        np.testing.assert_array_equal(split.context[:, 10], measured[name]["thickness"] > thresholds["thick"])
        np.testing.assert_array_equal(split.context[:, 11], measured[name]["slant"] > thresholds["slanted"])
        np.testing.assert_array_equal(split.labels, original.labels)
    assert out.train.context[:, 10].mean() == pytest.approx(0.5)  # the median splits the training set in half

    def fail(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(morpho, "measure", fail)
    again = morpho.measure_dataset(data, folder=tmp_path, progress=False)  # read back, not measured
    for name in ("train", "validation", "test"):
        for key in morpho.MEASUREMENTS:
            np.testing.assert_array_equal(again[name][key], measured[name][key])
    with pytest.raises(AssertionError, match="measured again"):  # other options: measured anew
        morpho.measure_dataset(data, folder=tmp_path, progress=False, scale=2)


def test_morpho_dataset_errors():
    data = _tiny_dataset()
    measured = morpho.measure_dataset(data, progress=False)
    with pytest.raises(ValueError, match="one row per test image"):
        morpho.morpho_dataset(data, {**measured, "test": {k: v[:2] for k, v in measured["test"].items()}})
    with pytest.raises(TypeError, match="labelled"):
        morpho.morpho_dataset(data.train, measured)
