"""MNIST (LeCun et al., 1998) and Fashion-MNIST (Xiao et al., 2017): IDX files, download, or tfds.

``load_mnist`` and ``load_fashion_mnist`` give a ``Dataset`` of three ``Split`` s (train,
validation, test): images of shape (N, 28, 28, 1) as float32 in [0, 1], integer class labels
(N,) and their one-hot contexts (N, 10). Both data sets come as the same four IDX files
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each optionally ``.gz``), read by one code path (``read_idx``,
plain numpy, no TensorFlow) with the same checks and the same seeded validation split: the
validation images are carved out of the 60,000 training images; the 10,000 test images stay
untouched.

Where the files come from (``source``):

* ``data_dir`` given: the IDX files in that folder (``"auto"``, ``"idx"``).
* no ``data_dir``: the cache ``$FPN_JAX_HOME/data/<name>/`` (default
  ``~/.cache/fpn_jax/data/mnist`` and ``.../fashion_mnist``). Files missing there are
  downloaded once from public mirrors (the ones torchvision and tensorflow-datasets use,
  tried in turn), checked against their published sizes and checksums, and written
  atomically (``fpn_jax.data.download``).
* ``"tfds"``: ``tensorflow_datasets.load`` (needs TensorFlow); ``"auto"`` without
  ``data_dir`` falls back to it when the download fails and TensorFlow is installed.

The mirror lists and checksums are the module-level ``IDX_DATASETS`` table (one
``IDXDataset`` per data set); the loaders also take ``mirrors=`` for another mirror.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from fpn_jax import validation as checks
from fpn_jax.data.base import Dataset, DatasetUnavailableError, Split
from fpn_jax.data.download import DEFAULT_TIMEOUT, DownloadError, RemoteFile, data_home, fetch
from fpn_jax.data.idx import read_idx

__all__ = [
    "FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
    "IDX_DATASETS",
    "MNIST",
    "MNIST_CLASSES",
    "MNIST_FILES",
    "IDXDataset",
    "download_idx_dataset",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_mnist",
]

Source = Literal["auto", "idx", "download", "tfds"]
SOURCES = ("auto", "idx", "download", "tfds")

# The four files by role, without the optional ".gz" suffix (the same names for both data sets).
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_CLASSES = tuple(str(k) for k in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


@dataclasses.dataclass(frozen=True)
class IDXDataset:
    """An MNIST-like data set distributed as the four IDX files of ``MNIST_FILES``.

    Attributes:
      name: the key in ``IDX_DATASETS``, the cache folder's name and tensorflow-datasets' name.
      title: the name shown in messages (``"MNIST"``).
      class_names: the name of each class (the ``Dataset``'s ``context_names``).
      files: the files as the mirrors serve them (gzipped), by role, with their checksums.
      mirrors: base URLs of the mirrors, tried in this order.
      homepage: where the data set is described (for messages and the README).
      side: images are side x side.
    """

    name: str
    title: str
    class_names: tuple[str, ...]
    files: Mapping[str, RemoteFile]
    mirrors: tuple[str, ...]
    homepage: str
    side: int = 28

    def __post_init__(self) -> None:
        if set(self.files) != set(MNIST_FILES):
            raise ValueError(
                f"IDXDataset: `files` must have the roles {sorted(MNIST_FILES)}; got {sorted(self.files)}."
            )
        for role, file in self.files.items():
            if file.name not in (MNIST_FILES[role], MNIST_FILES[role] + ".gz"):
                raise ValueError(
                    f"IDXDataset: the {role} file must be named {MNIST_FILES[role]}[.gz]; got {file.name!r}."
                )

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return len(self.class_names)

    @property
    def cache_dir(self) -> Path:
        """Where the files are downloaded to: ``$FPN_JAX_HOME/data/<name>``."""
        return data_home() / self.name


# Sizes and SHA-256 of the served .gz files as tensorflow-datasets records them
# (tensorflow_datasets/url_checksums/{mnist,fashion_mnist}.txt), MD5 as torchvision does
# (torchvision/datasets/mnist.py); MNIST's content MD5s (of the gunzipped files) as
# ../shared/data/mnist/README.md lists them, so a recompressed copy of the same bytes is accepted.
MNIST = IDXDataset(
    name="mnist",
    title="MNIST",
    class_names=MNIST_CLASSES,
    files={
        "train_images": RemoteFile(
            "train-images-idx3-ubyte.gz", md5="f68b3c2dcbeaaa9fbdd348bbdeb94873", size=9_912_422,
            sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            raw_md5="6bbc9ace898e44ae57da46a324031adb", raw_size=47_040_016,
        ),
        "train_labels": RemoteFile(
            "train-labels-idx1-ubyte.gz", md5="d53e105ee54ea40749a09fcbcd1e9432", size=28_881,
            sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            raw_md5="a25bea736e30d166cdddb491f175f624", raw_size=60_008,
        ),
        "test_images": RemoteFile(
            "t10k-images-idx3-ubyte.gz", md5="9fb629c4189551a2d022fa330f9573f3", size=1_648_877,
            sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            raw_md5="2646ac647ad5339dbf082846283269ea", raw_size=7_840_016,
        ),
        "test_labels": RemoteFile(
            "t10k-labels-idx1-ubyte.gz", md5="ec29112dd5afa0611ce80d1b7f02629c", size=4_542,
            sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            raw_md5="27ae3e4e09519cfbb04c329615203637", raw_size=10_008,
        ),
    },
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's
        "https://storage.googleapis.com/cvdf-datasets/mnist/",  # tensorflow-datasets'
        "http://yann.lecun.com/exdb/mnist/",  # the original
    ),
    homepage="http://yann.lecun.com/exdb/mnist/",
)
FASHION_MNIST = IDXDataset(
    name="fashion_mnist",
    title="Fashion-MNIST",
    class_names=FASHION_MNIST_CLASSES,
    files={
        "train_images": RemoteFile(
            "train-images-idx3-ubyte.gz", md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d", size=26_421_880,
            sha256="3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        ),
        "train_labels": RemoteFile(
            "train-labels-idx1-ubyte.gz", md5="25c81989df183df01b3e8a0aad5dffbe", size=29_515,
            sha256="a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        ),
        "test_images": RemoteFile(
            "t10k-images-idx3-ubyte.gz", md5="bef4ecab320f06d8554ea6380940ec79", size=4_422_102,
            sha256="346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        ),
        "test_labels": RemoteFile(
            "t10k-labels-idx1-ubyte.gz", md5="bb300cfdad3c16e7a12a480ee83cd310", size=5_148,
            sha256="67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
    },
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # torchvision's and tfds'
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",  # the project's
    ),
    homepage="https://github.com/zalandoresearch/fashion-mnist",
)
IDX_DATASETS: dict[str, IDXDataset] = {"mnist": MNIST, "fashion_mnist": FASHION_MNIST}
"""The data sets ``load_idx_dataset`` knows, by name; their mirrors and checksums."""


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    validation_size: int = 10_000,
    seed: int = 0,
    source: Source = "auto",
    mirrors: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
) -> Dataset:
    """Loads MNIST as float images in [0, 1] with a seeded train/validation split.

    ``load_idx_dataset("mnist", ...)``; see there for the sources and arguments.

    Returns:
      A ``Dataset`` with ``num_classes=10`` and ``context_names`` ``"0"`` ... ``"9"`` whose
      splits hold images (N, 28, 28, 1) float32 in [0, 1] and labels (N,) int32: train
      N = 60000 - validation_size, validation N = validation_size, test N = 10000.
    """
    return _load(
        _spec("mnist"), data_dir, validation_size=validation_size, seed=seed, source=source, mirrors=mirrors,
        timeout=timeout, progress=progress, where="load_mnist",
    )


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    validation_size: int = 10_000,
    seed: int = 0,
    source: Source = "auto",
    mirrors: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
) -> Dataset:
    """Loads Fashion-MNIST as float images in [0, 1] with a seeded train/validation split.

    ``load_idx_dataset("fashion_mnist", ...)``; see there for the sources and arguments.
    The files are those of https://github.com/zalandoresearch/fashion-mnist (``data/fashion``).

    Returns:
      A ``Dataset`` with ``num_classes=10`` and ``context_names`` ``FASHION_MNIST_CLASSES``
      (T-shirt/top, Trouser, ..., Ankle boot), shaped as ``load_mnist``'s.
    """
    return _load(
        _spec("fashion_mnist"), data_dir, validation_size=validation_size, seed=seed, source=source,
        mirrors=mirrors, timeout=timeout, progress=progress, where="load_fashion_mnist",
    )


def load_idx_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    validation_size: int = 10_000,
    seed: int = 0,
    source: Source = "auto",
    mirrors: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
) -> Dataset:
    """Loads an MNIST-like data set (``IDX_DATASETS[name]``) with a seeded train/validation split.

    Sources:

    * ``"auto"`` (the default): with ``data_dir``, the four IDX files there (some but not
      all of them is an error; none of them: tensorflow-datasets with ``data_dir`` as its
      data folder). Without ``data_dir``, the cache ``$FPN_JAX_HOME/data/<name>``: files
      missing there are downloaded first (``"download"``); if that fails and TensorFlow is
      installed, tensorflow-datasets (its default folder) is tried before giving up.
    * ``"idx"``: only local files, never the network: the four IDX files in ``data_dir``
      (default: the cache folder).
    * ``"download"``: the IDX files in ``data_dir`` (default: the cache folder), those
      missing downloaded there first from ``mirrors``, each verified against its size and
      checksums before it takes its final name.
    * ``"tfds"``: ``tensorflow_datasets.load(name)`` with ``data_dir`` as its data folder
      (None: the tfds default, ``~/tensorflow_datasets``); it downloads and prepares the data
      on first use and needs TensorFlow.

    The validation split is ``validation_size`` training images drawn with a permutation
    seeded by ``seed``; the train split is the rest. Both keep the files' order.

    Args:
      name: ``"mnist"`` or ``"fashion_mnist"`` (a key of ``IDX_DATASETS``).
      data_dir: folder with the four IDX files (each gzipped or not), or the tfds data folder.
      validation_size: images moved from train to validation, in [0, number of training images).
      seed: seed of the train/validation permutation.
      source: ``"auto"``, ``"idx"``, ``"download"`` or ``"tfds"``.
      mirrors: base URLs to download from, tried in turn (default: the data set's
        ``IDX_DATASETS[name].mirrors``).
      timeout: seconds a mirror may take to connect or to send the next block.
      progress: show download progress on stderr.

    Returns:
      A ``Dataset`` with ``num_classes=10`` and the class names as ``context_names``, whose
      splits hold images of shape (N, 28, 28, 1) float32 in [0, 1] and labels (N,) int32.

    Raises:
      FileNotFoundError: ``source="idx"`` (or ``"auto"`` with some but not all of the IDX
        files present) and a file is missing.
      IDXFormatError: an IDX file is malformed.
      ValueError: bad arguments, or files that are not the data set (shapes, counts, labels).
      DownloadError: the download failed (a ``DatasetUnavailableError``); the message lists
        each mirror tried and why it failed, and what to do offline.
      DatasetUnavailableError: tensorflow-datasets could not provide the data; the message says
        what to do.
    """
    return _load(
        _spec(name), data_dir, validation_size=validation_size, seed=seed, source=source, mirrors=mirrors,
        timeout=timeout, progress=progress, where="load_idx_dataset",
    )


def _load(
    spec: IDXDataset,
    data_dir: str | os.PathLike | None,
    *,
    validation_size: int,
    seed: int,
    source: str,
    mirrors: Sequence[str] | None,
    timeout: float,
    progress: bool,
    where: str,
) -> Dataset:
    """``load_idx_dataset`` for ``spec``, naming ``where`` in its messages."""
    if source not in SOURCES:
        raise ValueError(f"{where}: `source` must be one of {', '.join(map(repr, SOURCES))}; got {source!r}.")
    validation_size = checks.positive_int(validation_size, name="validation_size", where=where, allow_zero=True)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"{where}: `seed` must be an integer; got {seed!r}.")
    mirrors = _mirrors(spec, mirrors, where)

    folder = spec.cache_dir if data_dir is None else Path(data_dir)
    found = _find_idx_files(folder)
    missing = [MNIST_FILES[role] for role, p in found.items() if p is None]
    arrays: dict[str, np.ndarray] | None = None
    names = {role: str(p) for role, p in found.items()}
    if source == "tfds":
        arrays, names = _load_tfds(spec, data_dir, idx_note="source='tfds' was asked for.", where=where)
    elif source == "idx" or (source == "auto" and data_dir is not None):
        if missing and (source == "idx" or len(missing) < len(MNIST_FILES)):
            raise FileNotFoundError(
                f"{where}: {spec.title} IDX file(s) missing from {folder}: "
                + ", ".join(f"{m}[.gz]" for m in missing)
                + f". The folder must hold all four: {_files_hint()}."
                + ("" if data_dir is not None else " source='download' or 'auto' downloads them there.")
            )
        if missing:  # "auto" with a data_dir holding none of the files: tfds
            arrays, names = _load_tfds(spec, data_dir, idx_note=_idx_note(spec, folder), where=where)
    elif missing:  # "download", or "auto" without data_dir
        try:
            fetch([spec.files[r] for r, p in found.items() if p is None], folder, mirrors, what=spec.title,
                  advice=_offline_advice(spec, data_dir), timeout=timeout, progress=progress)
        except DownloadError as download_error:
            if source == "download" or not _tensorflow_available():
                raise
            tried = "; ".join(f"{url}: {reason}" for url, reason in download_error.attempts)
            note = f"The download failed ({tried or download_error})."
            arrays, names = _load_tfds(spec, None, idx_note=note, where=where)
        else:
            found = _find_idx_files(folder)
            names = {role: str(p) for role, p in found.items()}
    if arrays is None:
        arrays = {role: read_idx(p) for role, p in found.items()}
    _check(spec, arrays, names, where)
    n_train = arrays["train_labels"].shape[0]
    if validation_size >= n_train:
        raise ValueError(
            f"{where}: `validation_size` must be smaller than the {n_train} training images; got {validation_size}."
        )

    rng = np.random.default_rng(int(seed))
    held_out = np.zeros(n_train, dtype=bool)
    held_out[rng.permutation(held_out.size)[:validation_size]] = True
    train_images, train_labels = arrays["train_images"], arrays["train_labels"]
    k = spec.num_classes
    return Dataset(
        train=_to_split(train_images[~held_out], train_labels[~held_out], k),
        validation=_to_split(train_images[held_out], train_labels[held_out], k),
        test=_to_split(arrays["test_images"], arrays["test_labels"], k),
        num_classes=k,
        context_names=spec.class_names,
    )


def download_idx_dataset(
    name: str,
    folder: str | os.PathLike | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
) -> Path:
    """Downloads the four IDX files of ``IDX_DATASETS[name]`` that ``folder`` lacks, verified.

    Args:
      name: ``"mnist"`` or ``"fashion_mnist"``.
      folder: where to put them (default: the cache ``$FPN_JAX_HOME/data/<name>``).
      mirrors: base URLs, tried in turn (default: the data set's mirrors).
      timeout: seconds a mirror may take to connect or to send the next block.
      progress: show download progress on stderr.

    Returns:
      The folder, now holding the four files (each ``<name>.gz`` or, if it was there
      before, uncompressed).

    Raises:
      DownloadError: some file could not be fetched from any mirror (the message lists them).
    """
    spec = _spec(name)
    mirrors = _mirrors(spec, mirrors, "download_idx_dataset")
    folder = spec.cache_dir if folder is None else Path(folder)
    found = _find_idx_files(folder)
    fetch([spec.files[r] for r, p in found.items() if p is None], folder, mirrors, what=spec.title,
          advice=_offline_advice(spec, None), timeout=timeout, progress=progress)
    return folder


def _spec(name: str) -> IDXDataset:
    if not isinstance(name, str) or name not in IDX_DATASETS:
        raise ValueError(f"load_idx_dataset: unknown data set {name!r}; known: {sorted(IDX_DATASETS)}.")
    return IDX_DATASETS[name]


def _mirrors(spec: IDXDataset, mirrors: Sequence[str] | None, where: str) -> list[str]:
    if mirrors is None:
        return list(spec.mirrors)
    chosen = [mirrors] if isinstance(mirrors, str) else list(mirrors)
    if not chosen or not all(isinstance(m, str) and m for m in chosen):
        raise ValueError(f"{where}: `mirrors` must be None or a non-empty sequence of base URLs; got {mirrors!r}.")
    return chosen


def _find_idx_files(folder: Path) -> dict[str, Path | None]:
    """The IDX file for each role in ``folder`` (uncompressed first, then ``.gz``), or None."""
    found: dict[str, Path | None] = dict.fromkeys(MNIST_FILES)
    for role, name in MNIST_FILES.items():
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found[role] = candidate
                break
    return found


def _files_hint() -> str:
    return ", ".join(f"{name}.gz" for name in MNIST_FILES.values()) + " (gzipped or not)"


def _idx_note(spec: IDXDataset, folder: Path) -> str:
    state = "" if folder.is_dir() else " (the folder does not exist)"
    return f"No {spec.title} IDX files in {folder}{state}."


def _tfds_hint() -> str:
    return "install TensorFlow (pip install tensorflow-cpu) so tensorflow-datasets can provide it (source='tfds')"


def _offline_advice(spec: IDXDataset, data_dir: str | os.PathLike | None) -> str:
    """What to do when the download fails (offline): local files, or tensorflow-datasets."""
    into = f", or copy them into {spec.cache_dir}" if data_dir is None else ""
    return (
        f"Offline? Pass the folder holding the four {spec.title} files {_files_hint()} (from {spec.homepage}) "
        f"as data_dir (--data-dir in the experiment scripts){into}; or install TensorFlow (pip install "
        "tensorflow-cpu) to use tensorflow-datasets instead (source='tfds'; tried when a download fails)."
    )


def _how_to_fix(spec: IDXDataset) -> str:
    return (
        f"To fix this, either pass data_dir (--data-dir in the experiment scripts) pointing at a folder with "
        f"the four {spec.title} IDX files {_files_hint()}, or leave data_dir unset to download them once into "
        f"{spec.cache_dir} (needs internet), or {_tfds_hint()} (this needs internet once too)."
    )


def _tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _load_tfds(
    spec: IDXDataset, data_dir: str | os.PathLike | None, *, idx_note: str, where: str
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The data set through tensorflow_datasets, as uint8 (N, side, side) images and (N,) labels."""

    def unavailable(reason: str) -> DatasetUnavailableError:
        return DatasetUnavailableError(
            f"{where}: could not load {spec.title}. {idx_note} tensorflow-datasets could not load it either: "
            f"{reason} {_how_to_fix(spec)}"
        )

    if not _tensorflow_available():
        raise unavailable(
            f"TensorFlow is not installed (tensorflow-datasets needs it to download, prepare and read {spec.title})."
        )
    try:
        import tensorflow_datasets as tfds

        (train_x, train_y), (test_x, test_y) = tfds.load(
            spec.name,
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
    arrays_by_role = {
        "train_images": squeeze(train_x), "train_labels": train_y,
        "test_images": squeeze(test_x), "test_labels": test_y,
    }
    names = {role: f"tfds {spec.name} {role.split('_')[0]!r} {role.split('_')[1]}" for role in MNIST_FILES}
    return arrays_by_role, names


def _check(spec: IDXDataset, arrays: dict[str, np.ndarray], names: dict[str, str], where: str) -> None:
    """Checks shapes, dtypes, counts and label range of the raw arrays."""
    side, k = spec.side, spec.num_classes
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        image_name, label_name = names[f"{part}_images"], names[f"{part}_labels"]
        if images.ndim != 3 or images.shape[1:] != (side, side) or images.dtype != np.uint8:
            raise ValueError(
                f"{where}: {image_name} must hold uint8 images of shape (N, {side}, {side}); "
                f"got {images.dtype} of shape {images.shape}."
            )
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{where}: {label_name} must hold integer labels of shape (N,); "
                f"got {labels.dtype} of shape {labels.shape}."
            )
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{where}: image and label counts differ: {image_name} has {images.shape[0]} images, "
                f"{label_name} has {labels.shape[0]} labels."
            )
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(
                f"{where}: {label_name} must hold labels in 0..{k - 1}; "
                f"got values from {labels.min()} to {labels.max()}."
            )


def _to_split(images: np.ndarray, labels: np.ndarray, num_classes: int) -> Split:
    """uint8 (N, H, W) -> float32 (N, H, W, 1) in [0, 1]; labels -> int32 and one-hot contexts."""
    x = images.astype(np.float32)[..., None]
    x /= np.float32(255)
    return Split.from_labels(x, labels.astype(np.int32), num_classes)
