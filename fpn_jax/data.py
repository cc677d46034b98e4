"""Datasets as in-memory numpy arrays: MNIST from IDX files or tensorflow-datasets.

A dataset is three ``Split`` s (train, validation, test), each a pair of arrays: images of
shape (N, *item_shape) as float32 in [0, 1] and integer class labels of shape (N,). MNIST is
read either from the four original IDX files (``read_idx``, plain numpy, no TensorFlow) or,
when no such files are at hand, through ``tensorflow_datasets``, which downloads and prepares
it (that path needs TensorFlow). The validation split is carved out of the 60,000 training
images with a seeded permutation; the 10,000 test images stay untouched.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from fpn_jax import _checks

__all__ = [
    "MNIST_FILES",
    "Dataset",
    "DatasetUnavailableError",
    "IDXFormatError",
    "Split",
    "load_mnist",
    "read_idx",
    "subset",
]

# The four MNIST files by role, without the optional ".gz" suffix.
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_MNIST_SIDE, _MNIST_CLASSES = 28, 10

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class IDXFormatError(ValueError):
    """A file is not a well-formed IDX file (bad magic, truncated, corrupt gzip...)."""


class DatasetUnavailableError(RuntimeError):
    """No source could provide the dataset; the message says what to do."""


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split of a labelled dataset, held in host memory.

    Attributes:
      images: (N, *item_shape) float32 in [0, 1]; (N, 28, 28, 1) for MNIST.
      labels: (N,) int32 class indices.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if not np.issubdtype(np.asarray(self.labels).dtype, np.integer):
            raise ValueError(
                f"Split: `labels` must be integer class indices; got dtype {np.asarray(self.labels).dtype}."
            )
        if np.ndim(self.labels) != 1:
            raise ValueError(
                f"Split: `labels` must be a 1-D array of shape (N,); got shape {np.shape(self.labels)}."
            )
        if np.ndim(self.images) < 1 or np.shape(self.images)[0] != np.shape(self.labels)[0]:
            raise ValueError(
                "Split: `images` and `labels` must have the same number of rows N; "
                f"`images` has shape {np.shape(self.images)}, "
                f"`labels` has shape {np.shape(self.labels)}."
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled dataset's three splits.

    Attributes:
      train: the training split.
      validation: held out from the training data (for early stopping / model choice).
      test: the dataset's official test split, untouched.
      num_classes: number of classes; labels lie in [0, num_classes).
    """

    train: Split
    validation: Split
    test: Split
    num_classes: int


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (the MNIST file format) into a numpy array.

    The header is two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), a byte with the number of dimensions D, then D big-endian
    uint32 sizes; the big-endian data follow. Gzip-compressed files are recognised by their
    content, whatever their name.

    Args:
      path: the file, gzip-compressed or not.

    Returns:
      An array of shape (d_1, ..., d_D) in the file's dtype, native byte order, writable.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      IDXFormatError: corrupt gzip, bad magic number, truncated header or data, trailing bytes.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"read_idx: IDX file {path} {what}.")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise IDXFormatError(
                f"read_idx: {path} is a truncated or corrupt gzip file ({type(err).__name__}: {err})."
            ) from None
    if len(raw) < 4:
        raise IDXFormatError(
            f"read_idx: {path} is truncated: expected at least 4 bytes (the magic number), "
            f"got {len(raw)}."
        )
    zero, type_code, ndim = raw[:2], raw[2], raw[3]
    if zero != b"\x00\x00" or type_code not in _IDX_DTYPES:
        raise IDXFormatError(
            f"read_idx: {path} is not an IDX file: bad magic number 0x{raw[:4].hex()}; expected "
            "0x0000TTDD with type byte TT in {08, 09, 0b, 0c, 0d, 0e} and DD the number of "
            "dimensions (MNIST images: 0x00000803, labels: 0x00000801)."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXFormatError(
            f"read_idx: {path} is truncated: expected {header} header bytes for {ndim} "
            f"dimensions, got {len(raw)}."
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = header + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if len(raw) != expected:
        problem = "is truncated" if len(raw) < expected else "has trailing bytes"
        raise IDXFormatError(
            f"read_idx: {path} {problem}: a {dtype.newbyteorder('=').name} array of shape {shape} "
            f"needs {expected} bytes (header included), got {len(raw)}."
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


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
    validation_size = _checks.positive_int(
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


def subset(split: Split, n: int, *, seed: int = 0, balanced: bool = True) -> Split:
    """Takes ``n`` examples of a split, for quick runs and tests.

    With ``balanced=True`` the classes are visited round-robin (each in a seeded random
    order), so every class gets ``n // C`` or ``n // C + 1`` examples while it has them; a
    class that runs out leaves its share to the others. With ``balanced=False`` the examples
    are a plain seeded random draw. The result keeps the split's order.

    Args:
      split: images (N, *item_shape) and labels (N,).
      n: number of examples, in [0, N].
      seed: seed of the draw.
      balanced: equal counts per class (as far as the split allows).

    Returns:
      A ``Split`` with images (n, *item_shape) and labels (n,).

    Raises:
      TypeError: ``split`` is not a ``Split``.
      ValueError: ``n`` is negative or larger than the split, or ``seed`` is not an integer.
    """
    if not isinstance(split, Split):
        raise TypeError(f"subset: argument `split` must be a fpn_jax.data.Split; got {type(split).__name__}.")
    n = _checks.positive_int(n, name="n", where="subset", allow_zero=True)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"subset: `seed` must be an integer; got {seed!r}.")
    if n > len(split):
        raise ValueError(f"subset: `n` must be at most the split's size {len(split)}; got {n}.")
    rng = np.random.default_rng(int(seed))
    order = rng.permutation(len(split))
    if balanced:
        # Rank of each example within its class, in the seeded order; taking the smallest
        # ranks first visits the classes round-robin.
        labels = split.labels[order]
        by_class = np.argsort(labels, kind="stable")
        sorted_labels = labels[by_class]
        starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
        rank = np.empty(len(order), dtype=np.int64)
        rank[by_class] = np.arange(len(order)) - starts
        order = order[np.argsort(rank, kind="stable")]
    chosen = np.sort(order[:n])
    return Split(images=split.images[chosen], labels=split.labels[chosen])


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
    """uint8 (N, H, W) -> float32 (N, H, W, 1) in [0, 1]; labels -> int32."""
    x = images.astype(np.float32)[..., None]
    x /= np.float32(255)
    return Split(images=x, labels=labels.astype(np.int32))
