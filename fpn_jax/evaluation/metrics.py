"""Classification metrics and the paper's baseline classifiers on frozen latents.

The Flow Plugin Network classifies a latent by Bayes' rule, ``ŷ = argmax_k log p(z | k)``.
Section 5 of the paper compares it with discriminative classifiers trained on the same
latents ``z = E(x)``: logistic regression, a linear SVM and an RBF SVM. Every baseline
standardises the latents first (``StandardScaler`` in a ``Pipeline``, so cross-validation
folds never see the held-out statistics).

scikit-learn is an optional dependency: ``pip install "fpn-jax[experiments]"``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from fpn_jax import validation as checks

BASELINES = ("logistic_regression", "linear_svm", "rbf_svm")
"""Names of the baseline classifiers, in the paper's order."""

_FIXED_PARAMS: dict[str, dict[str, Any]] = {
    "logistic_regression": {"C": 1.0},
    "linear_svm": {"C": 1.0},
    "rbf_svm": {"C": 10.0},  # and gamma = 1 / D, scikit-learn's "scale" on standardised latents
}
"""Default hyper-parameters."""

_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
_RBF_C_GRID = (0.1, 1.0, 10.0, 100.0)
_RBF_GAMMA_FACTORS = (0.3, 1.0, 3.0)
"""The RBF grid over ``gamma = factor / D`` (``1 / D`` is ``"scale"`` on standardised data)."""


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "fpn_jax.evaluation.metrics.baseline_accuracies needs scikit-learn: "
            'pip install "fpn-jax[experiments]"'
        ) from error
    from sklearn import linear_model, model_selection, pipeline, preprocessing, svm

    return linear_model, model_selection, pipeline, preprocessing, svm


def _labels(x: Any, *, name: str, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.integer):
        hint = " For one-hot rows use labels = argmax(one_hot, axis=1)." if x.ndim == 2 else ""
        raise ValueError(
            f"{where}: argument `{name}` must be a 1-D integer array of class labels, shape (N,); "
            f"got shape {x.shape} and dtype {x.dtype}.{hint}"
        )
    return x


def _latents(x: Any, *, name: str, where: str, width: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"{where}: argument `{name}` must be a 2-D floating array of latents, shape (N, D); "
            f"got shape {x.shape} and dtype {x.dtype}."
        )
    if width is not None and x.shape[1] != width:
        raise ValueError(
            f"{where}: argument `{name}` must have shape (N, {width}) like `z_train`; got {x.shape}."
        )
    checks.check_finite(x, name=name, where=where)
    return x


def _same_length(where: str, **arrays: np.ndarray) -> None:
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"`{n}` has {r}" for n, r in lengths.items())
        raise ValueError(f"{where}: arguments must have the same length N; {described}.")


def accuracy(pred: Any, labels: Any) -> float:
    """Fraction of correct predictions, ``1/N Σ_n [pred_n = labels_n]``.

    Args:
      pred: (N,) predicted class indices.
      labels: (N,) true class indices.
    """
    pred = _labels(pred, name="pred", where="accuracy")
    labels = _labels(labels, name="labels", where="accuracy")
    _same_length("accuracy", pred=pred, labels=labels)
    if pred.shape[0] == 0:
        raise ValueError("accuracy: arguments `pred` and `labels` are empty.")
    return float(np.mean(pred == labels))


def per_class_accuracy(pred: Any, labels: Any, num_classes: int) -> np.ndarray:
    """Accuracy within each true class, ``acc_k = mean_{n: labels_n = k} [pred_n = k]``.

    Args:
      pred: (N,) predicted class indices.
      labels: (N,) true class indices in ``[0, num_classes)``.
      num_classes: K.

    Returns:
      (K,) float64 accuracies; NaN for a class with no example in ``labels``.
    """
    where = "per_class_accuracy"
    pred = _labels(pred, name="pred", where=where)
    labels = _labels(labels, name="labels", where=where)
    _same_length(where, pred=pred, labels=labels)
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"{where}: `num_classes` must be an integer >= 1; got {num_classes!r}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{where}: argument `labels` must lie in [0, {num_classes}); "
            f"got values in [{labels.min()}, {labels.max()}]."
        )
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    correct = np.bincount(labels[pred == labels], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, correct / counts, np.nan)


