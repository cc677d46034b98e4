"""Frozen base models: the paper's autoencoders in Flax, by name or from a checkpoint.

    model = fpn_jax.autoencoders.load("conv_vae")        # trained copy in the model cache
    model = fpn_jax.autoencoders.load("runs/x/conv_ae")  # or any checkpoint folder
    z = fpn_jax.latents.encode(model, images)

Training one (a ``TrainableAutoencoder``) is ``fpn_jax.autoencoders.fit(model, images, key=...)``.

Registered: ``conv_vae`` and ``conv_ae`` (MNIST), ``pointflow`` (ShapeNet: PointFlow's
auto-encoder) and ``msp`` (CelebA: MSP's VAE; trained with its labels by ``fit_msp``). New
base models plug in with ``@fpn_jax.registry.register("name")`` on an ``Autoencoder`` subclass.
"""

from __future__ import annotations

import os
from pathlib import Path

from flax import nnx

from fpn_jax import checkpoint, registry
from fpn_jax.autoencoders import training
from fpn_jax.autoencoders.base import Autoencoder, TrainableAutoencoder, check_data
from fpn_jax.autoencoders.conv import ConvAE, ConvVAE
from fpn_jax.autoencoders.msp import MSP, fit_msp
from fpn_jax.autoencoders.pointflow import PointFlow
from fpn_jax.autoencoders.training import default_config, fit

registry.register("conv_vae")(ConvVAE)
registry.register("conv_ae")(ConvAE)
registry.register("pointflow")(PointFlow)
registry.register("msp")(MSP)

__all__ = [
    "Autoencoder", "ConvAE", "ConvVAE", "TrainableAutoencoder", "available", "cache_dir", "check_data", "create",
    "default_config", "fit", "freeze", "load", "training",
    "MSP", "PointFlow", "fit_msp",
]


def available() -> list[str]:
    """Names of the registered base-model architectures."""
    return sorted(n for n, c in registry.architectures().items() if issubclass(c, Autoencoder))


def cache_dir() -> Path:
    """Where trained base models are kept by name: ``$FPN_JAX_HOME/models`` (default ~/.cache/fpn_jax)."""
    return Path(os.environ.get("FPN_JAX_HOME", Path.home() / ".cache" / "fpn_jax")) / "models"


def create(name: str, *, seed: int = 0, **config) -> Autoencoder:
    """A freshly initialised (untrained) base model of a registered architecture."""
    if name not in available():
        raise ValueError(f"create: unknown base model {name!r}; available: {available()}.")
    return registry.build(name, config, rngs=nnx.Rngs(seed))


def freeze(model: Autoencoder) -> Autoencoder:
    """Puts ``model`` in eval mode (running batch-norm statistics) and returns it."""
    model.eval()
    return model


def load(name_or_path: str | os.PathLike) -> Autoencoder:
    """A frozen base model, from a checkpoint folder or by name from the model cache.

    Arrays land on JAX's default backend (CPU, GPU or TPU).

    Args:
      name_or_path: a checkpoint folder (written by ``fpn_jax.checkpoint.save`` or
        ``python -m fpn_jax.convert``), a training folder (its ``best/`` is read), or a
        registered name such as ``"conv_vae"``, looked up as ``cache_dir() / name``.

    Raises:
      FileNotFoundError: a name with no trained copy in the cache (the message says how to make one).
      fpn_jax.checkpoint.CheckpointError: a folder that is not a valid base-model checkpoint.
    """
    path = Path(name_or_path)
    if not path.exists() and str(name_or_path) in available():
        path = cache_dir() / str(name_or_path)
        if not path.exists():
            raise FileNotFoundError(
                f"load: no trained {name_or_path!r} in the model cache ({path}). Train one with "
                f"`python experiments/mnist.py` (it caches its base models there) or "
                f"fpn_jax.autoencoders.fit(...), or convert a PyTorch checkpoint with "
                f"`{_convert_command(str(name_or_path), path)}`."
            )
    elif not path.exists():
        raise FileNotFoundError(
            f"load: {str(name_or_path)!r} is neither a checkpoint folder nor a base-model name {available()}."
        )
    if not (path / "meta").exists() and (path / "best" / "meta").exists():
        path = path / "best"  # a training folder: its best epoch
    return freeze(checkpoint.load(path, expect=Autoencoder))


def _convert_command(name: str, path: Path) -> str:
    """The conversion command that makes the cached copy of base model ``name``."""
    if name in ("pointflow", "msp"):
        return f"python -m fpn_jax.convert {name} CHECKPOINT {path}"
    return f"python -m fpn_jax.convert autoencoder MODEL.pt {path} --architecture {name}"
