"""Data loading: the IDX reader, MNIST from the shared IDX files, the tfds fallback, subsets.

The shared MNIST copy (``../shared/data/mnist`` next to the repository) is checked against
its README (byte MD5s, class counts); everything else runs on tiny IDX files written here.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from fpn_jax import data
from fpn_jax.data import (
    DatasetUnavailableError,
    IDXFormatError,
    Split,
    load_fashion_mnist,
    load_mnist,
    read_idx,
    subset,
)
from fpn_jax.data import mnist as mnist_source

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
HAVE_SHARED = all((SHARED_MNIST / f"{name}.gz").is_file() for name in data.MNIST_FILES.values())
needs_shared = pytest.mark.skipif(
    not HAVE_SHARED, reason=f"shared MNIST IDX files not found in {SHARED_MNIST}"
)

# From ../shared/data/mnist/README.md.
README_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
README_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
README_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

_TYPE_CODES = {
    np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E
}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array`` (header + big-endian data)."""
    code = _TYPE_CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_mnist(
    folder: Path,
    n_train: int = 30,
    n_test: int = 12,
    *,
    side: int = 28,
    label_shift: int = 0,
    gz: tuple[bool, ...] = (True, False, False, True),
) -> dict[str, np.ndarray]:
    """Writes four tiny MNIST-like IDX files (some gzipped, some not); returns the arrays by role."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10 + label_shift).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    arrays["train_images"][0, 0, 0], arrays["train_images"][1, 0, 0] = 0, 255
    folder.mkdir(parents=True, exist_ok=True)
    for (role, name), compress in zip(data.MNIST_FILES.items(), gz, strict=True):
        write_idx(folder / (name + (".gz" if compress else "")), arrays[role], gz=compress)
    return arrays


def row_keys(images: np.ndarray, labels: np.ndarray) -> collections.Counter:
    """Multiset of (image bytes, label), images given as float in [0, 1] or uint8."""
    if images.dtype != np.uint8:
        images = np.rint(images * 255).astype(np.uint8)
    flat = images.reshape(len(images), -1)
    return collections.Counter(zip(map(bytes, flat), labels.tolist(), strict=True))


# --------------------------------------------------------------------------- shared MNIST


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(SHARED_MNIST)


@needs_shared
@pytest.mark.parametrize("name", list(README_MD5))
def test_shared_files_match_readme_md5(name):
    path = SHARED_MNIST / f"{name}.gz"
    assert hashlib.md5(gzip.decompress(path.read_bytes())).hexdigest() == README_MD5[name]
    # The reader loses nothing: re-encoding what it returns gives the same bytes.
    assert hashlib.md5(idx_bytes(read_idx(path))).hexdigest() == README_MD5[name]


@needs_shared
def test_shared_mnist_shapes_dtypes_range(mnist):
    assert mnist.num_classes == 10 and mnist.context_features == 10 and mnist.value_range == (0.0, 1.0)
    for split, n in ((mnist.train, 50_000), (mnist.validation, 10_000), (mnist.test, 10_000)):
        assert split.inputs.shape == (n, 28, 28, 1) and split.inputs.dtype == np.float32
        assert split.labels.shape == (n,) and split.labels.dtype == np.int32
        assert split.context.dtype == np.float32
        np.testing.assert_array_equal(split.context, np.eye(10, dtype=np.float32)[split.labels])
        assert len(split) == n
        assert split.inputs.min() == 0.0 and split.inputs.max() == 1.0
    # Exactly k / 255 for the stored bytes k.
    k = mnist.test.inputs * 255
    np.testing.assert_array_equal(k, np.rint(k))


@needs_shared
def test_shared_mnist_class_counts(mnist):
    all_train = np.concatenate([mnist.train.labels, mnist.validation.labels])
    train_counts = np.bincount(all_train, minlength=10)
    assert train_counts.tolist() == README_TRAIN_COUNTS
    assert np.bincount(mnist.test.labels, minlength=10).tolist() == README_TEST_COUNTS


@needs_shared
def test_shared_validation_is_carved_from_train(mnist):
    raw_x = read_idx(SHARED_MNIST / "train-images-idx3-ubyte.gz")
    raw_y = read_idx(SHARED_MNIST / "train-labels-idx1-ubyte.gz")
    train = row_keys(mnist.train.inputs, mnist.train.labels)
    val = row_keys(mnist.validation.inputs, mnist.validation.labels)
    # train + validation is exactly the 60k training set (as a multiset: no row lost or doubled).
    assert train + val == row_keys(raw_x, raw_y)
    # Disjoint: no (image, label) pair in both, except true duplicates inside the raw file.
    raw = row_keys(raw_x, raw_y)
    assert all(raw[key] > 1 for key in set(train) & set(val))
    # The test split is the t10k files, untouched and in order.
    test_x = read_idx(SHARED_MNIST / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(mnist.test.inputs[..., 0], test_x / np.float32(255))


@needs_shared
def test_shared_split_is_seeded(mnist):
    again = load_mnist(SHARED_MNIST, seed=0)
    np.testing.assert_array_equal(again.validation.labels, mnist.validation.labels)
    np.testing.assert_array_equal(again.validation.inputs, mnist.validation.inputs)
    other = load_mnist(SHARED_MNIST, seed=1)
    assert len(other.train) == 50_000 and len(other.validation) == 10_000
    val0 = row_keys(mnist.validation.inputs, mnist.validation.labels)
    val1 = row_keys(other.validation.inputs, other.validation.labels)
    # Two random 10k draws from 60k share about 1/6 of their rows.
    assert 1_000 < sum((val0 & val1).values()) < 2_500


@needs_shared
def test_shared_balanced_subset(mnist):
    small = subset(mnist.test, 100, seed=3)
    assert small.inputs.shape == (100, 28, 28, 1)
    assert np.bincount(small.labels, minlength=10).tolist() == [10] * 10


# --------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(7, dtype=np.uint8),
        np.arange(-12, 12, dtype=np.int8).reshape(2, 3, 4),
        np.arange(-300, 300, 100, dtype=np.int16).reshape(2, 3),
        np.array([[-(2**31), 2**31 - 1]], dtype=np.int32),
        np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 2, 2),
        np.array([np.pi, -np.e], dtype=np.float64),
        np.zeros((0, 28, 28), dtype=np.uint8),
    ],
    ids=lambda a: f"{a.dtype}{a.shape}",
)
def test_read_idx_roundtrip(tmp_path, array, gz):
    out = read_idx(write_idx(tmp_path / ("x.idx.gz" if gz else "x.idx"), array, gz=gz))
    assert out.dtype == array.dtype and out.dtype.isnative
    assert out.shape == array.shape
    np.testing.assert_array_equal(out, array)
    out[...] = 0  # writable, not a view of the file's bytes


def test_read_idx_detects_gzip_by_content(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "plain-name", array, gz=True)), array)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "odd.gz", array, gz=False)), array)


def test_read_idx_missing_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(path))}.*does not exist"):
        read_idx(path)
    with pytest.raises(FileNotFoundError, match="is a directory"):
        read_idx(tmp_path)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_read_idx_truncated_data(tmp_path, gz):
    raw = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))[:-5]
    path = tmp_path / "imgs"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    need, got = 16 + 3 * 28 * 28, 16 + 3 * 28 * 28 - 5
    expected = f"{re.escape(str(path))} is truncated.*needs {need} bytes.*got {got}"
    with pytest.raises(IDXFormatError, match=expected):
        read_idx(path)


def test_read_idx_truncated_header_and_gzip(tmp_path):
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00")
    expected = f"{re.escape(str(short))} is truncated: expected at least 4 bytes.*got 2"
    with pytest.raises(IDXFormatError, match=expected):
        read_idx(short)
    header = tmp_path / "header"
    header.write_bytes(idx_bytes(np.zeros((2, 2, 2), np.uint8))[:10])  # 3 dims need 16 header bytes
    expected = f"{re.escape(str(header))} is truncated: expected 16 header bytes.*got 10"
    with pytest.raises(IDXFormatError, match=expected):
        read_idx(header)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))[:-20])
    expected = f"{re.escape(str(cut))} is a truncated or corrupt gzip file"
    with pytest.raises(IDXFormatError, match=expected):
        read_idx(cut)


@pytest.mark.parametrize("magic", [b"\x00\x01\x08\x01", b"\x00\x00\x07\x01", b"PK\x03\x04"])
def test_read_idx_bad_magic(tmp_path, magic):
    path = tmp_path / "labels"
    path.write_bytes(magic + np.asarray([3], ">u4").tobytes() + b"\x01\x02\x03")
    expected = f"{re.escape(str(path))} is not an IDX file: bad magic number 0x{magic.hex()}"
    with pytest.raises(IDXFormatError, match=expected):
        read_idx(path)


def test_read_idx_trailing_bytes(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.arange(4, dtype=np.uint8)) + b"\x00")
    expected = f"{re.escape(str(path))} has trailing bytes.*needs 12 bytes.*got 13"
    with pytest.raises(IDXFormatError, match=expected):
        read_idx(path)


# --------------------------------------------------------------------------- load_mnist on tiny files


def test_load_mnist_tiny_idx(tmp_path):
    arrays = write_mnist(tmp_path, n_train=30, n_test=12)
    ds = load_mnist(tmp_path, validation_size=10, seed=4, source="idx")
    assert ds.train.inputs.shape == (20, 28, 28, 1) and ds.validation.inputs.shape == (10, 28, 28, 1)
    assert ds.train.inputs.dtype == np.float32 and ds.train.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.test.inputs[..., 0], arrays["test_images"] / np.float32(255))
    np.testing.assert_array_equal(ds.test.labels, arrays["test_labels"])
    carved = row_keys(ds.train.inputs, ds.train.labels)
    carved += row_keys(ds.validation.inputs, ds.validation.labels)
    assert carved == row_keys(arrays["train_images"], arrays["train_labels"])
    # "auto" finds the same files; validation_size=0 keeps all of train.
    full = load_mnist(tmp_path, validation_size=0)
    np.testing.assert_array_equal(full.train.labels, arrays["train_labels"])
    assert full.validation.inputs.shape == (0, 28, 28, 1)


def test_load_mnist_mismatched_counts(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(29, np.uint8), gz=False)
    expected = "counts differ: .*train-images-idx3-ubyte.* 30 images, .*train-labels-idx1-ubyte.* 29 labels"
    with pytest.raises(ValueError, match=expected):
        load_mnist(tmp_path)


def test_load_mnist_rejects_bad_labels_and_shapes(tmp_path):
    write_mnist(tmp_path / "labels", label_shift=1)  # labels 1..10
    expected = "train-labels-idx1-ubyte.*labels in 0..9; got values from 1 to 10"
    with pytest.raises(ValueError, match=expected):
        load_mnist(tmp_path / "labels")
    write_mnist(tmp_path / "side", side=27)
    expected = r"train-images-idx3-ubyte.*\(N, 28, 28\); got uint8 of shape \(30, 27, 27\)"
    with pytest.raises(ValueError, match=expected):
        load_mnist(tmp_path / "side")


def test_load_mnist_missing_files(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    for source in ("auto", "idx"):  # a partial set is an error, not a silent switch to tfds
        expected = f"missing from {re.escape(str(tmp_path))}: t10k-labels-idx1-ubyte"
        with pytest.raises(FileNotFoundError, match=expected):
            load_mnist(tmp_path, source=source)
    empty = tmp_path / "empty"
    empty.mkdir()
    expected = "train-images-idx3-ubyte.*train-labels-idx1-ubyte.*t10k-images"
    with pytest.raises(FileNotFoundError, match=expected):
        load_mnist(empty, source="idx")


def test_load_mnist_idx_without_data_dir_reads_the_cache_only(tmp_path, monkeypatch):
    """source='idx' never downloads: without data_dir it reads the cache folder, or says what is missing."""
    monkeypatch.setenv("FPN_JAX_HOME", str(tmp_path / "home"))
    cache = tmp_path / "home" / "data" / "mnist"
    expected = f"missing from {re.escape(str(cache))}: train-images-idx3-ubyte.*source='download' or 'auto'"
    with pytest.raises(FileNotFoundError, match=expected):
        load_mnist(None, source="idx")
    assert not cache.exists()
    arrays = write_mnist(cache)
    ds = load_mnist(source="idx", validation_size=5)
    np.testing.assert_array_equal(ds.test.labels, arrays["test_labels"])


def test_load_mnist_argument_errors(tmp_path):
    write_mnist(tmp_path, n_train=30)
    expected = "`validation_size` must be smaller than the 30 training images; got 30"
    with pytest.raises(ValueError, match=expected):
        load_mnist(tmp_path, validation_size=30)
    with pytest.raises(ValueError, match="`validation_size` must be an integer >= 0; got -1"):
        load_mnist(tmp_path, validation_size=-1)
    with pytest.raises(ValueError, match="`source` must be one of 'auto', 'idx', 'download', 'tfds'; got 'web'"):
        load_mnist(tmp_path, source="web")
    with pytest.raises(ValueError, match="`seed` must be an integer; got 0.5"):
        load_mnist(tmp_path, seed=0.5)


# --------------------------------------------------------------------------- Fashion-MNIST: the same files and code


@pytest.mark.parametrize("gz", [(True,) * 4, (False,) * 4], ids=["gz", "raw"])
def test_load_fashion_mnist_generated_idx(tmp_path, gz):
    arrays = write_mnist(tmp_path, n_train=40, n_test=20, gz=gz)
    ds = load_fashion_mnist(tmp_path, validation_size=10, seed=2)
    assert ds.num_classes == 10 and ds.context_names == data.FASHION_MNIST_CLASSES
    assert ds.context_names[0] == "T-shirt/top" and ds.context_names[9] == "Ankle boot"
    assert ds.train.inputs.shape == (30, 28, 28, 1) and ds.validation.inputs.shape == (10, 28, 28, 1)
    assert ds.test.inputs.dtype == np.float32 and ds.test.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.test.inputs[..., 0], arrays["test_images"] / np.float32(255))
    np.testing.assert_array_equal(ds.test.context, np.eye(10, dtype=np.float32)[arrays["test_labels"]])
    # One code path: MNIST read from the same files gives the same split, only the class names differ.
    same = load_mnist(tmp_path, validation_size=10, seed=2, source="idx")
    assert same.context_names == data.MNIST_CLASSES == tuple("0123456789")
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(same, split).inputs, getattr(ds, split).inputs)
        np.testing.assert_array_equal(getattr(same, split).labels, getattr(ds, split).labels)
    generic = data.load_idx_dataset("fashion_mnist", tmp_path, validation_size=10, seed=2)
    np.testing.assert_array_equal(generic.validation.labels, ds.validation.labels)


def test_load_fashion_mnist_checks_name_the_function_and_files(tmp_path):
    write_mnist(tmp_path / "labels", label_shift=1)
    expected = "load_fashion_mnist: .*train-labels-idx1-ubyte.*labels in 0..9; got values from 1 to 10"
    with pytest.raises(ValueError, match=expected):
        load_fashion_mnist(tmp_path / "labels")
    write_mnist(tmp_path / "part")
    (tmp_path / "part" / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST IDX file.*missing from .*: train-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path / "part")
    expected = r"load_idx_dataset: unknown data set 'kmnist'; known: \['fashion_mnist', 'mnist'\]"
    with pytest.raises(ValueError, match=expected):
        data.load_idx_dataset("kmnist", tmp_path)


def test_fashion_mnist_without_tensorflow_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_source, "_tensorflow_available", lambda: False)
    expected = "could not load Fashion-MNIST.*TensorFlow is not installed"
    with pytest.raises(DatasetUnavailableError, match=expected) as info:
        load_fashion_mnist(tmp_path, source="tfds")
    assert "--data-dir" in str(info.value) and "pip install tensorflow-cpu" in str(info.value)


def test_fashion_mnist_tfds_name(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(mnist_source, "_tensorflow_available", lambda: True)
    images, labels = np.zeros((12, 28, 28, 1), np.uint8), np.arange(12) % 10
    calls = []

    def fake_load(name, **kwargs):
        calls.append(name)
        return [(images, labels), (images[:4], labels[:4])]

    monkeypatch.setattr(tfds, "load", fake_load)
    ds = load_fashion_mnist(tmp_path, validation_size=2, source="tfds")
    assert calls == ["fashion_mnist"] and len(ds.train) == 10 and ds.context_names == data.FASHION_MNIST_CLASSES


# --------------------------------------------------------------------------- tfds fallback


def _assert_actionable(err: DatasetUnavailableError) -> None:
    message = str(err)
    assert "pip install tensorflow-cpu" in message
    assert "--data-dir" in message
    for name in data.MNIST_FILES.values():
        assert name in message


@pytest.mark.parametrize("source", ["auto", "tfds"])
def test_tfds_without_tensorflow_says_what_to_do(tmp_path, monkeypatch, source):
    monkeypatch.setattr(mnist_source, "_tensorflow_available", lambda: False)
    with pytest.raises(DatasetUnavailableError, match="TensorFlow is not installed") as info:
        load_mnist(tmp_path, source=source)
    _assert_actionable(info.value)
    if source == "auto":
        assert f"No MNIST IDX files in {tmp_path}" in str(info.value)
    # A plain message, not a chained traceback out of tensorflow_datasets.
    assert info.value.__cause__ is None and info.value.__context__ is None


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed")
def test_tfds_real_environment_without_tensorflow(tmp_path):
    with pytest.raises(DatasetUnavailableError) as info:
        load_mnist(tmp_path / "nowhere")
    _assert_actionable(info.value)
    assert "(the folder does not exist)" in str(info.value)


def test_tfds_failure_carries_reason(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(mnist_source, "_tensorflow_available", lambda: True)

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to reach storage.googleapis.com")

    monkeypatch.setattr(tfds, "load", offline)
    expected = "ConnectionError: Failed to reach storage.googleapis.com"
    with pytest.raises(DatasetUnavailableError, match=expected) as info:
        load_mnist(tmp_path, source="tfds")
    _assert_actionable(info.value)
    assert isinstance(info.value.__cause__, ConnectionError)


def test_tfds_path_converts_arrays(tmp_path, monkeypatch):
    """tfds.load(batch_size=-1, as_supervised=True) faked with numpy: the same conversion."""
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(mnist_source, "_tensorflow_available", lambda: True)
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    train_y = np.arange(40, dtype=np.int64) % 10
    test_x = rng.integers(0, 256, (10, 28, 28, 1), dtype=np.uint8)
    test_y = np.arange(10, dtype=np.int64)
    calls = []

    def fake_load(name, **kwargs):
        calls.append((name, kwargs))
        return [(train_x, train_y), (test_x, test_y)]

    monkeypatch.setattr(tfds, "load", fake_load)
    ds = load_mnist(tmp_path, validation_size=8)  # no IDX files in tmp_path: auto -> tfds
    kwargs = dict(split=["train", "test"], data_dir=str(tmp_path), batch_size=-1, as_supervised=True)
    assert calls == [("mnist", kwargs)]
    assert ds.train.inputs.shape == (32, 28, 28, 1) and ds.validation.inputs.shape == (8, 28, 28, 1)
    assert ds.train.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.test.inputs, test_x / np.float32(255))
    np.testing.assert_array_equal(ds.test.labels, test_y)


# --------------------------------------------------------------------------- Split and subset


def _labelled(inputs: np.ndarray, labels: np.ndarray, num_classes: int = 4) -> Split:
    return Split.from_labels(inputs, labels, num_classes)


def test_split_checks_rows():
    with pytest.raises(ValueError, match="same number of rows"):
        Split(inputs=np.zeros((3, 2)), context=np.zeros((3, 2), np.float32), labels=np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="same number of rows"):
        Split(inputs=np.zeros((3, 2)), context=np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="same number of rows"):
        _labelled(np.zeros((3, 2)), np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="`labels` must be a 1-D array"):
        Split(inputs=np.zeros((3, 2)), context=np.zeros((3, 2), np.float32), labels=np.zeros((3, 1), np.int32))
    with pytest.raises(ValueError, match=r"`context` must be a 2-D float array of shape \(N, C\)"):
        Split(inputs=np.zeros((3, 2)), context=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"`context` must be a 2-D float array.*dtype int32"):
        Split(inputs=np.zeros((3, 2)), context=np.zeros((3, 2), np.int32))


def test_split_from_labels_is_one_hot_and_multi_hot_contexts_are_allowed():
    labels = np.array([2, 0, 3, 3, 1], np.int64)
    split = Split.from_labels(np.zeros((5, 2), np.float32), labels, 4)
    assert split.context.dtype == np.float32 and split.labels.dtype == np.int32
    np.testing.assert_array_equal(split.context, np.eye(4, dtype=np.float32)[labels])
    np.testing.assert_array_equal(split.labels, labels)
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 4\); got values in \[0, 4\]"):
        Split.from_labels(np.zeros((2, 2)), np.array([0, 4]), 4)
    with pytest.raises(ValueError, match="`labels` must be a 1-D integer array"):
        Split.from_labels(np.zeros((2, 2)), np.array([0.0, 1.0]), 4)
    # Attributes (CelebA-like): multi-hot rows and no class labels.
    attributes = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]], np.float32)
    multi = Split(inputs=np.arange(3, dtype=np.float32)[:, None], context=attributes)
    assert multi.labels is None and len(multi) == 3
    taken = multi.take(np.array([2, 0]))
    np.testing.assert_array_equal(taken.context, attributes[[2, 0]])
    np.testing.assert_array_equal(taken.inputs[:, 0], [2.0, 0.0])
    assert taken.labels is None
    # A subset of a split without labels is a plain seeded draw, rows kept paired.
    drawn = subset(multi, 2, seed=0)
    np.testing.assert_array_equal(drawn.context, attributes[drawn.inputs[:, 0].astype(int)])


def test_subset_balanced_and_seeded():
    labels = np.repeat(np.arange(4), [50, 30, 2, 18]).astype(np.int32)
    split = _labelled(np.arange(100, dtype=np.float32)[:, None], labels)
    small = subset(split, 22, seed=1)
    # 22 over 4 classes: 6 or 5 each, but class 2 has only 2, so the others take up its share.
    counts = np.bincount(small.labels, minlength=4)
    assert counts.sum() == 22 and counts[2] == 2 and counts.max() - counts[[0, 1, 3]].min() <= 1
    # Rows stay paired and in the split's order.
    np.testing.assert_array_equal(split.labels[small.inputs[:, 0].astype(int)], small.labels)
    np.testing.assert_array_equal(small.context, np.eye(4, dtype=np.float32)[small.labels])
    assert np.all(np.diff(small.inputs[:, 0]) > 0)
    np.testing.assert_array_equal(subset(split, 22, seed=1).inputs, small.inputs)
    assert not np.array_equal(subset(split, 22, seed=2).inputs, small.inputs)
    assert len(subset(split, 0)) == 0 and len(subset(split, 100)) == 100


def test_subset_unbalanced_and_errors():
    split = _labelled(np.arange(20, dtype=np.float32)[:, None], np.zeros(20, np.int32))
    small = subset(split, 5, seed=0, balanced=False)
    assert len(small) == 5 and len(np.unique(small.inputs)) == 5
    with pytest.raises(ValueError, match="`n` must be at most the split's size 20; got 21"):
        subset(split, 21)
    with pytest.raises(ValueError, match="`n` must be an integer >= 0; got -1"):
        subset(split, -1)


def test_subset_and_split_argument_types():
    split = _labelled(np.zeros((4, 2), np.float32), np.arange(4, dtype=np.int32))
    with pytest.raises(TypeError, match="subset: argument `split` must be a fpn_jax.data.Split; got tuple"):
        subset((split.inputs, split.labels), 2)
    with pytest.raises(ValueError, match="subset: `seed` must be an integer; got 0.5"):
        subset(split, 2, seed=0.5)
    with pytest.raises(ValueError, match="Split: `labels` must be integer class indices; got dtype float32"):
        Split(inputs=np.zeros((2, 2)), context=np.zeros((2, 2), np.float32), labels=np.zeros(2, np.float32))
