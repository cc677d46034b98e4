"""Labelled data sets held in host memory: ``Split`` (inputs, contexts, labels) and ``Dataset``.

A split carries

* ``inputs``: (N, *item_shape) float32 examples (images, point clouds...);
* ``context``: (N, C) float32 conditioning rows: one-hot classes or multi-hot attributes;
* ``labels``: (N,) int32 class indices where the data set has classes (else None).

The range of the inputs' values belongs to the data set (``Dataset.value_range``: (0, 1)
for MNIST pixels, (-1, 1) for CelebA in MSP's preprocessing, None for point clouds).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fpn_jax import validation as checks

__all__ = ["Dataset", "DatasetUnavailableError", "Normalization", "Split", "subset"]


class DatasetUnavailableError(RuntimeError):
    """No source could provide the dataset; the message says what to do."""


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split of a data set, held in host memory.

    Attributes:
      inputs: (N, *item_shape) float32 examples; (N, 28, 28, 1) for MNIST.
      context: (N, C) float32 conditioning rows (one-hot classes or multi-hot attributes).
      labels: (N,) int32 class indices, or None for a data set without classes.
    """

    inputs: np.ndarray
    context: np.ndarray
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = np.shape(self.inputs)[0] if np.ndim(self.inputs) else None
        context = np.asarray(self.context)
        if context.ndim != 2 or not np.issubdtype(context.dtype, np.floating):
            raise ValueError(
                "Split: `context` must be a 2-D float array of shape (N, C) (one-hot or multi-hot rows); "
                f"got shape {context.shape} and dtype {context.dtype}."
            )
        rows = {"inputs": n, "context": context.shape[0]}
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"Split: `labels` must be integer class indices; got dtype {labels.dtype}.")
            if labels.ndim != 1:
                raise ValueError(f"Split: `labels` must be a 1-D array of shape (N,); got shape {labels.shape}.")
            rows["labels"] = labels.shape[0]
        if n is None or len(set(rows.values())) > 1:
            described = ", ".join(f"`{k}` has shape {np.shape(getattr(self, k))}" for k in rows)
            raise ValueError(
                f"Split: `inputs`, `context` and `labels` must have the same number of rows N; {described}."
            )

    @classmethod
    def from_labels(cls, inputs: np.ndarray, labels: np.ndarray, num_classes: int) -> Split:
        """A split whose context is the one-hot encoding of integer ``labels`` in [0, num_classes)."""
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"Split.from_labels: `labels` must be a 1-D integer array; got shape {labels.shape} "
                f"and dtype {labels.dtype}."
            )
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"Split.from_labels: `labels` must lie in [0, {num_classes}); got values in "
                f"[{labels.min()}, {labels.max()}]."
            )
        context = np.eye(num_classes, dtype=np.float32)[labels]
        return cls(inputs=inputs, context=context, labels=labels.astype(np.int32))

    def take(self, rows: np.ndarray) -> Split:
        """The split restricted to ``rows`` (indices or a boolean mask)."""
        return Split(
            inputs=self.inputs[rows], context=self.context[rows],
            labels=None if self.labels is None else self.labels[rows],
        )

    def __len__(self) -> int:
        return int(np.shape(self.context)[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Normalization:
    """An affine normalisation of the inputs, ``x_normalised = (x - mean) / std``.

    ``mean`` and ``std`` broadcast against one example (e.g. (1, 3) and (1, 1) for point
    clouds normalised by a per-axis mean and one scalar std, as PointFlow does).
    """

    mean: np.ndarray
    std: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / std``."""
        return (x - self.mean) / self.std

    def invert(self, x: np.ndarray) -> np.ndarray:
        """``x * std + mean``: back to the data's own units."""
        return x * self.std + self.mean


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A data set's three splits.

    Attributes:
      train: the training split.
      validation: held out from the training data (for early stopping / model choice).
      test: the data set's official test split, untouched.
      num_classes: number of classes (labels lie in [0, num_classes)), or None without classes.
      value_range: ``(low, high)`` of the inputs' values, or None when unbounded.
      context_names: the name of each context column (class or attribute names), if known.
      normalization: how the inputs were normalised (None: they are in their own units).
    """

    train: Split
    validation: Split
    test: Split
    num_classes: int | None
    value_range: tuple[float, float] | None = (0.0, 1.0)
    context_names: tuple[str, ...] | None = None
    normalization: Normalization | None = None

    @property
    def context_features(self) -> int:
        """C, the width of the context rows."""
        return int(self.train.context.shape[1])


def subset(split: Split, n: int, *, seed: int = 0, balanced: bool = True) -> Split:
    """Takes ``n`` examples of a split, for quick runs and tests.

    With ``balanced=True`` (and labels) the classes are visited round-robin (each in a seeded random
    order), so every class gets ``n // C`` or ``n // C + 1`` examples while it has them; a
    class that runs out leaves its share to the others. With ``balanced=False`` the examples
    are a plain seeded random draw (so are those of a split without labels). The result keeps the split's order.

    Args:
      split: the split to draw from.
      n: number of examples, in [0, N].
      seed: seed of the draw.
      balanced: equal counts per class (as far as the split allows).

    Returns:
      A ``Split`` of n rows.

    Raises:
      TypeError: ``split`` is not a ``Split``.
      ValueError: ``n`` is negative or larger than the split, or ``seed`` is not an integer.
    """
    if not isinstance(split, Split):
        raise TypeError(f"subset: argument `split` must be a fpn_jax.data.Split; got {type(split).__name__}.")
    n = checks.positive_int(n, name="n", where="subset", allow_zero=True)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"subset: `seed` must be an integer; got {seed!r}.")
    if n > len(split):
        raise ValueError(f"subset: `n` must be at most the split's size {len(split)}; got {n}.")
    rng = np.random.default_rng(int(seed))
    order = rng.permutation(len(split))
    if balanced and split.labels is not None:
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
    return split.take(chosen)


