"""PyTorch ConvVAE / ConvAE (the original code's names) → fpn-jax base models.

Reads state dicts, Lightning checkpoints and the original ``run.py``'s whole pickled
``model.pkt`` (without running it; see ``fpn_jax.convert.torch_io.read_torch_file``).

Key mapping (torch → ours), with ``i`` the block index::

    enc.disc.{0,1}.0.{weight,bias}     Conv2d (O, I, kh, kw)            → enc.conv_{1,2}: kernel (kh, kw, I, O)
    enc.disc.{0,1}.1.*                 BatchNorm2d weight/bias/running_* → enc.norm_{1,2}: scale/bias/mean/var
    enc.disc.2.0.{weight,bias}         Conv2d                            → enc.conv_3
    dec.gen.{0,1,2}.0.{weight,bias}    ConvTranspose2d (I, O, kh, kw)    → dec.deconv_{1,2,3}: kernel (kh, kw, I, O)
    dec.gen.{0,1,2}.1.*                BatchNorm2d                       → dec.norm_{1,2,3}
    dec.gen.3.0.{weight,bias}          ConvTranspose2d                   → dec.deconv_4
    fc_mu / fc_logvar / bottleneck     Linear (out, in)                  → kernel (in, out)

Our ``ConvTranspose`` scatters with the kernel as torch does (``y[s i + a] += x[i] W[a]``),
so the torch weight only needs its axes moved, not flipped. Batch-norm momentum 0.1 in
torch is 0.9 in Flax (set by the model).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fpn_jax import checkpoint
from fpn_jax.autoencoders.base import Autoencoder
from fpn_jax.checkpoint import CheckpointError
from fpn_jax.convert.torch_io import TorchFile, check_destination, check_state_dict, read_torch_file

ENCODER = [("enc.disc.0.0", "enc.conv_1", "conv"), ("enc.disc.0.1", "enc.norm_1", "norm"),
           ("enc.disc.1.0", "enc.conv_2", "conv"), ("enc.disc.1.1", "enc.norm_2", "norm"),
           ("enc.disc.2.0", "enc.conv_3", "conv")]
DECODER = [("dec.gen.0.0", "dec.deconv_1", "deconv"), ("dec.gen.0.1", "dec.norm_1", "norm"),
           ("dec.gen.1.0", "dec.deconv_2", "deconv"), ("dec.gen.1.1", "dec.norm_2", "norm"),
           ("dec.gen.2.0", "dec.deconv_3", "deconv"), ("dec.gen.2.1", "dec.norm_3", "norm"),
           ("dec.gen.3.0", "dec.deconv_4", "deconv")]
HEADS = {"conv_vae": [("fc_mu", "fc_mu", "linear"), ("fc_logvar", "fc_logvar", "linear")],
         "conv_ae": [("bottleneck", "bottleneck", "linear")]}

# torch suffix → (our leaf name, how the array is laid out for us)
_LEAVES = {
    "conv": {"weight": ("kernel", (2, 3, 1, 0)), "bias": ("bias", None)},
    "deconv": {"weight": ("kernel", (2, 3, 0, 1)), "bias": ("bias", None)},
    "linear": {"weight": ("kernel", (1, 0)), "bias": ("bias", None)},
    "norm": {"weight": ("scale", None), "bias": ("bias", None), "running_mean": ("mean", None),
             "running_var": ("var", None)},
}


def guess_architecture(state_dict: dict[str, np.ndarray]) -> str:
    """``conv_vae`` if the weights have ``fc_mu``, ``conv_ae`` if ``bottleneck``."""
    if "fc_mu.weight" in state_dict:
        return "conv_vae"
    if "bottleneck.weight" in state_dict:
        return "conv_ae"
    raise CheckpointError(
        "cannot tell the architecture: expected the keys of the original ConvVAE (fc_mu.*, "
        f"fc_logvar.*) or ConvAE (bottleneck.*); got keys starting {sorted(state_dict)[:6]}."
    )


def autoencoder_from_state_dict(
    state_dict: dict[str, np.ndarray], *, architecture: str | None = None, source: str = "state_dict"
) -> Autoencoder:
    """Builds the fpn-jax model and copies the torch weights in (eval mode).

    Args:
      state_dict: torch parameter name → array (see ``fpn_jax.convert.torch_io.read_state_dict``;
        the state dict of a pickled module, too).
      architecture: ``conv_vae`` or ``conv_ae``; guessed from the keys by default.
      source: the file it came from, for error messages.

    Raises:
      CheckpointError: listing every missing or unexpected key and every shape mismatch.
    """
    from fpn_jax import autoencoders

    architecture = architecture or guess_architecture(state_dict)
    if architecture not in HEADS:
        raise CheckpointError(
            f"{source}: no PyTorch mapping for architecture {architecture!r}; known: {sorted(HEADS)}."
        )
    head = HEADS[architecture][0][0] + ".weight"
    latent = int(state_dict[head].shape[0]) if head in state_dict and state_dict[head].ndim == 2 else 40
    model = autoencoders.create(architecture, latent_features=latent)
    table = ENCODER + DECODER + HEADS[architecture]

    expected, moves = {}, {}
    for torch_prefix, our_prefix, kind in table:
        module = _get(model, our_prefix)
        for suffix, (leaf, axes) in _LEAVES[kind].items():
            variable = getattr(module, leaf)
            shape = variable[...].shape
            torch_shape = shape if axes is None else tuple(shape[a] for a in np.argsort(axes))
            expected[f"{torch_prefix}.{suffix}"] = torch_shape
            moves[f"{torch_prefix}.{suffix}"] = (variable, axes)
    check_state_dict(state_dict, expected, source=source, architecture=architecture)
    for key, (variable, axes) in moves.items():
        array = np.asarray(state_dict[key], dtype=np.float32)
        variable[...] = np.ascontiguousarray(array if axes is None else array.transpose(axes))
    return autoencoders.freeze(model)


#: The original code's autoencoder classes (pickled ``model.pkt``) and config names → ours.
PICKLED_CLASSES = {
    "models.vae.conv_vae.ConvVAE": "conv_vae",
    "models.vae.conv_ae.ConvAE": "conv_ae",
}
CONFIG_NAMES = {"ConvVAE": "conv_vae", "ConvAE": "conv_ae"}


def _architecture_of(file: TorchFile, architecture: str | None) -> str | None:
    """The architecture the file's pickled class or ``config.yaml`` names, checked against ``architecture``."""
    said = []
    if file.module is not None:
        name = file.module.qualified_name
        if name not in PICKLED_CLASSES:
            hint = ""
            if "flow" in name.lower():
                hint = " It is a flow: convert it with 'python -m fpn_jax.convert flow' (convert_flow)."
            raise CheckpointError(
                f"{file.source} holds a pickled {name}, not one of the original code's MNIST autoencoders "
                f"({', '.join(sorted(PICKLED_CLASSES))}).{hint}"
            )
        said.append((PICKLED_CLASSES[name], f"it is a pickled {name.rpartition('.')[2]}"))
    if file.config is not None and file.config["model_params"]["name"] in CONFIG_NAMES:
        name = file.config["model_params"]["name"]
        said.append((CONFIG_NAMES[name], f"{file.config_path} names {name}"))
    for found, why in said:
        if architecture is not None and found != architecture:
            raise CheckpointError(
                f"{file.source} is a {found} ({why}), but architecture={architecture!r} was given; "
                f"pass architecture={found!r} or give none."
            )
    if len({found for found, _ in said}) > 1:
        raise CheckpointError(f"{file.source}: " + " but ".join(why for _, why in said) + ".")
    return said[0][0] if said else architecture


