"""Evaluate a jitted function over a large array in fixed-size chunks, on every device.

Every chunk has the same shape (the last one is padded by repeating row 0 and the padding is
cut off afterwards), so the function compiles once whatever N is, and peak memory is bounded
by ``batch_size`` rows. The chunk size is rounded up to a multiple of the device count and
each chunk is split over the devices (``fpn_jax.runtime.mesh``, ``fpn_jax.parallel``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from fpn_jax.runtime import agreement, mesh
from fpn_jax.typing import Array


def map_in_chunks(fn: Callable[..., Array], *arrays: Array, batch_size: int) -> Array:
    """``concatenate([fn(*chunk) for chunk in chunks(arrays)])`` along axis 0.

    Args:
      fn: maps arrays of ``size`` rows to one array of ``size`` rows, where ``size`` is
        ``min(batch_size, N)`` rounded up to a multiple of the device count.
      *arrays: arrays with the same number of rows N (N = 0 gives an empty result).
      batch_size: rows per call (before rounding).
    """
    n = arrays[0].shape[0]
    if mesh.several_processes():  # several processes: all must take the same chunks
        agreement.check_same(arrays, what="the input", where="fpn-jax on several processes", sample=64)
    if n == 0:
        one = [jax.ShapeDtypeStruct((mesh.padded(1),) + a.shape[1:], a.dtype) for a in arrays]
        out = jax.eval_shape(fn, *one)
        return jnp.zeros((0,) + out.shape[1:], out.dtype)
    size = mesh.padded(min(batch_size, n))
    outputs = []
    for start in range(0, n, size):
        chunk = [a[start : start + size] for a in arrays]
        rows = chunk[0].shape[0]
        if rows < size:
            chunk = [jnp.concatenate([c, jnp.repeat(c[:1], size - rows, axis=0)]) for c in chunk]
        outputs.append(mesh.call_on_rows(fn, *chunk)[:rows])
    return jnp.concatenate(outputs, axis=0)
