"""Accuracy helpers and the scikit-learn baselines on small, well-separated Gaussian blobs."""

from __future__ import annotations

import numpy as np
import pytest

from fpn_jax.evaluation.metrics import BASELINES, accuracy, baseline_accuracies, per_class_accuracy

pytest.importorskip("sklearn")


def blobs(n: int, *, classes: int = 3, dim: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = 4.0 * np.eye(classes, dim)
    y = rng.integers(0, classes, n)
    return (means[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def test_accuracy_and_per_class_accuracy():
    pred = np.array([0, 1, 1, 2, 0, 0])
    labels = np.array([0, 1, 2, 2, 1, 0])
    assert accuracy(pred, labels) == pytest.approx(4 / 6)
    np.testing.assert_allclose(per_class_accuracy(pred, labels, 4), [1.0, 0.5, 0.5, np.nan])


def test_metric_errors_name_the_argument():
    with pytest.raises(ValueError, match="same length"):
        accuracy(np.array([0, 1]), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="`labels`.*argmax"):
        accuracy(np.array([0, 1]), np.eye(2))
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 2\)"):
        per_class_accuracy(np.array([0, 1]), np.array([0, 2]), 2)


def test_baselines_fixed_hyperparameters():
    z, y = blobs(400)
    z_test, y_test = blobs(300, seed=1)
    results = baseline_accuracies(z, y, z_test, y_test)
    assert list(results) == list(BASELINES)
    for name, r in results.items():
        assert r["test_accuracy"] > 0.95 and r["train_accuracy"] > 0.95, (name, r)
        assert r["n_train"] == 400 and r["seconds"] > 0 and not r["grid_search"] and r["cv_accuracy"] is None
    assert results["rbf_svm"]["params"] == {"C": 10.0, "gamma": 1 / 5}


def test_baselines_grid_search_and_subsampling():
    z, y = blobs(600)
    z_test, y_test = blobs(200, seed=1)
    kwargs = dict(grid_search=True, models=("logistic_regression", "rbf_svm"), max_train=300, grid_max_train=150)
    results = baseline_accuracies(z, y, z_test, y_test, **kwargs)
    assert list(results) == ["logistic_regression", "rbf_svm"]
    rbf = results["rbf_svm"]
    assert rbf["n_train"] == 300 and rbf["n_grid"] == 150 and rbf["grid_search"]
    assert rbf["params"]["C"] in (0.1, 1.0, 10.0, 100.0)
    assert np.isclose(rbf["params"]["gamma"], [0.3 / 5, 1 / 5, 3 / 5]).any()
    assert 0.9 < rbf["cv_accuracy"] <= 1.0 and rbf["test_accuracy"] > 0.9
    again = baseline_accuracies(z, y, z_test, y_test, **kwargs)
    assert {k: v["params"] for k, v in again.items()} == {k: v["params"] for k, v in results.items()}


def test_baseline_errors_name_the_argument():
    z, y = blobs(50)
    with pytest.raises(ValueError, match=r"`z_test` must have shape \(N, 5\)"):
        baseline_accuracies(z, y, z[:, :4], y)
    with pytest.raises(ValueError, match="`y_train`.*argmax"):
        baseline_accuracies(z, np.eye(3)[y], z, y)
    with pytest.raises(ValueError, match="same length"):
        baseline_accuracies(z, y[:-1], z, y)
    with pytest.raises(ValueError, match="`models`"):
        baseline_accuracies(z, y, z, y, models=("knn",))
    with pytest.raises(ValueError, match="NaN"):
        baseline_accuracies(np.full_like(z, np.nan), y, z, y)
    with pytest.raises(ValueError, match="`max_train`"):
        baseline_accuracies(z, y, z, y, max_train=0)
