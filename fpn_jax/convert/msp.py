"""MSP's ``MSP_CelebA.tch`` (a PyTorch ``CnnVae`` state dict) → an fpn-jax ``MSP`` checkpoint.

MSP (lissomx/MSP; Flow Plugin Networks' CelebA base model) saves ``model.state_dict()``
with ``torch.save``: a plain state dict, no ``module.`` prefix (one is removed if every key
has it), about 232.1 M float32 parameters (≈ 0.93 GB) for the released 256-px, nf = 64 model.
Key mapping (torch → ours), K = log2(image_size) − 3 (5 for 256 px), k = 1..K, j = 0..K::

    encoder.main.0.weight            Conv2d (O, I, 4, 4)        → encoder.convs[0].kernel (4, 4, I, O)
    encoder.main.{3k-1}.weight       Conv2d                     → encoder.convs[k].kernel
    encoder.main.{3k}.*              BatchNorm2d weight/bias/running_mean/running_var
                                                                → encoder.norms[k-1]: scale/bias/mean/var
    encoder.main.{3K+2}.weight       Conv2d, 1x1 output          → encoder.convs[K+1].kernel
    decoder.main.{3j}.weight         ConvTranspose2d (I, O, 4, 4) → decoder.deconvs[j].kernel (4, 4, O, I)
    decoder.main.{3j+1}.*            BatchNorm2d                → decoder.norms[j]
    decoder.main.{3K+3}.weight       ConvTranspose2d            → decoder.deconvs[K+1].kernel
    fc1 / fc2 .weight (O, I), .bias  Linear                     → fc1 / fc2: kernel (I, O), bias
    M (A, L)                         Parameter                  → M

Every weight moves by ``transpose(2, 3, 1, 0)`` (convolutions and transposed convolutions
alike: ours use ``transpose_kernel=True``) or ``.T`` (Linear). ``*.num_batches_tracked`` of
the batch norms is dropped; every other key must be consumed: missing, unexpected and
misshapen keys are listed in one ``CheckpointError``. The sizes (image size, nf, channels,
attributes, latent width) are read from the shapes.

Memory: the file is read once (``fpn_jax.convert.torch_io.read_state_dict``), the model is
built abstractly (``nnx.eval_shape``: no random initial weights), and each tensor is moved
into it and dropped from the state dict before the next, so the conversion holds about one
copy of the weights plus one tensor (and what ``fpn_jax.checkpoint.save`` needs to write).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fpn_jax import checkpoint
from fpn_jax.autoencoders.msp import MSP
from fpn_jax.checkpoint import CheckpointError

ARCHITECTURE = "msp"
_PERMUTATION = {"conv": (2, 3, 1, 0), "linear": (1, 0), None: None}

# torch suffix → (our leaf, how the array moves), per kind of torch module.
_LEAVES = {
    "conv": {"weight": ("kernel", "conv")},
    "linear": {"weight": ("kernel", "linear"), "bias": ("bias", None)},
    "norm": {"weight": ("scale", None), "bias": ("bias", None), "running_mean": ("mean", None),
             "running_var": ("var", None)},
    "parameter": {"": ("M", None)},
}


def msp_config(state: Mapping[str, Any], *, source: str = "state_dict") -> dict[str, int]:
    """The ``MSP`` constructor arguments a ``CnnVae`` state dict was made with, read from its shapes.

    ``nf`` and ``nc`` from ``encoder.main.0.weight`` (nf, nc, 4, 4); K from the encoder's
    batch norms; the latent width L and the last kernel size from ``encoder.main.{3K+2}.weight``
    (L, nf·2^K, 4, 4), so image_size = 4·2^(K+1); A from ``M`` (A, L).

    Raises:
      CheckpointError: a key needed is missing or misshapen, or the sizes are not a
        power-of-two image (naming the key and the shape found).
    """

    def shape(key: str, rank: int) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(
                f"{source} is not an MSP (lissomx CnnVae) state dict: it has no {key!r} (keys start "
                f"{sorted(state)[:4]}); expected encoder.main.*, decoder.main.*, fc1.*, fc2.* and M."
            )
        found = tuple(int(n) for n in np.shape(state[key]))
        if len(found) != rank:
            raise CheckpointError(f"{source}: {key} has shape {found}; expected {rank} axes.")
        return found

    nf, nc, kh, kw = shape("encoder.main.0.weight", 4)
    blocks = 0
    while f"encoder.main.{3 * (blocks + 1)}.running_mean" in state:
        blocks += 1
    last = f"encoder.main.{3 * blocks + 2}.weight"
    latent, width, kernel, kernel_w = shape(last, 4)
    if (kh, kw) != (4, 4) or (kernel, kernel_w) != (4, 4) or width != nf * 2**blocks:
        raise CheckpointError(
            f"{source}: not a power-of-two MSP encoder: encoder.main.0.weight has shape {(nf, nc, kh, kw)} and "
            f"{last} {(latent, width, kernel, kernel_w)}; expected (nf, nc, 4, 4) and (L, nf·2^{blocks} = "
            f"{nf * 2**blocks}, 4, 4) after {blocks} batch-norm blocks."
        )
    attributes, latent_m = shape("M", 2)
    if latent_m != latent:
        raise CheckpointError(f"{source}: M has shape {(attributes, latent_m)}; expected (A, {latent}) (the "
                              f"latent width of {last}).")
    return {"image_size": 4 * 2 ** (blocks + 1), "nf": nf, "num_attributes": attributes, "nc": nc,
            "latent_features": latent}


def torch_layout(model: MSP) -> list[tuple[str, Any, str]]:
    """(torch key prefix, our module, kind) for every torch module of ``CnnVae`` holding tensors.

    Kinds: ``conv`` (Conv2d and ConvTranspose2d weights), ``norm``, ``linear``, ``parameter``.
    """
    encoder, decoder = model.encoder, model.decoder
    blocks = len(encoder.norms)
    table: list[tuple[str, Any, str]] = [("encoder.main.0", encoder.convs[0], "conv")]
    for k in range(1, blocks + 1):
        table += [(f"encoder.main.{3 * k - 1}", encoder.convs[k], "conv"),
                  (f"encoder.main.{3 * k}", encoder.norms[k - 1], "norm")]
    table.append((f"encoder.main.{3 * blocks + 2}", encoder.convs[-1], "conv"))
    for j in range(blocks + 1):
        table += [(f"decoder.main.{3 * j}", decoder.deconvs[j], "conv"),
                  (f"decoder.main.{3 * j + 1}", decoder.norms[j], "norm")]
    table.append((f"decoder.main.{3 * blocks + 3}", decoder.deconvs[-1], "conv"))
    table += [("fc1", model.fc1, "linear"), ("fc2", model.fc2, "linear"), ("M", model, "parameter")]
    return table


def torch_shapes(model: MSP) -> dict[str, tuple[int, ...]]:
    """The torch state dict's keys and shapes for ``model``'s sizes (without ``num_batches_tracked``)."""
    return {key: shape for key, (_, shape, _) in _moves(model).items()}


def msp_from_state_dict(
    state: MutableMapping[str, Any] | Mapping[str, Any],
    *,
    source: str = "state_dict",
    consume: bool = False,
    **sizes: int,
) -> MSP:
    """Builds the fpn-jax ``MSP`` from a ``CnnVae`` state dict and copies the weights in (eval mode).

    Args:
      state: torch key → array (e.g. from ``fpn_jax.convert.torch_io.read_state_dict``).
      source: the file it came from, for error messages.
      consume: remove each entry from ``state`` once copied (frees the torch copy tensor by
        tensor; ``state`` must then be a mutable mapping that nothing else holds).
      **sizes: ``image_size`` / ``nf`` / ``num_attributes`` / ``nc`` / ``latent_features``
        expected; each given one must equal what the shapes say.

    Raises:
      CheckpointError: the shapes are not an MSP's or disagree with ``sizes``, or keys do not
        map: every missing, unexpected or misshapen key is listed.
    """
    from fpn_jax import autoencoders
    from fpn_jax.convert.torch_io import check_state_dict

    if state and all(k.startswith("module.") for k in state):  # saved from a DataParallel wrapper
        stripped = {k.removeprefix("module."): v for k, v in state.items()}
        if consume:
            state.clear()
        state = stripped
        consume = True
    config = msp_config(state, source=source)
    unknown = sorted(set(sizes) - set(config))
    if unknown:
        raise TypeError(f"msp_from_state_dict: unknown size(s) {unknown}; known: {sorted(config)}.")
    wrong = {k: (v, config[k]) for k, v in sizes.items() if v is not None and v != config[k]}
    if wrong:
        described = ", ".join(f"{k}: expected {v[0]}, the file has {v[1]}" for k, v in wrong.items())
        raise CheckpointError(f"{source} does not have the requested sizes ({described}).")
    model = nnx.eval_shape(lambda: MSP(**config, rngs=nnx.Rngs(0)))
    moves = _moves(model)
    norms = {key.rsplit(".", 1)[0] for key in moves if key.endswith(".running_mean")}
    stray = sorted(k for k in state if k.endswith(".num_batches_tracked") and k.rsplit(".", 1)[0] not in norms)
    if stray:
        raise CheckpointError(f"{source} does not match MSP ({_describe(config)}): unexpected keys "
                              f"({len(stray)}): {', '.join(stray)}.")
    check_state_dict(state, {key: shape for key, (_, shape, _) in moves.items()}, source=source,
                     architecture=f"MSP ({_describe(config)})")
    for key, (variable, _, permutation) in moves.items():
        array = np.asarray(state.pop(key) if consume else state[key], dtype=np.float32)
        if permutation is not None:
            array = array.transpose(permutation)  # a view: the device copy below is the only one
        variable.set_value(jnp.asarray(array))
        del array
    if consume:
        for key in [k for k in state if k.endswith(".num_batches_tracked")]:
            del state[key]
    unset = [jax.tree_util.keystr(path) for path, value in jax.tree_util.tree_leaves_with_path(nnx.state(model))
             if isinstance(value, jax.ShapeDtypeStruct)]
    if unset:  # a variable the layout does not name: a bug here, not in the file
        raise CheckpointError(f"{source}: no torch key maps to MSP's {', '.join(unset)}.")
    return autoencoders.freeze(model)


def convert_msp(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    image_size: int | None = None,
    nf: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Converts MSP's ``MSP_CelebA.tch`` into an fpn-jax checkpoint (``fpn_jax.autoencoders.load``).

    Nothing is written unless the whole conversion succeeds. The checkpoint's ``extra``
    records the source file.

    Args:
      source: the torch state dict file (``torch.save(model.state_dict(), ...)``).
      destination: the output checkpoint folder.
      image_size: expected image size (None: read from the shapes; 256 for ``MSP_CelebA.tch``).
      nf: expected first-layer width (None: read from the shapes; 64 for ``MSP_CelebA.tch``).
      overwrite: replace an existing ``destination``.

    Returns:
      The absolute path written.

    Raises:
      CheckpointError: an unreadable file, sizes other than the expected ones, or keys that
        do not map (all listed).
      FileExistsError: ``destination`` exists and ``overwrite`` is False.
      ImportError: torch is not installed.
    """
    from fpn_jax.convert.torch_io import read_state_dict

    source = Path(source)
    destination = Path(destination)
    if destination.exists() and not overwrite:  # before reading a ~1 GB file
        raise FileExistsError(f"convert_msp: {destination.absolute()} exists; pass overwrite=True (--overwrite).")
    state = read_state_dict(source)
    model = msp_from_state_dict(state, source=str(source), consume=True, image_size=image_size, nf=nf)
    del state
    extra = {"converted_from": str(source.absolute()), "source": "MSP CnnVae (lissomx/MSP)"}
    return checkpoint.save(destination, model, extra=extra, overwrite=overwrite)


# -- helpers -----------------------------------------------------------------------------------
def _moves(model: MSP) -> dict[str, tuple[nnx.Variable, tuple[int, ...], tuple[int, ...] | None]]:
    """Torch key → (our variable, torch shape, permutation taking the torch array to ours)."""
    moves = {}
    for prefix, module, kind in torch_layout(model):
        for suffix, (leaf, transform) in _LEAVES[kind].items():
            variable = getattr(module, leaf)
            ours = tuple(int(n) for n in variable.get_value().shape)
            permutation = _PERMUTATION[transform]
            theirs = ours if permutation is None else tuple(ours[a] for a in np.argsort(permutation))
            moves[f"{prefix}.{suffix}" if suffix else prefix] = (variable, theirs, permutation)
    return moves


def _describe(config: Mapping[str, int]) -> str:
    return (f"image_size {config['image_size']}, nf {config['nf']}, nc {config['nc']}, "
            f"{config['num_attributes']} attributes, latent {config['latent_features']}")
