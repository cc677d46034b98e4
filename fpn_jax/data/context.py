"""Contexts: the conditioning rows ``y`` given to the flows.

A context is a float (N, C) array: one-hot rows for classes (MNIST, ShapeNet), multi-hot
rows for attributes (CelebA), or any real-valued features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fpn_jax import validation as checks
from fpn_jax.typing import ArrayLike, Context, Labels


def one_hot(labels: Labels | ArrayLike, num_classes: int) -> Context:
    """Integer class labels (N,) → float32 one-hot rows (N, num_classes).

    Raises:
      ValueError: labels that are not a 1-D integer array, or (for concrete arrays) a label
        outside [0, num_classes), naming the first offending position.
    """
    num_classes = checks.positive_int(num_classes, name="num_classes", where="one_hot")
    if not hasattr(labels, "dtype"):
        labels = np.asarray(labels)
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"one_hot: argument `labels` must be a 1-D integer array of class indices; "
            f"got shape {tuple(labels.shape)} and dtype {labels.dtype}."
        )
    if not checks.is_traced(labels):
        host = np.asarray(labels)
        bad = np.flatnonzero((host < 0) | (host >= num_classes))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"one_hot: argument `labels` must lie in [0, {num_classes}); "
                f"labels[{i}] = {int(host[i])} ({bad.size} out of range in all)."
            )
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
