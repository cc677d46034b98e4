"""Input validation at the public boundary.

Every check runs on shapes and dtypes only, so it works on concrete arrays and on tracers
alike (under ``jax.jit`` or ``jax.vmap``) and raises before anything is traced. Errors
name the function, the argument, what was expected and what was given.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def as_float_matrix(x: Any, *, name: str, width: int, where: str, width_name: str) -> Array:
    """Checks that ``x`` is a floating (N, width) array and returns it as float32.

    Args:
      x: the user's array (numpy, JAX array or tracer).
      name: the argument's name, as the user typed it.
      width: the required size of the last axis.
      where: the public function, for the message.
      width_name: what ``width`` is called in the constructor (``features``...).

    Returns:
      ``x`` as a float32 JAX array of shape (N, width).

    Raises:
      ValueError: wrong rank, wrong width, or a non-floating dtype.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    shape = tuple(x.shape)
    if len(shape) != 2:
        raise ValueError(
            f"{where}: argument `{name}` must be a 2-D array of shape (N, {width}) "
            f"(N rows, {width_name}={width}); got a {len(shape)}-D array of shape {shape}."
            + _label_hint(name, x, shape)
        )
    if shape[1] != width:
        raise ValueError(
            f"{where}: argument `{name}` must have shape (N, {width}) ({width_name}={width}); "
            f"got shape {shape}."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{where}: argument `{name}` must be a floating-point array of shape (N, {width}); "
            f"got dtype {x.dtype}."
            + (
                " Contexts are one-hot or multi-hot float vectors: convert integer class "
                "labels with fpn_jax.one_hot(labels, num_classes)."
                if name == "context"
                else ""
            )
        )
    return jnp.asarray(x, dtype=jnp.float32)


def _label_hint(name: str, x: Any, shape: tuple[int, ...]) -> str:
    if name == "context" and len(shape) == 1 and jnp.issubdtype(x.dtype, jnp.integer):
        return (
            " This looks like integer class labels: convert them with "
            "fpn_jax.one_hot(labels, num_classes)."
        )
    return ""


def same_rows(where: str, **arrays: Array) -> int:
    """Checks that all arrays have the same number of rows and returns it."""
    rows = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(rows.values())) > 1:
        described = ", ".join(f"`{n}` has {r}" for n, r in rows.items())
        raise ValueError(f"{where}: arguments must have the same number of rows N; {described}.")
    return next(iter(rows.values()))


def check_key(key: Any, *, where: str, name: str = "key") -> Array:
    """Checks that ``key`` is a JAX PRNG key (typed or raw uint32[2])."""
    if key is None:
        raise ValueError(f"{where}: argument `{name}` is required: pass jax.random.key(seed).")
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return key
    if dtype == jnp.uint32 and tuple(key.shape) == (2,):
        return key
    raise ValueError(
        f"{where}: argument `{name}` must be a JAX PRNG key such as jax.random.key(0); "
        f"got {type(key).__name__} with shape {getattr(key, 'shape', None)} and dtype {dtype}."
    )


def positive_int(value: Any, *, name: str, where: str, allow_zero: bool = False) -> int:
    """Checks a constructor hyper-parameter that must be a positive integer."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < (0 if allow_zero else 1):
        bound = ">= 0" if allow_zero else ">= 1"
        raise ValueError(f"{where}: `{name}` must be an integer {bound}; got {value!r}.")
    return int(value)


def is_traced(*trees: Any) -> bool:
    """True when any leaf is a JAX tracer, i.e. we run inside jit/vmap/grad."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


def frozen(config: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A constructor's keyword arguments as a hashable tuple of items.

    Modules keep it as ``hyperparameters`` (a static attribute: it must be hashable so the
    module's graph definition can be a static jit argument) and expose ``config`` as a dict.
    """
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items())


def check_finite(x: Any, *, name: str, where: str) -> None:
    """Raises ValueError naming the first row of ``x`` with a NaN or infinity (concrete arrays only)."""
    if is_traced(x):
        return
    values = np.asarray(x)
    bad = ~np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1) if values.size else np.zeros(0, bool)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"{where}: argument `{name}` has NaN or infinite values; first in row {row} of {values.shape[0]} "
            f"({int(bad.sum())} bad rows)."
        )
