"""Data sets: ``Split`` / ``Dataset`` (inputs, contexts, labels, value range), MNIST, contexts.

``Split`` and ``Dataset`` (``data.base``) are general; ``load_mnist`` (``data.mnist``) reads
MNIST from IDX files (``data.idx``) or tensorflow-datasets; ``one_hot`` (``data.context``)
turns class labels into context rows.
``load_shapenet`` (``data.shapenet``) reads ShapeNetCore.v2.PC15k point clouds as PointFlow does;
``write_synthetic_shapenet`` (``data.synthetic_shapes``) writes an offline stand-in of the same layout.
"""

from fpn_jax.data.base import Dataset, DatasetUnavailableError, Normalization, Split, subset
from fpn_jax.data.context import one_hot
from fpn_jax.data.idx import IDXFormatError, read_idx
from fpn_jax.data.mnist import MNIST_FILES, load_mnist
from fpn_jax.data.shapenet import SHAPENET_CATEGORIES, load_shapenet
from fpn_jax.data.synthetic_shapes import SYNTHETIC_CATEGORIES, write_synthetic_shapenet

__all__ = [
    "MNIST_FILES",
    "SHAPENET_CATEGORIES",
    "SYNTHETIC_CATEGORIES",
    "Dataset",
    "DatasetUnavailableError",
    "IDXFormatError",
    "Normalization",
    "Split",
    "load_mnist",
    "load_shapenet",
    "one_hot",
    "read_idx",
    "subset",
    "write_synthetic_shapenet",
]
