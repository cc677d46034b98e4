"""Do the processes of a multi-process run hold the same values? Digests compared across processes.

The helpers behind ``fpn_jax.runtime.distributed`` (and the mesh's checks of inference
inputs): a digest of arrays is 8 bytes of BLAKE2b over their shapes, dtypes and values, and
one small all-gather (``jax.experimental.multihost_utils.process_allgather``) compares the
processes' digests. In one process everything here is trivial.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

__all__ = ["check_same", "digest", "gather_ints", "hash_bytes"]


def digest(tree: Any, *, sample: int | None = None) -> np.ndarray:
    """Shapes, dtypes and values of ``tree``'s leaves, hashed: (2,) int32 (a small gather).

    ``sample``: hash at most about that many evenly spaced rows of each leaf (a cheap check).
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(str(jax.tree.structure(tree)).encode())
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            continue  # already one global array: the same in every process by construction
        shape = tuple(np.shape(leaf))
        h.update(f"{shape}{np.result_type(leaf)}".encode())
        if sample is not None and shape and shape[0] > sample:
            leaf = leaf[:: -(-shape[0] // sample)]
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return hash_bytes(h.digest())


def hash_bytes(data: bytes) -> np.ndarray:
    """An 8-byte hash of ``data`` as (2,) int32 (JAX's 32-bit integers carry it intact)."""
    return np.frombuffer(hashlib.blake2b(data, digest_size=8).digest(), np.uint32).view(np.int32)


def _is_local(x: Any) -> bool:
    """True for a numpy array, or a jax.Array on this process's devices only."""
    return isinstance(x, np.ndarray) or (isinstance(x, jax.Array) and x.is_fully_addressable)


def gather_ints(values: np.ndarray) -> np.ndarray:
    """(process_count, ...) ``values`` of every process (an int32 vector each)."""
    return np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int32)))


def check_same(tree: Any, *, what: str, where: str, sample: int | None = None) -> None:
    """Raises ValueError unless ``tree`` (arrays, keys) is the same in every process.

    A no-op in one process, and for global arrays. ``sample``: compare at most about that many
    rows of each leaf.
    """
    if jax.process_count() == 1 or not any(_is_local(x) for x in jax.tree.leaves(tree)):
        return  # global arrays are one value in every process by construction
    digests = gather_ints(digest(tree, sample=sample))
    differ = [int(p) for p in np.flatnonzero((digests != digests[0]).any(axis=1))]
    if differ:
        raise ValueError(
            f"{where}: {what} differs between processes (process 0 and process(es) {differ}); every "
            "process of a multi-process run must pass the same values here (the same seed, the same "
            "model). For per-process work use `with fpn_jax.runtime.distributed.local_devices():`."
        )