def _estimator(name: str, params: dict[str, Any], seed: int):
    linear_model, _, pipeline, preprocessing, svm = _sklearn()
    if name == "logistic_regression":
        model = linear_model.LogisticRegression(max_iter=2000, random_state=seed)
    elif name == "linear_svm":
        # Primal solver (dual=False): the right choice for N >> D, and it converges.
        model = svm.LinearSVC(dual=False, max_iter=5000, random_state=seed)
    else:
        model = svm.SVC(kernel="rbf", cache_size=1000, random_state=seed)
    return pipeline.Pipeline([("scale", preprocessing.StandardScaler()), ("model", model)]).set_params(
        **{f"model__{k}": v for k, v in params.items()}
    )


def _grid(name: str, features: int) -> dict[str, list[Any]]:
    if name == "rbf_svm":
        return {"model__C": list(_RBF_C_GRID), "model__gamma": [f / features for f in _RBF_GAMMA_FACTORS]}
    return {"model__C": list(_C_GRID)}


def _subsample(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(rng.choice(n, size=limit, replace=False))


def baseline_accuracies(
    z_train: Any,
    y_train: Any,
    z_test: Any,
    y_test: Any,
    *,
    grid_search: bool = False,
    seed: int = 0,
    models: Sequence[str] = BASELINES,
    max_train: int | None = None,
    grid_max_train: int | None = 10_000,
    n_jobs: int | None = None,
    train_eval_max: int | None = 10_000,
    threads: int | None = 1,
) -> dict[str, dict[str, Any]]:
    """Fits the paper's baseline classifiers on latents and reports their accuracies.

    Each model is ``StandardScaler → classifier``. With ``grid_search=False`` the fixed
    hyper-parameters are used (logistic regression ``C=1``, linear SVM ``C=1``, RBF SVM
    ``C=10, gamma=1/D``). With ``grid_search=True`` they are chosen by 5-fold stratified
    cross-validated accuracy, as in the paper: ``C ∈ {1e-3, …, 100}`` for the linear models,
    ``C ∈ {0.1, 1, 10, 100} × gamma ∈ {0.3, 1, 3} / D`` for the RBF SVM; the chosen model is
    then refitted on all (at most ``max_train``) training rows.

    RBF SVM cost grows roughly quadratically with N. Measured on 2 shared CPU cores with
    50 000 MNIST-like 40-d latents (PCA of the images), fixed parameters: logistic regression
    0.6 s, linear SVM 3 s, RBF SVM 14 s (test accuracy 0.984), 55 s in all with predictions
    (the RBF SVM's on the 50 000 training rows cost more than its fit); ``grid_search=True``:
    3 min in all. Poorly separated data, where most rows become
    support vectors, is slower: an RBF fit on 50 000 noisy 40-d rows took 90 s. ``max_train``
    bounds every fit; ``grid_max_train`` bounds only the cross-validation (12 RBF candidates
    × 5 folds), whose winner is refitted on all (at most ``max_train``) training rows.

    Args:
      z_train: (N, D) training latents.
      y_train: (N,) integer training labels.
      z_test: (M, D) test latents.
      y_test: (M,) integer test labels.
      grid_search: choose hyper-parameters by 5-fold cross-validation.
      seed: seed of the subsampling, the folds and the solvers.
      models: which of ``BASELINES`` to fit.
      max_train: fit on a random subset of at most this many training rows (None: all).
      grid_max_train: cross-validate on a random subset of at most this many of those rows
        (None: all of them).
      n_jobs: parallel jobs of the grid search (scikit-learn's ``n_jobs``; None: one).
      train_eval_max: the training accuracy is measured on a random subset of at most this
        many fitted rows (None: all); predicting 50k rows costs an RBF SVM more than its fit.
      threads: BLAS / OpenMP threads inside each fit (``threadpoolctl``; None: the libraries'
        default, all cores). One thread is the fast choice for these small problems on a few
        shared cores: there, multi-threaded BLAS made logistic regression 5-40× slower.

    Returns:
      ``{model name: {"train_accuracy", "test_accuracy", "seconds", "params", "n_train",
      "grid_search", "cv_accuracy", "n_grid"}}``: accuracies on the rows fitted on and on the
      test set, the wall time of fitting (grid search and refit, without prediction), the
      hyper-parameters used, the number of training rows fitted on, whether the grid search
      ran, and (grid search only, else None) the best mean cross-validated accuracy and the
      number of rows it was computed on.

    Raises:
      ValueError: bad shapes, non-finite latents, unknown model names, fewer than two
        classes, or (grid search) a class with fewer than 5 examples.
      ImportError: scikit-learn is not installed.
    """
    where = "baseline_accuracies"
    z_train = _latents(z_train, name="z_train", where=where)
    z_test = _latents(z_test, name="z_test", where=where, width=z_train.shape[1])
    y_train = _labels(y_train, name="y_train", where=where)
    y_test = _labels(y_test, name="y_test", where=where)
    _same_length(where, z_train=z_train, y_train=y_train)
    _same_length(where, z_test=z_test, y_test=y_test)
    unknown = [m for m in models if m not in BASELINES]
    if unknown or not models:
        raise ValueError(f"{where}: `models` must be a non-empty subset of {BASELINES}; got {tuple(models)!r}.")
    limits = (("max_train", max_train), ("grid_max_train", grid_max_train), ("train_eval_max", train_eval_max))
    for name, limit in limits:
        if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 10):
            raise ValueError(f"{where}: `{name}` must be None or an integer >= 10; got {limit!r}.")
    if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
        raise ValueError(f"{where}: `threads` must be None or an integer >= 1; got {threads!r}.")
    _sklearn()
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    rng = np.random.default_rng(seed)
    rows = _subsample(z_train.shape[0], max_train, rng)
    z_fit, y_fit = z_train[rows], y_train[rows]
    if np.unique(y_fit).size < 2:
        raise ValueError(f"{where}: argument `y_train` must contain at least two classes.")
    grid_rows = _subsample(z_fit.shape[0], grid_max_train, rng)
    eval_rows = _subsample(z_fit.shape[0], train_eval_max, rng)
    _, counts = np.unique(y_fit[grid_rows], return_counts=True)
    if grid_search and counts.min() < 5:
        raise ValueError(
            f"{where}: 5-fold grid search needs at least 5 training examples of every class; "
            f"the smallest class has {counts.min()}. Raise `grid_max_train` or pass more data."
        )

    results: dict[str, dict[str, Any]] = {}
    with threadpool_limits(threads):
        for name in models:
            results[name] = _fit_one(
                name, z_fit, y_fit, z_test, y_test, grid_rows, eval_rows, grid_search, seed, n_jobs
            )
            results[name]["n_train_eval"] = int(eval_rows.size)
    return results


