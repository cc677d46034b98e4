"""Architecture names → classes: what lets ``fpn_jax.checkpoint.load`` rebuild a model.

A leaf module: models import it to register themselves, ``fpn_jax.checkpoint`` imports it
to look them up, and it imports no model. The package's ``__init__`` (the composition
root) imports the built-in models, so they are registered as soon as ``fpn_jax`` is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx

from fpn_jax.errors import CheckpointError

_ARCHITECTURES: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register("conv_vae")`` makes ``checkpoint.load`` able to rebuild it.

    The class must take its configuration as keyword arguments plus ``rngs`` and return
    them (JSON-able) from ``self.config``. Registering the same class again (a notebook
    cell run twice, a reloaded module) replaces it.

    Raises:
      ValueError: ``name`` is taken by another class.
    """

    def decorate(cls: type) -> type:
        taken = _ARCHITECTURES.get(name, cls)
        redefined = (taken.__module__, taken.__qualname__) == (cls.__module__, cls.__qualname__)
        if taken is not cls and not redefined:
            raise ValueError(f"register: the architecture name {name!r} is taken by {_ARCHITECTURES[name]}.")
        _ARCHITECTURES[name] = cls
        cls.architecture = name
        return cls

    return decorate


def architectures() -> dict[str, type]:
    """The registered architecture names and their classes."""
    return dict(_ARCHITECTURES)


def build(architecture: str, config: dict[str, Any], *, rngs: nnx.Rngs) -> nnx.Module:
    """A fresh module of a registered architecture, ``cls(**config, rngs=rngs)``.

    Raises:
      CheckpointError: no architecture of that name is registered.
    """
    if architecture not in _ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {architecture!r}; registered: {sorted(_ARCHITECTURES)}.")
    return _ARCHITECTURES[architecture](**config, rngs=rngs)
