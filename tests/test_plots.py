"""Every figure function writes a PNG of the expected size and rejects bad shapes by name."""

from __future__ import annotations

import numpy as np
import pytest

from fpn_jax.evaluation import plots

image = pytest.importorskip("matplotlib.image")

RNG = np.random.default_rng(0)


def read_png(path: str, width_in: float, height_in: float) -> np.ndarray:
    pixels = image.imread(path)
    expected = (round(height_in * plots.DPI), round(width_in * plots.DPI))
    assert np.abs(np.subtract(pixels.shape[:2], expected)).max() <= 2, (pixels.shape, expected)
    assert pixels[..., :3].std() > 0.01  # not blank
    return pixels


def test_image_grid_rows_and_flat(tmp_path):
    grid = RNG.uniform(size=(10, 10, 28, 28, 1))
    labels = [str(k) for k in range(10)]
    path = plots.image_grid(grid, tmp_path / "sub" / "grid.png", row_labels=labels, title="samples")
    assert path == str(tmp_path / "sub" / "grid.png")
    read_png(path, 10 * 0.5 + 0.6, 10 * 0.5 + 0.45)
    flat = plots.image_grid(RNG.uniform(size=(7, 28, 28, 3)), tmp_path / "flat.png", ncols=3)
    read_png(flat, 2.5, 3 * 0.5 + 0.15)  # minimum width


def test_image_grid_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"`images`.*images\[\.\.\., None\]"):
        plots.image_grid(RNG.uniform(size=(4, 28, 28)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="`row_labels`"):
        plots.image_grid(RNG.uniform(size=(2, 3, 8, 8, 1)), tmp_path / "x.png", row_labels=["a"])


def test_reconstructions(tmp_path):
    x = RNG.uniform(size=(12, 28, 28, 1))
    path = plots.reconstructions(x, x * 0.5, tmp_path / "rec.png", title="AE")
    read_png(path, 10 * 0.5 + 1.3, 4 * 0.5 + 0.45)
    with pytest.raises(ValueError, match="`originals` and `reconstructions` must have the same shape"):
        plots.reconstructions(x, x[:3], tmp_path / "x.png")


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embedding_2d(tmp_path, method):
    means = 3 * RNG.normal(size=(3, 6))
    y = {"latents": RNG.integers(0, 3, 80), "samples": RNG.integers(0, 3, 50)}
    points = {k: means[v] + RNG.normal(size=(v.size, 6)) for k, v in y.items()}
    path = plots.embedding_2d(points, y, tmp_path / "emb.png", method=method, max_points=60)
    read_png(path, 2 * 4.2 + 1.2, 4.8)


def test_embedding_2d_bad_input(tmp_path):
    points = {"a": RNG.normal(size=(20, 4)), "b": RNG.normal(size=(20, 5))}
    labels = {"a": np.zeros(20, int), "b": np.zeros(20, int)}
    with pytest.raises(ValueError, match=r"`points_by_set\['b'\]` must have shape \(N_i, 4\)"):
        plots.embedding_2d(points, labels, tmp_path / "x.png", method="pca")
    with pytest.raises(ValueError, match="`labels_by_set` must have the same keys"):
        plots.embedding_2d(points, {"a": labels["a"]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"`labels_by_set\['a'\]`"):
        plots.embedding_2d({"a": points["a"]}, {"a": np.zeros(19, int)}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="`method`"):
        plots.embedding_2d(points, labels, tmp_path / "x.png", method="umap")


def test_training_curves(tmp_path):
    histories = {
        "C-MAF": {"train_nll": [3.0, 2.0, 1.5], "val_nll": [3.2, 2.5, 2.6]},
        "C-RNVP": {"train_nll": [3.0, 2.2], "val_nll": []},
    }
    read_png(plots.training_curves(histories, tmp_path / "curves.png"), 7.0, 4.2)
    with pytest.raises(ValueError, match=r"`histories\['x'\]`.*'train_nll'"):
        plots.training_curves({"x": {"val_nll": [1.0]}}, tmp_path / "x.png")


def test_per_class_bars(tmp_path):
    values = {"AE + C-MAF": RNG.uniform(size=10), "VAE + C-RNVP": RNG.uniform(size=10)}
    path = plots.per_class_bars(values, tmp_path / "bars.png", ylabel="accuracy", title="generation")
    read_png(path, 6.6, 4.2)
    with pytest.raises(ValueError, match=r"`values_by_name\['b'\]` must be numeric of shape \(10,\)"):
        plots.per_class_bars({"a": np.ones(10), "b": np.ones(9)}, tmp_path / "x.png", ylabel="y", title="t")


def test_point_cloud_grid(tmp_path):
    clouds = RNG.normal(size=(2, 3, 200, 3))
    clouds[1, 2] = np.nan  # a missing panel stays empty
    path = plots.point_cloud_grid(clouds, tmp_path / "clouds.png", row_labels=["a", "b"],
                                  column_labels=["x", "y", "z"], title="clouds")
    read_png(path, 1.6 * 3 + 0.8, 1.6 * 2 + 0.5)
    read_png(plots.point_cloud_grid(clouds[0], tmp_path / "row.png"), 1.6 * 3, 1.6)
    with pytest.raises(ValueError, match=r"`clouds`.*\(R, K, P, 3\)"):
        plots.point_cloud_grid(RNG.normal(size=(2, 5, 2)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="`row_labels`"):
        plots.point_cloud_grid(clouds, tmp_path / "x.png", row_labels=["a"])