def _fit_one(
    name: str,
    z_fit: np.ndarray,
    y_fit: np.ndarray,
    z_test: np.ndarray,
    y_test: np.ndarray,
    grid_rows: np.ndarray,
    eval_rows: np.ndarray,
    grid_search: bool,
    seed: int,
    n_jobs: int | None,
) -> dict[str, Any]:
    """Fits one baseline (after an optional grid search) and scores it; see ``baseline_accuracies``."""
    _, model_selection, _, _, _ = _sklearn()
    features = z_fit.shape[1]
    start = time.perf_counter()
    params = dict(_FIXED_PARAMS[name])
    if name == "rbf_svm":
        params["gamma"] = 1.0 / features  # scikit-learn's "scale" on standardised data, made explicit
    cv_accuracy = None
    if grid_search:
        search = model_selection.GridSearchCV(
            _estimator(name, params, seed),
            _grid(name, features),
            cv=model_selection.StratifiedKFold(5, shuffle=True, random_state=seed),
            scoring="accuracy",
            n_jobs=n_jobs,
            refit=False,
        )
        search.fit(z_fit[grid_rows], y_fit[grid_rows])
        params.update({k.removeprefix("model__"): float(v) for k, v in search.best_params_.items()})
        cv_accuracy = float(search.best_score_)
    model = _estimator(name, params, seed).fit(z_fit, y_fit)
    seconds = time.perf_counter() - start
    return {
        "train_accuracy": float(np.mean(model.predict(z_fit[eval_rows]) == y_fit[eval_rows])),
        "test_accuracy": float(np.mean(model.predict(z_test) == y_test)),
        "seconds": seconds,
        "params": params,
        "n_train": int(z_fit.shape[0]),
        "grid_search": grid_search,
        "cv_accuracy": cv_accuracy,
        "n_grid": int(grid_rows.size) if grid_search else None,
    }
