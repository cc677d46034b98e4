"""Training or eval mode of a Flax module (the NNX way: batch norm's ``use_running_average``)."""

from __future__ import annotations

from flax import nnx


def is_training(module: nnx.Module) -> bool:
    """True if any submodule normalises with batch statistics (``model.train()``)."""
    return any(getattr(m, "use_running_average", True) is False for _, m in nnx.iter_modules(module))
