"""Data parallelism over every device JAX sees, with JAX's own sharding.

All devices in use form a one-axis mesh, ``Mesh(devices, ("data",))``. Every compiled
program of fpn-jax (a training epoch, encoding, decoding, log-prob, sampling,
classification) gets

* its **rows** (a batch of latents, images, contexts) split along the ``data`` axis,
  ``NamedSharding(mesh, P("data"))``, so device ``i`` of ``d`` works on rows
  ``[i B/d, (i + 1) B/d)``;
* its **parameters** (and optimiser state, batch-norm statistics, the training set itself)
  replicated, ``NamedSharding(mesh, P())``.

``jax.jit`` partitions the program from those shardings (GSPMD): the sums in a mean loss,
in batch norm's batch statistics and in the gradient become all-reduces across devices,
so a step on ``d`` devices computes what the same step computes on one, up to the order of
float32 additions. There is one code path: one device is the ``d = 1`` case.

Batch sizes: a training batch must divide evenly, ``batch_size % d == 0`` (a ``ValueError``
says so otherwise: padding a batch would change the loss). Inference pads instead: rows
are padded up to a multiple of ``d`` (repeating row 0), computed, and the padding is cut
off, so any N works and row ``n``'s result does not depend on ``d``. Random draws
(sampling, a VAE's posterior samples, dropout) use JAX's partitionable threefry, whose
values do not depend on how the computation is sharded.

By default the mesh holds all of ``jax.devices()`` (8 cores on a Colab TPU, every GPU of
the machine). ``use_devices`` picks others for a block of code::

    with fpn_jax.parallel.use_devices(jax.devices()[:1]):
        fpn_jax.fit(flow, z, context, key=key)   # on one device

Several processes (a TPU pod slice, several GPU hosts): after
``fpn_jax.runtime.distributed.initialize()`` ``jax.devices()`` holds every process's devices,
so the mesh spans them all and the same code runs SPMD in every process
(``fpn_jax.runtime.distributed`` says what each process passes and gets back).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fpn_jax.runtime import agreement
from fpn_jax.typing import Array

AXIS = "data"

_devices: contextvars.ContextVar[tuple[jax.Device, ...] | None] = contextvars.ContextVar(
    "fpn_jax_devices", default=None
)


def devices() -> tuple[jax.Device, ...]:
    """The devices fpn-jax computes on: those of ``use_devices``, else all of ``jax.devices()``."""
    chosen = _devices.get()
    return tuple(jax.devices()) if chosen is None else chosen


def device_count() -> int:
    """d, the number of devices a batch is split over."""
    return len(devices())


@contextlib.contextmanager
def use_devices(chosen: Sequence[jax.Device] | int) -> Iterator[tuple[jax.Device, ...]]:
    """Runs the block on ``chosen`` devices (a list of devices, or the first ``k`` of ``jax.devices()``).

    Raises:
      ValueError: an empty list, a count outside ``1..len(jax.devices())``, or devices of
        more than one platform.
    """
    available = jax.devices()
    if isinstance(chosen, (int, np.integer)) and not isinstance(chosen, bool):
        if not 1 <= chosen <= len(available):
            raise ValueError(
                f"use_devices: argument `chosen` must be between 1 and {len(available)} "
                f"(the devices JAX sees); got {chosen}."
            )
        chosen = available[: int(chosen)]
    chosen = tuple(chosen)
    if not chosen or not all(isinstance(d, jax.Device) for d in chosen):
        raise ValueError(f"use_devices: argument `chosen` must be a non-empty list of jax devices; got {chosen!r}.")
    if len({d.platform for d in chosen}) > 1:
        platforms = sorted({d.platform for d in chosen})
        raise ValueError(f"use_devices: all devices must be of one platform; got {platforms}.")
    token = _devices.set(chosen)
    try:
        yield chosen
    finally:
        _devices.reset(token)


@functools.cache
def _mesh(chosen: tuple[jax.Device, ...]) -> Mesh:
    return Mesh(np.array(chosen), (AXIS,))


def mesh() -> Mesh:
    """The one-axis mesh ``("data",)`` over ``devices()``."""
    return _mesh(devices())


def several_processes() -> bool:
    """True when the devices in use belong to several processes (``fpn_jax.runtime.distributed``)."""
    return _several(devices())


@functools.cache
def _several(chosen: tuple[jax.Device, ...]) -> bool:
    return any(d.process_index != jax.process_index() for d in chosen)


def row_sharding() -> NamedSharding:
    """Rows split over the ``data`` axis: ``P("data")``."""
    return NamedSharding(mesh(), PartitionSpec(AXIS))


def replicated() -> NamedSharding:
    """A full copy on every device: ``P()``."""
    return NamedSharding(mesh(), PartitionSpec())


def _on_all(x: Any, chosen: frozenset[jax.Device]) -> bool:
    """True for a non-array leaf, or an array with a full copy on each of ``chosen`` devices."""
    if not isinstance(x, (jax.Array, np.ndarray)):
        return True
    sharding = getattr(x, "sharding", None)
    return sharding is not None and sharding.device_set == chosen and sharding.is_fully_replicated


def is_replicated(tree: Any) -> bool:
    """True when every array leaf of ``tree`` already has a full copy on each device in use."""
    chosen = frozenset(devices())
    return all(_on_all(x, chosen) for x in jax.tree.leaves(tree))


def replicate(tree: Any, *, commit: bool = False) -> Any:
    """Puts every array leaf of ``tree`` on all devices; leaves already there are left as they are.

    So on one device, arrays JAX placed by default stay uncommitted, unless ``commit``: then
    every leaf gets the replicated sharding. A loop that feeds a jitted function's outputs back
    to it needs that: the outputs come back committed, and a first call on uncommitted inputs
    compiles the function a second time (10-15 s for a training epoch of the MNIST plugins).

    On a mesh of several processes (``fpn_jax.runtime.distributed``) each process's value of a
    leaf goes to its own devices: every process must pass the same values.
    """
    chosen, sharding = frozenset(devices()), replicated()

    def put(x: Any) -> Any:
        if not isinstance(x, (jax.Array, np.ndarray)) or (_on_all(x, chosen) and not commit):
            return x
        return _put(x, sharding)

    return jax.tree.map(put, tree)


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    """``jax.device_put(x, sharding)``, also between one process's devices and several processes'.

    Onto a mesh of several processes, a process-local value (numpy, or an array on this process's
    devices) is taken as the global value, the same in every process, and each process places
    its own devices' parts (``jax.make_array_from_process_local_data``, without the
    all-process comparison ``device_put`` makes). Onto this process's devices, a global array
    (replicated) contributes its local copy.
    """
    is_global = isinstance(x, jax.Array) and not x.is_fully_addressable
    if sharding.is_fully_addressable:
        if is_global:
            if not x.is_fully_replicated:
                raise ValueError(
                    "an array split over several processes cannot move to one process's devices; "
                    "gather it first (jax.experimental.multihost_utils.process_allgather)."
                )
            x = x.addressable_data(0)
        return jax.device_put(x, sharding)
    if is_global:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_put(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    return jax.make_array_from_process_local_data(sharding, x, tuple(x.shape))


def _local(tree: Any) -> Any:
    """Every array leaf of ``tree`` in full on this process: gathered (by XLA) when split over processes."""
    leaves, treedef = jax.tree.flatten(tree)
    split = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array) and not x.is_fully_addressable]
    if split:
        gathered = jax.jit(lambda xs: xs, out_shardings=replicated())([leaves[i] for i in split])
        for i, x in zip(split, gathered, strict=True):
            leaves[i] = x.addressable_data(0)
    return jax.tree.unflatten(treedef, leaves)


def constrain_rows(tree: Any) -> Any:
    """Inside a jitted function: split the leading axis of every leaf over the devices."""
    sharding = row_sharding()
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def check_divisible(batch_size: int, *, name: str, where: str) -> None:
    """Raises ValueError unless ``batch_size`` splits evenly over the devices."""
    d = device_count()
    if batch_size % d:
        lower, upper = (batch_size // d) * d, -(-batch_size // d) * d
        choices = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"{where}: `{name}` = {batch_size} must be a multiple of the {d} devices it is split over "
            f"(try {choices}, or fpn_jax.parallel.use_devices(...) with fewer devices)."
        )


def padded(rows: int, size: int | None = None) -> int:
    """``size`` (default ``rows``) rounded up to a multiple of the device count."""
    d = device_count()
    return -(-(rows if size is None else size) // d) * d


def call_on_rows(fn: Callable[..., Any], *rows: Array, **kwargs: Any) -> Any:
    """``fn(*rows, **kwargs)`` with the rows padded to a multiple of d and split over the devices.

    Args:
      fn: a jitted function whose outputs all have the rows on their leading axis.
      *rows: arrays with the same number of rows N (N ≥ 1).
      **kwargs: passed as they are (parameters, keys).

    Returns:
      ``fn``'s outputs cut back to N rows. On a mesh of several processes every process must
      pass the same rows and keys (checked on a sample of rows: ``ValueError`` otherwise) and
      gets the whole result, gathered by XLA.
    """
    n = rows[0].shape[0]
    several = several_processes()
    if several:
        agreement.check_same((rows, kwargs), what="the input", where="fpn-jax on several processes", sample=64)
    extra = padded(n) - n
    if extra:
        rows = tuple(jnp.concatenate([r, jnp.repeat(r[:1], extra, axis=0)]) for r in rows)
    if device_count() > 1:  # on one device, leave placement to JAX (arrays stay uncommitted)
        sharding = row_sharding()
        rows = tuple(_put(r, sharding) for r in rows)
    out = fn(*rows, **kwargs)
    if several:  # every process gets the whole result
        out = _local(out)
    return jax.tree.map(lambda y: y[:n], out) if extra else out
