"""The condition of an image flow, as channels next to the image.

Two kinds of condition reach the image bijectors through their ``context`` argument:

* a class (one-hot) or attribute (multi-hot) vector, (N, K): broadcast to every pixel, it
  becomes K constant channels ``c[n, i, j, k] = y[n, k]``;
* an image, (N, H, W, Ci), at the resolution of the bijector's input: used as it is.

The multi-scale flow squeezes an image condition alongside the image (``squeeze``), so at
the scale after l squeezes it has ``4^l Ci`` channels; a vector condition stays as it is.
"""

from __future__ import annotations

import jax.numpy as jnp

from fpn_jax.flows.image.squeeze import squeeze
from fpn_jax.typing import Array

CONDITION_KINDS = ("class", "image")


def condition_kind(context_shape: tuple[int, ...], where: str) -> str:
    """``"class"`` for a (K,) context shape, ``"image"`` for (H, W, Ci); ValueError otherwise."""
    shape = tuple(context_shape)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape) or len(shape) not in (1, 3):
        raise ValueError(
            f"{where}: `context_shape` must be (K,) for a class / multi-hot vector or (H, W, Ci) for an image, "
            f"positive integers; got {context_shape!r}."
        )
    return "class" if len(shape) == 1 else "image"


def condition_channels(context: Array | None, height: int, width: int) -> Array | None:
    """The condition as (N, H, W, K) channels: a (N, K) vector broadcast, an image passed through.

    Raises:
      ValueError: an image condition of another spatial size, or a rank other than 2 or 4.
    """
    if context is None:
        return None
    if context.ndim == 2:
        n, k = context.shape
        return jnp.broadcast_to(context[:, None, None, :], (n, height, width, k))
    if context.ndim == 4:
        if context.shape[1:3] != (height, width):
            raise ValueError(
                f"condition_channels: an image condition must have the input's spatial size ({height}, {width}); "
                f"got shape {tuple(context.shape)}."
            )
        return context
    raise ValueError(
        "condition_channels: `context` must be (N, K) (class / multi-hot) or (N, H, W, Ci) (image); "
        f"got shape {tuple(context.shape)}."
    )


def squeeze_condition(context: Array | None) -> Array | None:
    """The condition for the next scale: an image is squeezed, a vector (or None) passes."""
    if context is None or context.ndim == 2:
        return context
    return squeeze(context)
