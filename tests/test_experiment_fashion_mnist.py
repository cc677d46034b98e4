"""The MNIST experiment on Fashion-MNIST: `--dataset`, its own run folder, model cache, data and report title.

There is no Fashion-MNIST copy on these machines: the data come from generated IDX files
(noise images, balanced labels), which exercises the plumbing, not the accuracy.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fpn_jax import autoencoders
from fpn_jax.data import FASHION_MNIST_CLASSES, MNIST_FILES
from fpn_jax.experiments import mnist

ROOT = Path(__file__).resolve().parents[1]


def _command_line():
    spec = importlib.util.spec_from_file_location("mnist_command_line", ROOT / "experiments" / "mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dataset_flag_run_folders_and_model_caches_never_collide():
    cli = _command_line()
    fashion, mnist_full = cli.parse(["--dataset", "fashion_mnist"]), cli.parse([])
    assert fashion == mnist.Config(dataset="fashion_mnist") and mnist_full.dataset == "mnist"
    assert cli.parse(["--dataset", "mnist"]) == mnist.Config()
    # Run folders: the defaults name the dataset; an explicit --out is kept.
    assert (mnist_full.out, fashion.out) == ("runs/mnist", "runs/fashion_mnist")
    assert cli.parse(["--dataset", "fashion_mnist", "--quick"]).out == "runs/fashion_mnist-quick"
    assert cli.parse(["--dataset", "fashion_mnist", "--quick"]) == mnist.quick(mnist.Config(dataset="fashion_mnist"))
    assert cli.parse(["--dataset", "fashion_mnist", "--out", "x"]).out == "x"
    assert dataclasses.replace(mnist.Config(), dataset="fashion_mnist").out == "runs/fashion_mnist"
    # Model caches: MNIST's names are unchanged (users have them cached); Fashion-MNIST's sit in a subfolder.
    assert mnist_full.model_cache == autoencoders.cache_dir()
    assert fashion.model_cache == autoencoders.cache_dir() / "fashion_mnist"
    assert cli.parse(["--dataset", "fashion_mnist", "--cache-dir", "c"]).model_cache == Path("c/fashion_mnist")
    assert cli.parse(["--cache-dir", "c"]).model_cache == Path("c")
    assert cli.parse(["--dataset", "fashion_mnist", "--quick"]).model_cache == Path(
        "runs/fashion_mnist-quick/cache/fashion_mnist")
    with pytest.raises(ValueError, match="`dataset` must be one of .*got 'cifar10'"):
        mnist.Config(dataset="cifar10")


def _write_generated(folder: Path, n_train: int, n_test: int) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True)
    for role, array in arrays.items():
        raw = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.tobytes()
        (folder / f"{MNIST_FILES[role]}.gz").write_bytes(gzip.compress(raw, compresslevel=1))


def test_load_data_reads_the_chosen_dataset(tmp_path, monkeypatch):
    # The rest of the pipeline does not depend on the dataset; a tiny end-to-end run of it on these
    # files (conv_ae, one C-MAF) takes about 70 s on two CPU cores, too long for the suite.
    monkeypatch.setenv("FPN_JAX_HOME", str(tmp_path / "home"))  # nothing may be downloaded or cached
    data_dir = tmp_path / "fashion"
    _write_generated(data_dir, n_train=10_300, n_test=200)  # 10k go to validation, as in the real run
    config = dataclasses.replace(mnist.quick(mnist.Config(dataset="fashion_mnist", data_dir=str(data_dir))),
                                 subset=(200, 100, 100))
    data = mnist.load_data(config)
    assert data.context_names == FASHION_MNIST_CLASSES and data.num_classes == 10
    assert (len(data.train), len(data.validation), len(data.test)) == (200, 100, 100)
    assert np.bincount(data.train.labels, minlength=10).tolist() == [20] * 10
    assert mnist.load_data(dataclasses.replace(config, dataset="mnist")).context_names == tuple("0123456789")
    assert not (tmp_path / "home").exists()
