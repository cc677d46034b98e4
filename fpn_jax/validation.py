"""Input validation at the public boundary (a leaf: imports nothing of fpn-jax above ``typing``).

Shape and dtype checks work on concrete arrays and on tracers alike (under ``jax.jit`` or
``jax.vmap``) and raise before anything is traced. Value checks (NaN and infinities, ranges)
need the values, so they run on concrete arrays only and are skipped under a transformation.
Errors name the function, the argument, what was expected and what was given; a bad value
is reported with the index of its first row.

Outputs: a public function given finite inputs checks that its result is finite too and
raises ``FloatingPointError`` naming the first overflowing row (``check_overflow``), unless
the caller asked for the raw result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from fpn_jax.typing import Array

F = TypeVar("F", bound=Callable[..., Any])


def as_float_matrix(
    x: Any, *, name: str, width: int, where: str, width_name: str, finite: bool = True
) -> Array:
    """Checks that ``x`` is a floating (N, width) array and returns it as float32.

    With ``finite`` (the default) a concrete ``x`` must also hold only finite values that
    fit in float32 (``check_finite``); tracers skip that check.

    Args:
      x: the user's array (numpy, JAX array or tracer).
      name: the argument's name, as the user typed it.
      width: the required size of the last axis.
      where: the public function, for the message.
      width_name: what ``width`` is called in the constructor (``features``...).
      finite: also check the values (concrete arrays only).

    Returns:
      ``x`` as a float32 JAX array of shape (N, width).

    Raises:
      ValueError: wrong rank, wrong width, a non-floating dtype, or (``finite``) a NaN,
        an infinity or a value beyond float32's range, naming the first bad row.
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
                if name in ("context", "contexts", "new_context")
                else ""
            )
        )
    if finite:
        check_finite(x, name=name, where=where)
    return jnp.asarray(x, dtype=jnp.float32)


def _label_hint(name: str, x: Any, shape: tuple[int, ...]) -> str:
    if name in ("context", "new_context") and len(shape) == 1 and jnp.issubdtype(x.dtype, jnp.integer):
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
    """Checks that ``key`` is one JAX PRNG key (typed, shape (), or raw uint32[2])."""
    if key is None:
        raise ValueError(f"{where}: argument `{name}` is required: pass jax.random.key(seed).")
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if tuple(key.shape) != ():
            raise ValueError(
                f"{where}: argument `{name}` must be a single PRNG key (shape ()); got a batch of "
                f"keys of shape {tuple(key.shape)}. Pass one key, e.g. jax.random.key(0)."
            )
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


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def bad_rows(x: Any) -> np.ndarray:
    """(N,) bool on the host: the rows of a concrete array with a non-finite or too large value.

    A row is marked when it has a NaN, an infinity, or a value beyond float32's range (for
    wider dtypes, which become infinite when cast).
    """
    n = x.shape[0] if len(x.shape) else 1
    if isinstance(x, jax.Array):  # reduce on the device, move N booleans
        ok = jnp.isfinite(x).reshape(n, -1).all(axis=1) if x.size else jnp.ones(n, bool)
        return ~np.asarray(ok)
    values = np.asarray(x)
    if not values.size:
        return np.zeros(n, bool)
    if not jnp.issubdtype(values.dtype, jnp.inexact):
        return np.zeros(n, bool)
    ok = np.isfinite(values)
    if values.dtype.itemsize > 4 and jnp.issubdtype(values.dtype, jnp.floating):
        with np.errstate(invalid="ignore"):
            ok &= np.abs(values) <= _FLOAT32_MAX
    return ~ok.reshape(n, -1).all(axis=1)


def check_finite(x: Any, *, name: str, where: str) -> None:
    """Raises ValueError naming the first row of ``x`` with a non-finite or too large value.

    The value can be a NaN, an infinity or a value that overflows float32 (concrete arrays
    only; a no-op on tracers).
    """
    if is_traced(x):
        return
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    bad = bad_rows(x)
    if bad.any():
        row = int(np.argmax(bad))
        n = bad.shape[0]
        values = np.asarray(x).reshape(n, -1)[row]
        if np.isnan(values).any():
            what = "NaN"
        elif np.isinf(values).any():
            what = "an infinite value"
        else:
            what = f"a value beyond float32's range (|x| > {_FLOAT32_MAX:.3g}), which would become infinite"
        raise ValueError(
            f"{where}: argument `{name}` must hold finite values; row {row} of {n} has {what} "
            f"({int(bad.sum())} bad rows in all)."
        )


def check_overflow(out: Any, *, what: str, where: str, hint: str = "") -> None:
    """Raises FloatingPointError naming the first row of a result with a NaN or infinity.

    For results computed from inputs that passed ``check_finite``: a non-finite value then
    means float32 overflowed inside the computation. A no-op on tracers.

    Args:
      out: an array, or a tuple of arrays with the same leading axis N.
      what: what the result is, for the message (``"log_prob"``...).
      where: the public function.
      hint: appended to the message (what to do about it).
    """
    arrays = out if isinstance(out, tuple) else (out,)
    if is_traced(arrays):
        return
    bad = np.zeros(arrays[0].shape[0], bool)
    for a in arrays:
        bad |= bad_rows(a)
    if bad.any():
        row = int(np.argmax(bad))
        rows = np.flatnonzero(bad)
        listed = ", ".join(map(str, rows[:10])) + (", ..." if rows.size > 10 else "")
        raise FloatingPointError(
            f"{where}: {what} overflowed float32 (NaN or infinity) in {rows.size} of {bad.size} rows "
            f"(rows {listed}; first {row}) although every input is finite." + (f" {hint}" if hint else "")
        )


def overflow_checked(*, what: str, where: str, hint: str = "") -> Callable[[F], F]:
    """Decorator: ``check_overflow`` on the function's result (an array or a tuple of them).

    For public functions whose inputs are checked to be finite at their top: a non-finite
    result is then an overflow inside, reported as ``FloatingPointError`` naming the rows.
    """

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> Any:
            out = function(*args, **kwargs)
            check_overflow(out, what=what, where=where, hint=hint)
            return out

        return checked  # type: ignore[return-value]

    return decorate