def convert_autoencoder(
    source: str | os.PathLike, destination: str | os.PathLike, *, architecture: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Converts a torch autoencoder file into an orbax checkpoint for ``fpn_jax.autoencoders.load``.

    Reads a torch ``.pt``/``.pth`` state dict, a Lightning ``.ckpt`` or the original code's
    whole pickled ``ConvVAE`` / ``ConvAE`` (``model.pkt``), without running any code from it
    (``fpn_jax.convert.torch_io.read_torch_file``), and writes an orbax checkpoint. The
    architecture comes from the pickled class, the original's ``config.yaml`` beside the file,
    or the keys. Nothing is written unless the whole conversion succeeds.

    Args:
      source: the torch file.
      destination: the checkpoint folder to write.
      architecture: ``conv_vae`` or ``conv_ae``, checked against the file when given.
      overwrite: replace an existing ``destination``.

    Returns:
      The checkpoint folder.

    Raises:
      FileExistsError: ``destination`` exists and ``overwrite`` is False (checked first).
      CheckpointError: an unreadable file, another model, or keys and shapes that do not match.
    """
    check_destination(destination, overwrite)
    file = read_torch_file(source)
    architecture = _architecture_of(file, architecture)
    model = autoencoder_from_state_dict(file.state, architecture=architecture, source=str(source))
    return checkpoint.save(destination, model, extra={"converted_from": str(Path(source).absolute())},
                           overwrite=overwrite)


def _get(module, dotted: str):
    for part in dotted.split("."):
        module = getattr(module, part)
    return module
