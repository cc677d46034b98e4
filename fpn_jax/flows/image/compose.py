"""``Chain`` and ``Repeat`` for image events (N, H, W, C).

The same compositions as ``fpn_jax.flows.Chain`` and ``fpn_jax.flows.Repeat`` (order and
semantics unchanged: ``bijectors[0]`` / layer 0 on the data side), with the last three axes
as one event, so the log-dets add up to shape (N,).
"""

from __future__ import annotations

from fpn_jax.flows.bijector import Chain
from fpn_jax.flows.stack import Repeat


class ImageChain(Chain):
    """``Chain`` over NHWC images: ``f = f_0 ∘ … ∘ f_{K-1}``, log-dets (N,) added up."""

    event_ndims = 3


class ImageRepeat(Repeat):
    """``Repeat`` over NHWC images: L layers of one structure, stacked and scanned; log-det (N,)."""

    event_ndims = 3
