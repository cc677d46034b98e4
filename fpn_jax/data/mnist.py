"""MNIST (LeCun et al., 1998) from its IDX files or tensorflow-datasets.

``load_mnist`` gives a ``Dataset`` of three ``Split`` s (train, validation, test): images of
shape (N, 28, 28, 1) as float32 in [0, 1], integer class labels (N,) and their one-hot
contexts (N, 10). MNIST is
read either from the four original IDX files (``read_idx``, plain numpy, no TensorFlow) or,
when no such files are at hand, through ``tensorflow_datasets``, which downloads and prepares
it (that path needs TensorFlow). The validation split is carved out of the 60,000 training
images with a seeded permutation; the 10,000 test images stay untouched.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Literal

import numpy as np

from fpn_jax import validation as checks
from fpn_jax.data.base import Dataset, DatasetUnavailableError, Split
from fpn_jax.data.idx import read_idx

__all__ = ["MNIST_FILES", "load_mnist"]

# The four MNIST files by role, without the optional ".gz" suffix.
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_MNIST_SIDE, _MNIST_CLASSES = 28, 10


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    validation_size: int = 10_000,
    seed: int = 0,
    source: Literal["auto", "idx", "tfds"] = "auto",
) -> Dataset:
    """Loads MNIST as float images in [0, 1] with a seeded train/validation split.

    Sources: ``"idx"`` reads the four IDX files ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each
    optionally ``.gz``) from ``data_dir``. ``"tfds"`` calls ``tensorflow_datasets.load("mnist")``
    with ``data_dir`` as its data folder (``None``: the tfds default, ``~/tensorflow_datasets``);
    it downloads and prepares MNIST on first use and needs TensorFlow installed. ``"auto"``
    uses the IDX files when ``data_dir`` holds them, tfds otherwise.

    The validation split is ``validation_size`` training images drawn with a permutation
    seeded by ``seed``; the train split is the rest. Both keep the files' order.

    Args:
      data_dir: folder with the IDX files, or the tfds data folder.
      validation_size: images moved from train to validation, in [0, 60000).
      seed: seed of the train/validation permutation.
      source: ``"auto"``, ``"idx"`` or ``"tfds"``.

    Returns:
      A ``Dataset`` with ``num_classes=10`` whose splits hold images of shape
      (N, 28, 28, 1) float32 in [0, 1] and labels of shape (N,) int32: train N = 60000 -
      validation_size, validation N = validation_size, test N = 10000.

    Raises:
      FileNotFoundError: ``source="idx"`` (or ``"auto"`` with some but not all of the IDX
        files present) and a file is missing.
      IDXFormatError: an IDX file is malformed.
      ValueError: bad arguments, or files that are not MNIST (shapes, counts, labels).
      DatasetUnavailableError: tfds could not provide MNIST; the message says what to do.
    """
    where = "load_mnist"
    if source not in ("auto", "idx", "tfds"):
        raise ValueError(f"{where}: `source` must be 'auto', 'idx' or 'tfds'; got {source!r}.")
    validation_size = checks.positive_int(
        validation_size, name="validation_size", where=where, allow_zero=True
    )
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"{where}: `seed` must be an integer; got {seed!r}.")

    found = _find_idx_files(data_dir)
    missing = [MNIST_FILES[role] for role, p in found.items() if p is None]
    if source == "idx" or (source == "auto" and 0 < len(missing) < len(MNIST_FILES)):
        if data_dir is None:
            raise ValueError(
                f"{where}: source='idx' needs `data_dir`, the folder with the four MNIST IDX files "
                f"{_files_hint()}; got data_dir=None."
            )
        if missing:
            raise FileNotFoundError(
                f"{where}: MNIST IDX file(s) missing from {Path(data_dir)}: "
                + ", ".join(f"{m}[.gz]" for m in missing)
                + f". The folder must hold all four: {_files_hint()}."
            )
    if source == "idx" or (source == "auto" and not missing):
        arrays = {role: read_idx(p) for role, p in found.items()}
        names = {role: str(p) for role, p in found.items()}
    else:
        arrays = _load_tfds(data_dir, idx_note=_idx_note(data_dir, source))
        names = {
            "train_images": "tfds mnist 'train' images",
            "train_labels": "tfds mnist 'train' labels",
            "test_images": "tfds mnist 'test' images",
            "test_labels": "tfds mnist 'test' labels",
        }
    _check_mnist(arrays, names)
    n_train = arrays["train_labels"].shape[0]
    if validation_size >= n_train:
        raise ValueError(
            f"{where}: `validation_size` must be smaller than the {n_train} training images; "
            f"got {validation_size}."
        )

    rng = np.random.default_rng(int(seed))
    held_out = np.zeros(len(arrays["train_labels"]), dtype=bool)
    held_out[rng.permutation(held_out.size)[:validation_size]] = True
    train_images, train_labels = arrays["train_images"], arrays["train_labels"]
    return Dataset(
        train=_to_split(train_images[~held_out], train_labels[~held_out]),
        validation=_to_split(train_images[held_out], train_labels[held_out]),
        test=_to_split(arrays["test_images"], arrays["test_labels"]),
        num_classes=_MNIST_CLASSES,
    )


def _find_idx_files(data_dir: str | os.PathLike | None) -> dict[str, Path | None]:
    """The IDX file for each role in ``data_dir`` (uncompressed first, then ``.gz``), or None."""
    found: dict[str, Path | None] = dict.fromkeys(MNIST_FILES)
    if data_dir is None:
        return found
    for role, name in MNIST_FILES.items():
        for candidate in (Path(data_dir) / name, Path(data_dir) / f"{name}.gz"):
            if candidate.is_file():
                found[role] = candidate
                break
    return found


def _files_hint() -> str:
    return ", ".join(f"{name}.gz" for name in MNIST_FILES.values()) + " (gzipped or not)"


def _idx_note(data_dir: str | os.PathLike | None, source: str) -> str:
    if source == "tfds":
        return "source='tfds' was asked for."
    if data_dir is None:
        return "No data_dir was given, so there were no IDX files to read."
    where = Path(data_dir)
    state = "" if where.is_dir() else " (the folder does not exist)"
    return f"No MNIST IDX files in {where}{state}."


def _how_to_fix() -> str:
    return (
        "To fix this, either pass data_dir (--data-dir in the experiment scripts) pointing at a "
        f"folder with the four MNIST IDX files {_files_hint()}, or install TensorFlow so "
        "tensorflow-datasets can download and prepare MNIST (this needs internet once): "
        "pip install tensorflow-cpu."
    )


def _tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _load_tfds(data_dir: str | os.PathLike | None, *, idx_note: str) -> dict[str, np.ndarray]:
    """MNIST through tensorflow_datasets, as uint8 (N, 28, 28) images and (N,) labels."""

    def unavailable(reason: str) -> DatasetUnavailableError:
        return DatasetUnavailableError(
            f"load_mnist: could not load MNIST. {idx_note} tensorflow-datasets could not load it "
            f"either: {reason} {_how_to_fix()}"
        )

    if not _tensorflow_available():
        raise unavailable(
            "TensorFlow is not installed (tensorflow-datasets needs it to download, prepare "
            "and read MNIST)."
        )
    try:
        import tensorflow_datasets as tfds

        (train_x, train_y), (test_x, test_y) = tfds.load(
            "mnist",
            split=["train", "test"],
            data_dir=None if data_dir is None else os.fspath(data_dir),
            batch_size=-1,
            as_supervised=True,
        )
        arrays = [np.asarray(a) for a in (train_x, train_y, test_x, test_y)]
    except Exception as err:  # noqa: BLE001 - any failure becomes the actionable message
        raise unavailable(f"{type(err).__name__}: {err}.") from err
    train_x, train_y, test_x, test_y = arrays
    squeeze = lambda x: x[..., 0] if x.ndim == 4 and x.shape[-1] == 1 else x  # noqa: E731
    return {
        "train_images": squeeze(train_x),
        "train_labels": train_y,
        "test_images": squeeze(test_x),
        "test_labels": test_y,
    }


def _check_mnist(arrays: dict[str, np.ndarray], names: dict[str, str]) -> None:
    """Checks shapes, dtypes, counts and label range of raw MNIST arrays."""
    side = _MNIST_SIDE
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        image_name, label_name = names[f"{part}_images"], names[f"{part}_labels"]
        if images.ndim != 3 or images.shape[1:] != (side, side) or images.dtype != np.uint8:
            raise ValueError(
                f"load_mnist: {image_name} must hold uint8 images of shape (N, {side}, {side}); "
                f"got {images.dtype} of shape {images.shape}."
            )
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"load_mnist: {label_name} must hold integer labels of shape (N,); "
                f"got {labels.dtype} of shape {labels.shape}."
            )
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"load_mnist: image and label counts differ: {image_name} has "
                f"{images.shape[0]} images, {label_name} has {labels.shape[0]} labels."
            )
        if labels.size and (labels.min() < 0 or labels.max() >= _MNIST_CLASSES):
            raise ValueError(
                f"load_mnist: {label_name} must hold labels in 0..{_MNIST_CLASSES - 1}; "
                f"got values from {labels.min()} to {labels.max()}."
            )


def _to_split(images: np.ndarray, labels: np.ndarray) -> Split:
    """uint8 (N, H, W) -> float32 (N, H, W, 1) in [0, 1]; labels -> int32 and one-hot contexts."""
    x = images.astype(np.float32)[..., None]
    x /= np.float32(255)
    return Split.from_labels(x, labels.astype(np.int32), _MNIST_CLASSES)
