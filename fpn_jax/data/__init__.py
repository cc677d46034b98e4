"""Data sets: ``Split`` / ``Dataset`` (inputs, contexts, labels, value range), MNIST, contexts.

``Split`` and ``Dataset`` (``data.base``) are general; ``load_mnist`` (``data.mnist``) reads
MNIST from IDX files (``data.idx``) or tensorflow-datasets; ``one_hot`` (``data.context``)
turns class labels into context rows.
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
from fpn_jax.data.idx import IDXFormatError, read_idx
from fpn_jax.data.mnist import MNIST_FILES, load_mnist
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
    "MNIST_FILES",
    "SHAPENET_CATEGORIES",
    "SYNTHETIC_CATEGORIES",
    "CelebA",
    "CelebAFormatError",
    "CelebASplit",
    "Dataset",
    "DatasetUnavailableError",
    "IDXFormatError",
    "Normalization",
    "Split",
    "binarize",
    "center_crop_box",
    "load_celeba_arrays",
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
