"""Several processes (hosts): JAX's multi-controller runtime, under the same code.

A TPU pod slice, or several GPU machines, runs one Python process per host (or per GPU);
each sees only its own devices (``jax.local_devices()``) but, once
``jax.distributed.initialize`` has connected them, ``jax.devices()`` lists every process's
devices. fpn-jax's mesh (``fpn_jax.runtime.mesh``) is built over ``jax.devices()``, so after
``initialize()`` the same program runs in every process, SPMD, on one global mesh:

* **training** (``fpn_jax.fit``, the base models, the judge): every process passes either
  its own share of the rows (``process_share``, ``process_slice``: each loads, and encodes,
  only its part) or all of them (the same arrays in every process). ``gather_rows`` tells the
  two apart (the processes compare row counts and a digest of their arrays) and builds the
  global training set from the processes' arrays with ``jax.make_array_from_process_local_data``:
  the shares, concatenated in process order, are the data set. XLA then gathers it onto every
  device, as on one machine (the loop keeps the training set on every device), and each
  batch, split over all devices of all processes, is exactly the batch a single process draws
  from the same data set and key; the gradient is all-reduced by XLA across processes (gloo
  on CPU, NCCL on GPU, ICI/DCN on TPU). Losses, histories and parameters are the same in every
  process, and equal a one-process run up to float32 summation order.
* **inference** (log-prob, sampling, classification, encoding, decoding) on the global mesh
  takes the same inputs in every process, splits the rows over all devices and returns the
  full result in every process (gathered by XLA). Inputs that differ between processes are
  refused (``ValueError``) rather than mixed. For per-process work, such as each process
  encoding only its own share, run it on the process's own devices: ``with local_devices():``.
* **checkpoints**: every process calls the same saves and restores; orbax writes each file once
  (the primary process, 0, writes the metadata and replicated arrays) and synchronises the
  processes, so ``checkpoint_dir`` must be one folder every process sees (a shared file
  system, or a GCS bucket on a pod), and resume works as in one process.

One process is the case ``process_count() == 1``: ``initialize()`` does nothing, and every
function here is the identity or trivial.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fpn_jax.runtime import agreement, mesh
from fpn_jax.runtime.agreement import check_same
from fpn_jax.typing import Array

__all__ = [
    "check_same",
    "gather_rows",
    "initialize",
    "is_multiprocess",
    "local_devices",
    "process_share",
    "process_slice",
]

_ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
        "process_id": "JAX_PROCESS_ID"}


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: int | Sequence[int] | None = None,
    cpu_collectives: str | None = "gloo",
    **kwargs: Any,
) -> bool:
    """Connects this process to the others: ``jax.distributed.initialize``, for fpn-jax.

    Call it first, in every process, before anything touches JAX's devices. Unset arguments
    come from the environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID``, and ``JAX_LOCAL_DEVICE_IDS``, read by JAX) or, when none is set, from
    JAX's cluster detection (Cloud TPU pod slices, Slurm, Open MPI, Kubernetes). With one
    process (``num_processes=1``, or nothing configured and no cluster detected) it does
    nothing, so the same script runs on one machine.

    Args:
      coordinator_address: ``host:port`` of process 0, reachable from every process.
      num_processes: how many processes take part.
      process_id: this process's index, ``0 .. num_processes - 1``.
      local_device_ids: the local devices this process uses (default all it sees).
      cpu_collectives: the cross-process collectives on CPU (``"gloo"``, or ``"mpi"``; None
        keeps JAX's setting); set before the CPU backend starts, ignored by GPUs and TPUs.
      **kwargs: passed to ``jax.distributed.initialize`` (``initialization_timeout``...).

    Returns:
      True when this is a run of several processes (JAX's distributed runtime is started),
      False for one process.

    Raises:
      RuntimeError: arguments or environment variables given, but JAX already computed
        something in this process (from JAX; without them, the call then reports
        ``jax.process_count() > 1``).
      ValueError: an incomplete configuration (say a coordinator but no process count).
    """
    if jax.distributed.is_initialized():
        return True
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    for name, variable in _ENV.items():
        if given[name] is None and os.environ.get(variable):
            value = os.environ[variable]
            given[name] = value if name == "coordinator_address" else int(value)
    if given["num_processes"] == 1:
        return False
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    configured = any(value is not None for value in given.values())
    try:
        jax.distributed.initialize(**given, local_device_ids=local_device_ids, **kwargs)
    except ValueError as error:
        if configured or "coordinator_address" not in str(error):
            raise
        return False  # nothing configured and no cluster detected: one process
    except RuntimeError:
        if configured:
            raise
        return jax.process_count() > 1  # nothing configured, and JAX already started: as it is
    return True


def is_multiprocess() -> bool:
    """True when the devices fpn-jax computes on belong to several processes."""
    return mesh.several_processes()


def local_devices() -> contextlib.AbstractContextManager[tuple[jax.Device, ...]]:
    """A block that runs on this process's own devices only (``use_devices(jax.local_devices())``).

    Inside it nothing is shared with the other processes: each process may pass its own
    arrays, e.g. encode only its share of a data set::

        with fpn_jax.runtime.distributed.local_devices():
            z_mine = fpn_jax.latents.encode(autoencoder, x_mine)
    """
    return mesh.use_devices(jax.local_devices())


def process_slice(n: int, index: int | None = None, count: int | None = None) -> slice:
    """This process's contiguous share of ``n`` rows: ``rows[process_slice(n)]``.

    Shares follow ``np.array_split``: the first ``n % count`` processes get one row more, and
    the shares, in process order, make up the ``n`` rows.

    Args:
      n: the number of rows of the whole data set.
      index: the process (default ``jax.process_index()``).
      count: the number of processes (default ``jax.process_count()``).
    """
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"process_slice: `index` must be in 0..{count - 1}; got {index}.")
    size, extra = divmod(int(n), count)
    start = index * size + min(index, extra)
    return slice(start, start + size + (index < extra))


def process_share(*arrays: Any) -> Any:
    """This process's rows of row-aligned ``arrays`` (see ``process_slice``); one array, or a tuple."""
    if not arrays:
        raise ValueError("process_share: pass at least one array.")
    rows = process_slice(len(arrays[0]))
    shares = tuple(a[rows] for a in arrays)
    return shares[0] if len(shares) == 1 else shares


def gather_rows(arrays: Sequence[Array], *, where: str = "gather_rows") -> tuple[jax.Array, ...]:
    """The whole data set on every device of the mesh, from each process's arrays.

    Each process passes either its own share of the rows (``process_share``) or the same
    arrays as every other process. The shares (row counts may differ), in process order, are
    the data set: each process's rows become its devices' parts of one global array
    (``jax.make_array_from_process_local_data``), which one XLA gather replicates onto every
    device, the padding that evens the shares out left behind. Identical arrays in every
    process are taken as the whole data set as they are. One process: ``mesh.replicate``.

    Args:
      arrays: row-aligned arrays, numpy or jax (or already global ``jax.Array`` s).
      where: the caller's name for error messages.

    Returns:
      the arrays, replicated over ``mesh.mesh()`` (committed).
    """
    arrays = tuple(arrays)
    if not is_multiprocess():
        return mesh.replicate(arrays, commit=True)
    if all(isinstance(a, jax.Array) and not a.is_fully_addressable for a in arrays):
        return mesh.replicate(arrays, commit=True)  # already global arrays
    host = tuple(np.asarray(a) for a in arrays)
    n = host[0].shape[0]
    if any(a.shape[0] != n for a in host):
        raise ValueError(f"{where}: the arrays have different numbers of rows {[a.shape[0] for a in host]}.")
    kind = agreement.hash_bytes(str([(a.shape[1:], a.dtype.str) for a in host]).encode())
    gathered = agreement.gather_ints(np.concatenate([[n], kind, agreement.digest(host)]))
    if (gathered[:, 1:3] != gathered[0, 1:3]).any():
        raise ValueError(
            f"{where}: the processes' arrays differ in number, dtype or shape past the rows; every "
            "process must pass the same kind of arrays (its share of the rows, or all of them)."
        )
    if (gathered == gathered[0]).all():  # the same arrays everywhere: the whole data set in every process
        return mesh.replicate(host, commit=True)
    return _concatenate_shares(host, [int(c) for c in gathered[:, 0]])


def _concatenate_shares(host: tuple[np.ndarray, ...], counts: list[int]) -> tuple[jax.Array, ...]:
    """The processes' shares (``counts[p]`` rows in process p), concatenated, on every device."""
    grid = mesh.mesh()
    devices = list(grid.devices.flat)
    owners = [[j for j, d in enumerate(devices) if d.process_index == p] for p in range(len(counts))]
    if len({len(o) for o in owners}) != 1:
        raise ValueError(
            "gather_rows: every process must hold the same number of the mesh's devices; got "
            f"{[len(o) for o in owners]} (see fpn_jax.parallel.use_devices)."
        )
    local = len(owners[jax.process_index()])
    per_device = max(1, -(-max(counts) // local))
    rows = per_device * local  # each process's share, padded with zeros to the same length
    # make_array_from_process_local_data puts a process's rows on its devices in mesh order,
    # per_device rows each; where row r of process p lands in the global array:
    index = np.concatenate([
        np.asarray(owners[p])[np.arange(counts[p]) // per_device] * per_device + np.arange(counts[p]) % per_device
        for p in range(len(counts))
    ]).astype(np.int32)
    row_sharding, replicated = mesh.row_sharding(), mesh.replicated()
    shares = []
    for a in host:
        padded = np.concatenate([a, np.zeros((rows - a.shape[0], *a.shape[1:]), a.dtype)])
        shape = (rows * len(counts), *a.shape[1:])
        shares.append(jax.make_array_from_process_local_data(row_sharding, padded, shape))
    index = jax.make_array_from_process_local_data(replicated, index, index.shape)
    take = jax.jit(lambda xs, i: tuple(jnp.take(x, i, axis=0) for x in xs), out_shardings=replicated)
    return take(tuple(shares), index)
