"""PRNG keys for layers that may or may not be stochastic."""

from __future__ import annotations

import jax

from fpn_jax.typing import Array


def split_key(key: Array | None, num: int) -> list[Array | None]:
    """Splits ``key`` into ``num`` keys, or returns ``num`` Nones for a missing key."""
    if key is None:
        return [None] * num
    return list(jax.random.split(key, num))
