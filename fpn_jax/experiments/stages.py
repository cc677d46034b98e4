"""The stages every experiment shares, written once and generic over data sets.

An experiment (MNIST today; FashionMNIST, ShapeNet and CelebA next) is a chain of them::

    Dataset ──cached_base_model──▶ frozen E, D ──encode_splits──▶ {split: z (N, D)}
        ──fit_plugin──▶ p(z | y) ──evaluate_classification──▶ Bayes-rule accuracies, test NLL
                                 └─sample_per_class──▶ z ──generation_accuracy (judge)──▶ score

plus ``cached_judge`` (the classifier that scores generated images), ``baselines``
(classical classifiers on the same latents), a ``Timer`` and the run record
(``environment``, ``config_record``, ``write_metrics``). Nothing here knows MNIST: shapes,
classes and contexts come from the ``Dataset`` (``fpn_jax.data``), architectures and
settings from the caller. Figures and reports, which are experiment-specific, stay with the
experiment (``fpn_jax.experiments.mnist``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fpn_jax import autoencoders, checkpoint, latents
from fpn_jax.autoencoders import Autoencoder, TrainableAutoencoder
from fpn_jax.data import Dataset, one_hot
from fpn_jax.evaluation import judge, metrics
from fpn_jax.flows import ConditionalFlow
from fpn_jax.inference import class_log_likelihoods
from fpn_jax.train import History, TrainConfig, fit
from fpn_jax.typing import Key, Latents

__all__ = [
    "SPLITS",
    "Timer",
    "baselines",
    "cached_base_model",
    "cached_fit",
    "cached_result",
    "cached_judge",
    "cached_latents",
    "fitted",
    "config_record",
    "encode_splits",
    "environment",
    "run_folder",
    "evaluate_classification",
    "fit_plugin",
    "generation_accuracy",
    "history_record",
    "sample_per_class",
    "write_metrics",
]

SPLITS = ("train", "validation", "test")
"""The splits of a ``Dataset``, in the order their latents are computed."""


class Timer:
    """Wall time of named stages, in seconds (rounded to 0.01 s; a repeated name adds up).

    Usage::

        timer = Timer()
        with timer("encode"):
            ...
        timer.seconds  # {"encode": 1.23}
    """

    def __init__(self, *, verbose: bool = True):
        self.seconds: dict[str, float] = {}
        self.verbose = verbose

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Times the ``with`` block under ``name`` (and prints the running total)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 2)
            if self.verbose:
                print(f"[{name}] {self.seconds[name]:.1f} s", flush=True)

    def total(self) -> float:
        """The sum over all stages but ``"total"`` itself, in seconds."""
        return round(sum(v for k, v in self.seconds.items() if k != "total"), 2)


def environment() -> dict[str, Any]:
    """Where a run ran: JAX version, backend, devices and Python version (JSON-able)."""
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "python": platform.python_version(),
    }


def run_folder(config: Any, workdir: str | os.PathLike | None) -> tuple[Any, Path]:
    """The run's config and folder: ``workdir`` (if given) becomes ``config.out``, created if missing.

    Args:
      config: an experiment's dataclass config with an ``out`` field.
      workdir: the run folder, or None for ``config.out``.

    Returns:
      ``(config, Path(config.out))``, the config recording the folder actually used.
    """
    if workdir is not None:
        config = dataclasses.replace(config, out=os.fspath(workdir))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    return config, out


def config_record(config: Any) -> dict[str, Any]:
    """A dataclass config as a JSON-able dict: tuples become lists, as ``json`` reads them back.

    Raises:
      TypeError: ``config`` is not a dataclass instance.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config_record: argument `config` must be a dataclass instance; got {type(config).__name__}.")
    return _lists(dataclasses.asdict(config))


