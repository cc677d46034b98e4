"""Data sets: ``Split`` / ``Dataset`` (inputs, contexts, labels, value range), MNIST, contexts.

``Split`` and ``Dataset`` (``data.base``) are general; ``load_mnist`` (``data.mnist``) reads
MNIST from IDX files (``data.idx``) or tensorflow-datasets; ``one_hot`` (``data.context``)
turns class labels into context rows.
"""

from fpn_jax.data.base import Dataset, DatasetUnavailableError, Normalization, Split, subset
from fpn_jax.data.context import one_hot
from fpn_jax.data.idx import IDXFormatError, read_idx
from fpn_jax.data.mnist import MNIST_FILES, load_mnist

__all__ = [
    "MNIST_FILES",
    "Dataset",
    "DatasetUnavailableError",
    "IDXFormatError",
    "Normalization",
    "Split",
    "load_mnist",
    "one_hot",
    "read_idx",
    "subset",
]
