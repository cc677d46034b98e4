"""Evaluate a jitted function over a large array in fixed-size chunks.

Every chunk has the same shape (the last one is padded by repeating row 0 and the padding is
cut off afterwards), so the function compiles once whatever N is, and peak memory is bounded
by ``batch_size`` rows.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def map_in_chunks(fn: Callable[..., Array], *arrays: Array, batch_size: int) -> Array:
    """``concatenate([fn(*chunk) for chunk in chunks(arrays)])`` along axis 0.

    Args:
      fn: maps arrays of ``batch_size`` rows to one array of ``batch_size`` rows.
      *arrays: arrays with the same number of rows N.
      batch_size: rows per call.
    """
    n = arrays[0].shape[0]
    size = min(batch_size, n)
    outputs = []
    for start in range(0, n, size):
        chunk = [a[start : start + size] for a in arrays]
        rows = chunk[0].shape[0]
        if rows < size:
            chunk = [jnp.concatenate([c, jnp.repeat(c[:1], size - rows, axis=0)]) for c in chunk]
        outputs.append(fn(*chunk)[:rows])
    return jnp.concatenate(outputs, axis=0)
