"""Data sets: ``Split`` / ``Dataset`` (inputs, contexts, labels, value range), MNIST, contexts.

``Split`` and ``Dataset`` (``data.base``) are general; ``load_mnist`` and ``load_fashion_mnist``
(``data.mnist``) read MNIST and Fashion-MNIST from their IDX files (``data.idx``), downloaded once
into ``$FPN_JAX_HOME/data`` when no folder is given (``data.download``: mirrors, checksums, atomic
writes), or from tensorflow-datasets; ``one_hot`` (``data.context``) turns class labels into context rows.
``load_shapenet`` (``data.shapenet``) reads ShapeNetCore.v2.PC15k point clouds as PointFlow does;
``write_synthetic_shapenet`` (``data.synthetic_shapes``) writes an offline stand-in of the same layout.
``CelebA`` (``data.celeba``) streams CelebA from torchvision's layout or tfds with MSP's preprocessing;
``load_celeba_arrays`` reads it into memory and ``write_synthetic_celeba`` writes an offline stand-in.
``data.morpho`` measures digits as Morpho-MNIST does (thickness, slant, width, ...; scikit-image, the
``experiments`` extra) and ``morpho_dataset`` gives MNIST multi-hot contexts [digit, binary attributes].
"""

from fpn_jax.data.base import Dataset, DatasetUnavailableError, Normalization, Split, subset
from fpn_jax.data.celeba import (
    CELEBA_ATTRIBUTES,
    CelebA,
    CelebAFormatError,
    CelebASplit,
    center_crop_box,
    load_celeba_arrays,
    preprocess_celeba_image,
    write_synthetic_celeba,
)
from fpn_jax.data.context import one_hot
from fpn_jax.data.download import DownloadError, RemoteFile, data_home
from fpn_jax.data.idx import IDXFormatError, read_idx
from fpn_jax.data.mnist import (
    FASHION_MNIST_CLASSES,
    IDX_DATASETS,
    MNIST_CLASSES,
    MNIST_FILES,
    IDXDataset,
    download_idx_dataset,
    load_fashion_mnist,
    load_idx_dataset,
    load_mnist,
)
from fpn_jax.data.morpho import (
    binarize,
    measure,
    measure_dataset,
    medians,
    morpho_dataset,
)
from fpn_jax.data.shapenet import SHAPENET_CATEGORIES, load_shapenet
from fpn_jax.data.synthetic_shapes import SYNTHETIC_CATEGORIES, write_synthetic_shapenet

__all__ = [
    "CELEBA_ATTRIBUTES",
    "FASHION_MNIST_CLASSES",
    "IDX_DATASETS",
    "MNIST_CLASSES",
    "MNIST_FILES",
    "SHAPENET_CATEGORIES",
    "SYNTHETIC_CATEGORIES",
    "CelebA",
    "CelebAFormatError",
    "CelebASplit",
    "Dataset",
    "DatasetUnavailableError",
    "DownloadError",
    "IDXDataset",
    "IDXFormatError",
    "Normalization",
    "RemoteFile",
    "Split",
    "binarize",
    "center_crop_box",
    "data_home",
    "download_idx_dataset",
    "load_celeba_arrays",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_mnist",
    "load_shapenet",
    "measure",
    "measure_dataset",
    "medians",
    "morpho_dataset",
    "one_hot",
    "preprocess_celeba_image",
    "read_idx",
    "subset",
    "write_synthetic_celeba",
    "write_synthetic_shapenet",
]