def cached_base_model(
    folder: str | os.PathLike,
    create: Callable[[], TrainableAutoencoder],
    dataset: Dataset,
    *,
    key: Key,
    train_settings: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> tuple[Autoencoder, dict[str, Any]]:
    """The frozen base model kept in ``folder``: loaded if trained there, else trained (resumably).

    A finished training leaves ``folder/best`` (the best epoch, what ``autoencoders.load``
    reads) and no ``folder/resume``; an interrupted one leaves ``resume/`` and is continued
    from its last epoch. Training minimises the model's own loss on ``dataset.train.inputs``,
    early-stopped on ``dataset.validation.inputs`` (``fpn_jax.autoencoders.fit``).

    Args:
      folder: the model's folder in a model cache, e.g. ``cache / "conv_vae"``.
      create: makes the untrained model; called only when there is nothing finished to load.
      dataset: the data; its train and validation inputs are (N, *model.data_shape).
      key: PRNG key of the training (shuffling, the model's noise).
      train_settings: overrides of the model's default training settings, e.g.
        ``{"learning_rate": 5e-3, "max_epochs": 10}`` (``fpn_jax.autoencoders.default_config``).
      progress: show a progress bar.

    Returns:
      ``(model, info)``: the frozen model and a JSON-able record. Loaded: ``{"cached": True,
      "best_epoch", "val_loss"}``; trained: ``{"cached": False, "epochs", "best_epoch",
      "val_loss", "train_seconds", "learning_rate"}`` (epochs counted from 0).

    Raises:
      TypeError: ``dataset`` is not a ``Dataset`` or ``create`` does not make a trainable model.
    """
    _check_dataset(dataset, where="cached_base_model")
    folder = Path(folder)
    if (folder / "best").exists() and not (folder / "resume").exists():
        model = autoencoders.load(folder)
        extra = checkpoint.read_meta(folder / "best")["extra"]
        return model, {"cached": True, "best_epoch": extra["epoch"], "val_loss": extra["val_loss"]}
    model = create()
    config = autoencoders.default_config(model, **dict(train_settings or {}))
    history = autoencoders.fit(
        model, dataset.train.inputs, key=key, config=config, validation=dataset.validation.inputs,
        checkpoint_dir=folder, progress=progress,
    )
    shutil.rmtree(folder / "resume", ignore_errors=True)  # finished: keep only best/
    return model, {
        "cached": False, "epochs": len(history.train_loss), "best_epoch": history.best_epoch,
        "val_loss": history.val_loss[history.best_epoch], "train_seconds": round(history.seconds, 1),
        "learning_rate": config.learning_rate,
    }


def cached_judge(
    folder: str | os.PathLike,
    dataset: Dataset,
    *,
    key: Key,
    config: TrainConfig | None = None,
    progress: bool = True,
) -> tuple[judge.DigitCNN, dict[str, Any]]:
    """The judge CNN kept in ``folder``: loaded if there, else trained on the data set and saved.

    The judge (``fpn_jax.evaluation.judge``) classifies images; it never sees the base model
    or the flow. It is trained on the labelled training images, the epoch with the lowest
    validation error kept, and scored once on the test images.

    Args:
      folder: where the judge's checkpoint is kept, e.g. ``cache / "judge"``.
      dataset: a labelled image data set: inputs (N, H, W, C) in [0, 1], ``num_classes`` set.
      key: PRNG key of the training (initialisation and shuffling).
      config: optimisation settings (default ``judge.default_config()``: 3 epochs).
      progress: show a progress bar.

    Returns:
      ``(judge, info)``: the classifier in eval mode and ``{"cached", "test_accuracy",
      "epochs", "train_seconds"}`` (a loaded judge: what was recorded when it was trained).

    Raises:
      TypeError / ValueError: ``dataset`` is not a labelled ``Dataset``.
    """
    num_classes = _check_labelled(dataset, where="cached_judge")
    folder = Path(folder)
    if folder.exists():
        model = checkpoint.load(folder, expect=judge.DigitCNN)
        return model, {"cached": True, **checkpoint.read_meta(folder)["extra"]}
    train, validation = dataset.train, dataset.validation
    model, history = judge.fit_judge(
        train.inputs, train.labels, key=key, num_classes=num_classes, config=config,
        validation=(validation.inputs, validation.labels), progress=progress,
    )
    test_accuracy = metrics.accuracy(np.asarray(judge.predict(model, dataset.test.inputs)), dataset.test.labels)
    extra = {"test_accuracy": test_accuracy, "epochs": len(history.train_loss),
             "train_seconds": round(history.seconds, 1)}
    checkpoint.save(folder, model, extra=extra, overwrite=True)
    return model, {"cached": False, **extra}


def encode_splits(
    model: Autoencoder, dataset: Dataset, *, key: Key | None = None, batch_size: int = 2048
) -> dict[str, np.ndarray]:
    """The latents ``z = E(x)`` of every split, computed once with the frozen encoder.

    Args:
      model: a frozen base model (``fpn_jax.autoencoders.load`` / ``freeze``).
      dataset: the data; each split's inputs are (N, *model.data_shape).
      key: sample ``z ~ q(z | x)`` (a VAE), with one key per split split from this one in
        the order of ``SPLITS``; None: the deterministic code (the VAE's posterior mean).
      batch_size: examples per compiled call (one value for every split compiles once).

    Returns:
      ``{"train", "validation", "test"}`` → (N, latent_features) float32 latents.

    Raises:
      TypeError: ``dataset`` is not a ``Dataset``; as ``fpn_jax.latents.encode`` otherwise.
    """
    _check_dataset(dataset, where="encode_splits")
    keys = [None] * len(SPLITS) if key is None else list(jax.random.split(key, len(SPLITS)))
    return {
        split: latents.encode(model, getattr(dataset, split).inputs, key=k, batch_size=batch_size)
        for split, k in zip(SPLITS, keys, strict=True)
    }


def cached_latents(
    folder: str | os.PathLike,
    model: Autoencoder,
    dataset: Dataset,
    *,
    fingerprint: Mapping[str, Any],
    key: Key | None = None,
    batch_size: int = 2048,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """``encode_splits`` kept on disk: each split's latents saved as soon as it is encoded.

    ``folder/<split>.npy`` holds a split's (N, L) latents and ``folder/fingerprint.json``
    what they were computed from. A run that stops mid-way keeps the splits it finished and
    the next one encodes only the rest; latents made from anything else (another model,
    data, seed: a different ``fingerprint``) are discarded and recomputed. Files are written
    to a temporary name and renamed, so a crash never leaves a half-written split behind.

    Args:
      folder: where the latents are kept, e.g. ``out / "latents"``.
      model: the frozen base model.
      dataset: the data; each split's inputs are (N, *model.data_shape).
      fingerprint: JSON-able description of model and data (e.g. checkpoint path and
        step, data root, points, seed): latents are reused only under an equal fingerprint.
      key: as ``encode_splits`` (None: the deterministic code).
      batch_size: examples per compiled call.
      progress: print which splits are loaded and which are encoded.

    Returns:
      ``{"train", "validation", "test"}`` → (N, latent_features) float32 latents.

    Raises:
      TypeError: ``dataset`` is not a ``Dataset``; ValueError: a fingerprint that is not JSON-able.
    """
    _check_dataset(dataset, where="cached_latents")
    folder = Path(folder)
    wanted = json.loads(json.dumps(dict(fingerprint), default=_jsonable))
    record = folder / "fingerprint.json"
    if record.exists() and json.loads(record.read_text()) != wanted:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(wanted, indent=2))
    keys = [None] * len(SPLITS) if key is None else list(jax.random.split(key, len(SPLITS)))
    z = {}
    for split, k in zip(SPLITS, keys, strict=True):
        path, rows = folder / f"{split}.npy", len(getattr(dataset, split))
        if path.exists():
            kept = np.load(path)
            if kept.shape == (rows, model.latent_features):
                z[split] = kept
                if progress:
                    print(f"[latents] {split}: {rows} rows loaded from {path}", flush=True)
                continue
        z[split] = latents.encode(model, getattr(dataset, split).inputs, key=k, batch_size=batch_size)
        temporary = folder / f".{split}.tmp.npy"
        np.save(temporary, z[split])
        temporary.replace(path)
        if progress:
            print(f"[latents] {split}: {rows} rows encoded to {path}", flush=True)
    return z


def fit_plugin(
    flow: ConditionalFlow,
    z: Mapping[str, Latents],
    dataset: Dataset,
    *,
    key: Key,
    config: TrainConfig,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    noise: float = 0.0,
) -> History:
    """Fits the plugin ``p(z | y)`` by maximum likelihood on the training latents and contexts.

    The contexts are the splits' own ``context`` rows (one-hot classes, multi-hot
    attributes); the validation split drives early stopping and the kept epoch.

    Args:
      flow: the conditional flow (trained in place, left in eval mode); its
        ``context_features`` must be ``dataset.context_features``.
      z: latents by split (``encode_splits``); ``z["train"]`` and ``z["validation"]`` are used.
      dataset: the data the latents were computed from, row for row.
      key: PRNG key of the training (shuffling, dropout).
      config: optimisation settings.
      checkpoint_dir: folder for the resumable training state (None: keep nothing on disk).
      progress: show a progress bar.
      noise: ε: training latents perturbed by ``U[0, ε)`` noise each step (``fpn_jax.fit``).

    Returns:
      The training history (mean NLLs in nats per latent).

    Raises:
      TypeError: ``dataset`` is not a ``Dataset``.
      ValueError: a latent split missing or not row-aligned with the data set; as
        ``fpn_jax.fit`` otherwise.
    """
    where = "fit_plugin"
    _check_dataset(dataset, where=where)
    _check_latents(z, dataset, ("train", "validation"), where=where)
    return fit(
        flow, z["train"], dataset.train.context, key=key, config=config,
        validation=(z["validation"], dataset.validation.context), checkpoint_dir=checkpoint_dir, progress=progress,
        noise=noise,
    )


def history_record(history: History) -> dict[str, Any]:
    """What a run keeps of a training history: ``{"epochs", "best_epoch", "train_seconds"}``."""
    return {
        "epochs": len(history.train_loss), "best_epoch": history.best_epoch, "train_seconds": round(history.seconds, 1),
    }


def baselines(
    z: Mapping[str, Latents], dataset: Dataset, *, grid_search: bool = False, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """The paper's classical classifiers on the same latents (``metrics.baseline_accuracies``).

    Args:
      z: latents by split; ``z["train"]`` and ``z["test"]`` are used.
      dataset: a labelled data set, row-aligned with ``z``.
      grid_search: choose hyper-parameters by 5-fold cross-validation (slow).
      seed: seed of the subsampling, folds and solvers.

    Returns:
      ``{classifier name: {"train_accuracy", "test_accuracy", ...}}``.
    """
    where = "baselines"
    _check_labelled(dataset, where=where)
    _check_latents(z, dataset, ("train", "test"), where=where)
    return metrics.baseline_accuracies(
        z["train"], dataset.train.labels, z["test"], dataset.test.labels, grid_search=grid_search, seed=seed,
    )


def evaluate_classification(flow: ConditionalFlow, z: Mapping[str, Latents], dataset: Dataset) -> dict[str, Any]:
    """Classification by Bayes' rule, ``argmax_k log p(z | y_k) + log p(y_k)``, and the test NLL.

    Every latent is scored under every class's context (``fpn_jax.class_log_likelihoods``,
    the one-hot rows ``I_K``), once with a uniform prior and once with the training split's
    class frequencies. The NLL is ``-1/N Σ_n log p(z_n | y_n)`` on the test split under the
    true class, in nats per latent vector and per latent dimension.

    Args:
      flow: the fitted plugin, in eval mode.
      z: latents by split; ``z["train"]`` and ``z["test"]`` are used.
      dataset: a labelled data set with one-hot contexts (``context_features == num_classes``).

    Returns:
      ``{"test_accuracy", "test_accuracy_prior", "train_accuracy", "test_accuracy_per_class",
      "test_nll", "test_nll_per_dim"}``; the first three with a uniform prior, the second with
      the class prior; per class: a list of K accuracies (None for a class absent from test).

    Raises:
      TypeError / ValueError: ``dataset`` without labels, with contexts that are not one
        class each, or latents not row-aligned with it.
    """
    where = "evaluate_classification"
    num_classes = _check_classes(dataset, where=where)
    _check_latents(z, dataset, ("train", "test"), where=where)
    y_train, y_test = dataset.train.labels, dataset.test.labels
    log_prior = np.log(np.bincount(y_train, minlength=num_classes) / len(y_train))
    ll_test = np.asarray(class_log_likelihoods(flow, z["test"]))
    ll_train = np.asarray(class_log_likelihoods(flow, z["train"]))
    nll = -np.mean(ll_test[np.arange(len(y_test)), y_test])  # float32, as are the log-likelihoods
    per_class = metrics.per_class_accuracy(ll_test.argmax(1), y_test, num_classes)
    return {
        "test_accuracy": metrics.accuracy(ll_test.argmax(1), y_test),
        "test_accuracy_prior": metrics.accuracy((ll_test + log_prior).argmax(1), y_test),
        "train_accuracy": metrics.accuracy(ll_train.argmax(1), y_train),
        "test_accuracy_per_class": [None if np.isnan(a) else float(a) for a in per_class],
        "test_nll": float(nll),
        "test_nll_per_dim": float(nll / flow.features),
    }


def sample_per_class(
    flow: ConditionalFlow, dataset: Dataset, samples_per_class: int, *, key: Key
) -> tuple[np.ndarray, np.ndarray]:
    """``samples_per_class`` draws ``z ~ p(z | y_k)`` for every class k, class by class.

    A draw that overflowed (the sampling direction divides by learned scales) is returned
    as it is, non-finite: find such rows with ``np.isfinite(samples).all(1)``.

    Args:
      flow: the fitted plugin, in eval mode.
      dataset: a labelled data set with one-hot contexts.
      samples_per_class: S >= 1.
      key: PRNG key of the draws.

    Returns:
      ``(samples, labels)``: (K·S, D) float32 latents and their (K·S,) int classes
      ``[0]*S + [1]*S + …``.

    Raises:
      ValueError: ``samples_per_class`` < 1, or a data set without one-hot classes.
    """
    where = "sample_per_class"
    num_classes = _check_classes(dataset, where=where)
    integer = isinstance(samples_per_class, (int, np.integer)) and not isinstance(samples_per_class, bool)
    if not integer or samples_per_class < 1:
        raise ValueError(f"{where}: argument `samples_per_class` must be an integer >= 1; got {samples_per_class!r}.")
    labels = np.repeat(np.arange(num_classes), samples_per_class)
    samples = flow.sample(key, one_hot(labels, num_classes), allow_overflow=True)
    return np.asarray(samples), labels


def generation_accuracy(
    samples: np.ndarray, labels: np.ndarray, base_model: Autoencoder, judge_model: judge.DigitCNN, num_classes: int
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """How often the judge sees class ``y`` in ``D(z)`` for samples ``z ~ p(z | y)``.

    Non-finite samples (overflows) are not decoded: they count as wrong and are reported.

    Args:
      samples: (N, D) plugin samples, possibly with non-finite rows.
      labels: (N,) the class each was drawn for.
      base_model: the frozen base model whose decoder ``D`` makes the images.
      judge_model: the trained judge.
      num_classes: K.

    Returns:
      ``(result, images, finite)``: ``result`` = ``{"generation_accuracy",
      "generation_accuracy_per_class" (K values rounded to 4 places), "non_finite_samples"}``;
      ``images`` the decoded finite samples, in order, (F, *data_shape); ``finite`` the (N,)
      mask of the rows that were decoded.

    Raises:
      ValueError: ``samples`` and ``labels`` of different lengths.
    """
    samples, labels = np.asarray(samples), np.asarray(labels)
    if samples.ndim != 2 or labels.shape != (samples.shape[0],):
        raise ValueError(
            "generation_accuracy: arguments `samples` (N, D) and `labels` (N,) must have the same number of rows; "
            f"got shapes {samples.shape} and {labels.shape}."
        )
    finite = np.isfinite(samples).all(axis=1)
    judged = np.full(len(labels), -1)
    images = latents.decode(base_model, samples[finite])
    judged[finite] = np.asarray(judge.predict(judge_model, images))
    per_class = metrics.per_class_accuracy(judged, labels, num_classes)
    result = {
        "generation_accuracy": metrics.accuracy(judged, labels),
        "generation_accuracy_per_class": [round(float(a), 4) for a in per_class],
        "non_finite_samples": int((~finite).sum()),
    }
    return result, images, finite


def write_metrics(out: str | os.PathLike, metrics_json: Mapping[str, Any]) -> Path:
    """Writes ``out/metrics.json`` atomically (a temporary file, then a rename).

    A reader never sees a half-written file, and a run that fails later keeps the metrics
    written so far. Numpy scalars and arrays are written as numbers and lists.

    Returns:
      The path of ``metrics.json``.

    Raises:
      TypeError: a value that is not JSON-able.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    temporary = out / ".metrics.json.tmp"
    temporary.write_text(json.dumps(metrics_json, indent=2, default=_jsonable))
    return temporary.replace(out / "metrics.json")


# ----------------------------------------------------------------------------- helpers
def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"write_metrics: a value of type {type(value).__name__} is not JSON-able.")


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_lists(v) for v in value]
    return value


def _check_dataset(dataset: Any, *, where: str) -> None:
    if not isinstance(dataset, Dataset):
        raise TypeError(f"{where}: argument `dataset` must be a fpn_jax.data.Dataset; got {type(dataset).__name__}.")


def _check_labelled(dataset: Any, *, where: str) -> int:
    """K, for a data set whose splits all carry labels in [0, K)."""
    _check_dataset(dataset, where=where)
    unlabelled = [s for s in SPLITS if getattr(dataset, s).labels is None]
    if dataset.num_classes is None or unlabelled:
        raise ValueError(
            f"{where}: argument `dataset` must have classes (num_classes={dataset.num_classes}) and labels in every "
            f"split; splits without labels: {unlabelled}."
        )
    return int(dataset.num_classes)


def _check_classes(dataset: Any, *, where: str) -> int:
    """K, for a labelled data set whose contexts are the K one-hot class rows."""
    num_classes = _check_labelled(dataset, where=where)
    if dataset.context_features != num_classes:
        raise ValueError(
            f"{where}: argument `dataset` must have one-hot class contexts (context_features == num_classes); got "
            f"{dataset.context_features} context features for {num_classes} classes."
        )
    return num_classes


def _check_latents(z: Mapping[str, Any], dataset: Dataset, splits: tuple[str, ...], *, where: str) -> None:
    for split in splits:
        if split not in z:
            raise ValueError(f"{where}: argument `z` must hold the {split!r} latents; it has {sorted(z)}.")
        rows, expected = np.shape(z[split])[0], len(getattr(dataset, split))
        if rows != expected:
            raise ValueError(
                f"{where}: argument `z[{split!r}]` must have one row per {split} example ({expected}); got {rows}."
            )


# ----------------------------------------------------------------------------- training kept on disk
def cached_fit(
    folder: str | os.PathLike,
    train: Callable[[Path], tuple[Any, History]],
    *,
    fingerprint: Mapping[str, Any],
    expect: type | None = None,
) -> tuple[Any, History, bool]:
    """A model trained once into ``folder``: loaded when that training finished, else (re)trained.

    ``train(folder)`` trains a fresh model with ``checkpoint_dir=folder`` (so an interrupted
    run resumes from ``folder/resume`` and the best epoch lands in ``folder/best``) and returns
    ``(model, history)``. When it returns, ``folder/training.json`` records the history and
    ``fingerprint``. A later call with an equal ``fingerprint`` loads ``folder/best`` and that
    history without calling ``train`` at all; another fingerprint (say a larger
    ``max_epochs``) calls ``train`` again, which resumes from ``resume/`` as ``fit_model``
    does (and refuses a folder trained with another step size or batch size).

    Args:
      folder: the training folder, e.g. ``out / "plugins" / "maf"``.
      train: trains into the folder it is given; the model must be of a registered
        architecture and trained with validation (so ``best/`` is written).
      fingerprint: JSON-able description of what the model depends on (architecture,
        settings, data); the record is reused only under an equal one.
      expect: the class ``best/`` must hold (``checkpoint.load(..., expect=)``).

    Returns:
      ``(model, history, cached)``: the model at its best epoch (eval mode), its history,
      and whether it was loaded rather than trained.

    Raises:
      ValueError: a fingerprint that is not JSON-able; as ``train`` and ``checkpoint.load``.
    """
    folder = Path(folder)
    wanted = json.loads(json.dumps(dict(fingerprint), default=_jsonable))
    kept, _ = fitted(folder, fingerprint=fingerprint, expect=expect)
    if kept is not None:
        return *kept, True
    model, history = train(folder)
    temporary = folder / ".training.json.tmp"
    temporary.write_text(json.dumps({"fingerprint": wanted, "history": dataclasses.asdict(history)}, indent=1,
                                    default=_jsonable))
    temporary.replace(folder / "training.json")
    return model, history, False


def fitted(
    folder: str | os.PathLike,
    *,
    fingerprint: Mapping[str, Any],
    expect: type | None = None,
) -> tuple[tuple[Any, History] | None, dict[str, Any] | None]:
    """What ``cached_fit`` would load from ``folder``, read only: never trains or writes.

    Args:
      folder: a ``cached_fit`` training folder.
      fingerprint: the settings the model must have been trained under.
      expect: the class ``best/`` must hold.

    Returns:
      ``(kept, saved)``: ``kept`` is ``(model, history)`` (model at its best epoch, eval mode)
      when ``folder`` holds a finished training under an equal fingerprint, else None;
      ``saved`` is the fingerprint the folder records (None: no finished training there), so
      a caller can say what differs.
    """
    folder = Path(folder)
    record = folder / "training.json"
    if not (record.exists() and (folder / "best").exists()):
        return None, None
    saved = json.loads(record.read_text())
    wanted = json.loads(json.dumps(dict(fingerprint), default=_jsonable))
    if saved.get("fingerprint") != wanted:
        return None, saved.get("fingerprint")
    model = checkpoint.load(folder / "best", expect=expect)
    model.eval()
    return (model, History(**saved["history"])), saved["fingerprint"]


# ----------------------------------------------------------------------------- results kept on disk
def cached_result(
    path: str | os.PathLike,
    compute: Callable[[], Mapping[str, Any]],
    *,
    fingerprint: Mapping[str, Any],
) -> dict[str, Any]:
    """A JSON-able evaluation computed once: read from ``path`` when kept there under an equal fingerprint.

    ``path`` holds ``{"fingerprint": ..., "result": ...}``, written atomically (a temporary
    file, then a rename) when ``compute()`` returns, so a run that stops during a later stage
    skips this one when it is started again; another fingerprint computes it anew.

    Args:
      path: the JSON file, e.g. ``out / "evaluations" / "conv_vae_maf.json"``.
      compute: makes the result (a mapping of JSON-able values; numpy scalars and arrays allowed).
      fingerprint: JSON-able description of what the result depends on.

    Returns:
      The result, as read back from JSON (tuples become lists, numpy values numbers).

    Raises:
      TypeError: a result or fingerprint that is not JSON-able.
    """
    path = Path(path)
    wanted = json.loads(json.dumps(dict(fingerprint), default=_jsonable))
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:
            saved = {}
        if saved.get("fingerprint") == wanted and "result" in saved:
            return saved["result"]
    result = json.loads(json.dumps(dict(compute()), default=_jsonable))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps({"fingerprint": wanted, "result": result}, indent=1))
    temporary.replace(path)
    return result
