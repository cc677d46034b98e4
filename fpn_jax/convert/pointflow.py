"""PointFlow's released auto-encoder checkpoint (PyTorch) → an fpn-jax ``PointFlow`` checkpoint.

PointFlow (Yang et al., 2019, "PointFlow: 3D Point Cloud Generation with Continuous
Normalizing Flows") distributes ``pretrained_models.zip``; its ``ae/all/checkpoint.pt`` is the
all-category auto-encoder that Flow Plugin Networks uses, beside ``train_set_mean.npy`` and
``train_set_std.npy`` (the data normalisation). The file is what ``torch.save`` wrote: a bare
state dict (what ``test.py`` loads) or ``{'epoch', 'model', 'optimizer'}`` (what ``train.py``
saves), possibly in torch's legacy (pre-1.6) format; both are read with
``torch.load(weights_only=True)``. The encoder and the point flow were each wrapped in
``DataParallel``, so the keys start ``encoder.module.`` and ``point_cnf.module.`` (keys without
``.module`` are accepted too). Key mapping (torch → ours), i, j counted from 1::

    encoder.conv{i}.weight (O, I, 1), .bias     → encoder.convs[i-1]: kernel w[:, :, 0].T (I, O), bias
    encoder.bn{i}.weight/bias/running_mean/var  → encoder.conv_norms[i-1]: scale/bias/mean/var
    encoder.fc{j}.weight (O, I), .bias          → encoder.fcs[j-1]: kernel (I, O), bias
    encoder.fc_bn{j}.*                          → encoder.fc_norms[j-1]
    point_cnf.chain.{0,2}.weight/bias/running_mean/running_var → point_cnf.norm_{in,out}: weight/bias/mean/var
    point_cnf.chain.1.sqrt_end_time ()          → point_cnf.cnf.sqrt_end_time
    point_cnf.chain.1.odefunc.diffeq.layers.{k}._layer / _hyper_gate (weight, bias) / _hyper_bias (weight)
                                                → point_cnf.cnf.odenet.layers[k].layer / hyper_gate / hyper_bias

Dropped on purpose (counters, not parameters): ``*.num_batches_tracked`` (batch norm),
``point_cnf.chain.{0,2}.step`` (moving batch norm) and ``point_cnf.chain.1.odefunc._num_evals``.
Every other key must be consumed; anything else is a ``CheckpointError`` listing the missing,
unexpected and misshapen keys. The sizes (point dimension, encoder widths, latent size, ODE
net widths, batch norm or not, a trained T or not) are read from the shapes. PointFlow's
generative model (``latent_cnf.*`` keys, or the stochastic encoder's ``fc1_m``/``fc1_v``) is
refused, and so is a file whose folder names a single ShapeNet category (the released
``ae/airplane``): its weights look exactly like the all-category model's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from fpn_jax import autoencoders, checkpoint
from fpn_jax.autoencoders.pointflow import PointFlow
from fpn_jax.checkpoint import CheckpointError
from fpn_jax.data.shapenet import SHAPENET_CATEGORIES

ARCHITECTURE = "pointflow"
ENCODER, DECODER = "encoder.", "point_cnf."
DROPPED = ("num_batches_tracked", "step", "_num_evals")  # last dotted part of the dropped keys
_CATEGORY_NAMES = frozenset(name for _, name in SHAPENET_CATEGORIES) | frozenset(s for s, _ in SHAPENET_CATEGORIES)

# torch suffix → (our leaf, transpose): how one torch module's tensors land in ours.
_LEAVES = {
    "conv": {"weight": ("kernel", "conv"), "bias": ("bias", None)},
    "linear": {"weight": ("kernel", "linear"), "bias": ("bias", None)},
    "linear_nobias": {"weight": ("kernel", "linear")},
    "norm": {"weight": ("scale", None), "bias": ("bias", None), "running_mean": ("mean", None),
             "running_var": ("var", None)},
    "moving_norm": {"weight": ("weight", None), "bias": ("bias", None), "running_mean": ("mean", None),
                    "running_var": ("var", None)},
    "scalar": {"": ("sqrt_end_time", None)},
}


def read_pointflow_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PointFlow checkpoint file as ``{key: array}`` with the ``.module`` of DataParallel removed.

    Args:
      path: ``checkpoint.pt``: a state dict, or ``{'epoch', 'model', 'optimizer'}`` holding one
        under ``'model'``; zip or legacy torch format. Loaded with ``weights_only=True``.

    Raises:
      ImportError: torch is not installed.
      CheckpointError: the file is missing, unreadable, holds no state dict, or holds
        non-finite values (naming the tensors).
    """
    from fpn_jax.convert.torch_io import read_state_dict

    state = read_state_dict(path, wrappers=("model", "state_dict"))  # train.py: {'epoch', 'model', 'optimizer'}
    return {_strip_data_parallel(key): value for key, value in state.items()}


def _strip_data_parallel(key: str) -> str:
    """``encoder.module.x`` → ``encoder.x`` (each submodule was wrapped in DataParallel separately)."""
    for prefix in ("encoder", "point_cnf", "latent_cnf"):
        if key.startswith(f"{prefix}.module."):
            return f"{prefix}.{key[len(prefix) + len('.module.'):]}"
    return key


def pointflow_config(state: Mapping[str, np.ndarray], *, source: str = "state_dict") -> dict[str, Any]:
    """The ``PointFlow`` sizes a state dict (keys without ``.module``) was made with.

    Raises:
      CheckpointError: the weights are PointFlow's generative model, or not a PointFlow
        auto-encoder at all (naming what is missing).
    """
    state = {_strip_data_parallel(k): v for k, v in state.items()}
    if any(k.startswith("latent_cnf.") for k in state) or any(k.startswith("encoder.fc1_m.") for k in state):
        raise CheckpointError(
            f"{source} is PointFlow's generative model (it has a latent CNF (latent_cnf.*) or a stochastic "
            "encoder (fc*_m / fc*_v)); Flow Plugin Networks use the all-category auto-encoder, "
            "pretrained_models/ae/all/checkpoint.pt (trained with --use_deterministic_encoder)."
        )

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(
                f"{source} is not a PointFlow auto-encoder state dict: it has no {key!r} (keys start "
                f"{sorted(state)[:4]}); expected encoder.module.* and point_cnf.module.* keys."
            )
        return tuple(np.shape(state[key]))

    convs = _count(state, "encoder.conv{}.weight")
    fcs = _count(state, "encoder.fc{}.weight")
    if convs == 0 or fcs == 0:
        shape("encoder.conv1.weight" if convs == 0 else "encoder.fc1.weight")
    conv_dims = [shape(f"encoder.conv{i}.weight")[0] for i in range(1, convs + 1)]
    fc_dims = [shape(f"encoder.fc{j}.weight")[0] for j in range(1, fcs + 1)]
    point_dims = _dim(shape("encoder.conv1.weight"), 1, "encoder.conv1.weight", source)
    batch_norm = "point_cnf.chain.0.running_mean" in state
    cnf = "point_cnf.chain.1." if batch_norm else "point_cnf.chain.0."
    layer = cnf + "odefunc.diffeq.layers.{}._layer.weight"
    layers = _count(state, layer, start=0)
    if layers == 0:
        shape(layer.format(0))
    widths = [shape(layer.format(k))[0] for k in range(layers)]
    context = _dim(shape(cnf + "odefunc.diffeq.layers.0._hyper_gate.weight"), 1, "_hyper_gate.weight", source)
    if context != fc_dims[-1] + 1:
        raise CheckpointError(
            f"{source}: the point CNF's context has {context} features but the encoder's codes {fc_dims[-1]} "
            "(expected 1 + latent size, [t, z])."
        )
    return {
        "latent_features": fc_dims[-1], "point_dims": point_dims, "encoder_conv_dims": conv_dims,
        "encoder_fc_dims": fc_dims[:-1], "hidden_dims": widths[:-1], "batch_norm": batch_norm,
        "train_T": cnf + "sqrt_end_time" in state,
    }


def pointflow_from_state_dict(
    state: Mapping[str, np.ndarray], *, source: str = "state_dict", **options: Any
) -> PointFlow:
    """Builds the fpn-jax ``PointFlow`` from a PointFlow state dict and copies the weights in (eval mode).

    Args:
      state: torch key → array (with or without ``.module``), e.g. from ``read_pointflow_checkpoint``.
      source: the file it came from, for error messages.
      **options: further ``PointFlow`` arguments (``num_points``, solver settings...).

    Raises:
      CheckpointError: a generative checkpoint, or keys that do not map: every missing,
        unexpected or misshapen key is listed.
    """
    from fpn_jax.convert.torch_io import check_state_dict

    state = {_strip_data_parallel(k): v for k, v in state.items()}
    config = pointflow_config(state, source=source) | options
    model = PointFlow(**config, rngs=nnx.Rngs(0))
    table = _table(model)
    expected, moves = {}, {}
    for torch_prefix, module, kind in table:
        for suffix, (leaf, transform) in _LEAVES[kind].items():
            variable = getattr(module, leaf)
            ours = tuple(variable[...].shape)
            theirs = {"conv": ours[::-1] + (1,), "linear": ours[::-1]}.get(transform, ours)
            key = f"{torch_prefix}.{suffix}" if suffix else torch_prefix
            expected[key] = theirs
            moves[key] = (variable, transform)
    dropped = {k for k in state if k.rsplit(".", 1)[-1] in DROPPED and _droppable(k, expected)}
    kept = {k: v for k, v in state.items() if k not in dropped}
    stray = sorted(k for k in kept if k.endswith("num_batches_tracked"))  # check_state_dict would skip them
    if stray:
        raise CheckpointError(f"{source} does not match PointFlow's auto-encoder: unexpected keys "
                              f"({len(stray)}): {', '.join(stray)}.")
    check_state_dict(kept, expected, source=source, architecture="PointFlow's auto-encoder "
                     f"({_describe(config)})")
    for key, (variable, transform) in moves.items():
        array = np.asarray(state[key], dtype=np.float32)
        if transform == "conv":
            array = array[:, :, 0].T
        elif transform == "linear":
            array = array.T
        variable[...] = array.copy(order="C")
    return autoencoders.freeze(model)


def convert_pointflow(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    mean: str | os.PathLike | np.ndarray | None = None,
    std: str | os.PathLike | np.ndarray | None = None,
    overwrite: bool = False,
    allow_single_category: bool = False,
    **options: Any,
) -> Path:
    """Converts PointFlow's ``checkpoint.pt`` into an fpn-jax checkpoint (``fpn_jax.autoencoders.load``).

    The checkpoint's ``extra`` records the source and, given ``mean`` and ``std``
    (``train_set_mean.npy`` (1, 1, 3), ``train_set_std.npy`` (1, 1, 1)), the normalisation
    ``{"normalization": {"mean": [3 floats], "std": [1 or 3 floats]}}`` (read it back with
    ``fpn_jax.autoencoders.pointflow.read_normalization``). Nothing is written unless the
    whole conversion succeeds.

    Args:
      source: the PyTorch checkpoint file.
      destination: the output checkpoint folder.
      mean: the per-axis mean of the normalisation (a ``.npy`` path or an array); with ``std`` or not at all.
      std: its scalar (or per-axis) standard deviation.
      overwrite: replace an existing ``destination``.
      allow_single_category: convert even though the file's folder names one ShapeNet category.
      **options: further ``PointFlow`` arguments (``num_points``, solver settings...).

    Raises:
      CheckpointError: an unreadable file, a generative or (recognisably) single-category
        checkpoint, keys that do not map, or bad normalisation files.
      ValueError: only one of ``mean`` and ``std``.
    """
    if (mean is None) != (std is None):
        raise ValueError("convert_pointflow: pass both `mean` and `std` (train_set_mean.npy, train_set_std.npy) "
                         "or neither.")
    source = Path(source)
    folder = source.absolute().parent.name
    if folder in _CATEGORY_NAMES and not allow_single_category:
        raise CheckpointError(
            f"{source} lies in a folder named after the ShapeNet category {folder!r}: it looks like one of "
            "PointFlow's single-category models (pretrained_models/ae/airplane); Flow Plugin Networks use the "
            "all-category auto-encoder, pretrained_models/ae/all/checkpoint.pt. Pass allow_single_category=True "
            "(--allow-single-category) if it is not."
        )
    state = read_pointflow_checkpoint(source)
    model = pointflow_from_state_dict(state, source=str(source), **options)
    extra: dict[str, Any] = {"converted_from": str(source.absolute()), "source": "PointFlow auto-encoder"}
    if mean is not None:
        point_dims = model.point_dims
        mean_values = _statistic(mean, "mean", (point_dims,))
        std_values = _statistic(std, "std", (1, point_dims))
        if np.any(std_values <= 0):
            raise CheckpointError(f"the normalisation std must be positive; got {std_values.tolist()}.")
        extra["normalization"] = {"mean": mean_values.tolist(), "std": std_values.tolist()}
    return checkpoint.save(destination, model, extra=extra, overwrite=overwrite)


# -- helpers ----------------------------------------------------------------------------------
def _table(model: PointFlow) -> list[tuple[str, Any, str]]:
    """(torch prefix, our module, kind) for every torch module holding tensors."""
    encoder, flow = model.encoder, model.point_cnf
    table: list[tuple[str, Any, str]] = []
    for i, (conv, norm) in enumerate(zip(encoder.convs, encoder.conv_norms, strict=True), start=1):
        table += [(f"encoder.conv{i}", conv, "conv"), (f"encoder.bn{i}", norm, "norm")]
    for j, fc in enumerate(encoder.fcs, start=1):
        table.append((f"encoder.fc{j}", fc, "linear"))
    for j, norm in enumerate(encoder.fc_norms, start=1):
        table.append((f"encoder.fc_bn{j}", norm, "norm"))
    cnf = "point_cnf.chain.1" if flow.norm_in is not None else "point_cnf.chain.0"
    if flow.norm_in is not None:
        table += [("point_cnf.chain.0", flow.norm_in, "moving_norm"), ("point_cnf.chain.2", flow.norm_out,
                                                                        "moving_norm")]
    if flow.cnf.train_T:
        table.append((f"{cnf}.sqrt_end_time", flow.cnf, "scalar"))
    for k, layer in enumerate(flow.cnf.odenet.layers):
        prefix = f"{cnf}.odefunc.diffeq.layers.{k}"
        table += [(f"{prefix}._layer", layer.layer, "linear"), (f"{prefix}._hyper_gate", layer.hyper_gate, "linear"),
                  (f"{prefix}._hyper_bias", layer.hyper_bias, "linear_nobias")]
    return table


def _droppable(key: str, expected: Mapping[str, Any]) -> bool:
    """A counter of a module we map: ``<norm>.num_batches_tracked``, ``<mbn>.step``, ``<cnf>.odefunc._num_evals``."""
    owner, name = key.rsplit(".", 1)
    if name == "_num_evals":
        return owner.endswith(".odefunc") and any(k.startswith(owner + ".diffeq.") for k in expected)
    family = "point_cnf." if name == "step" else "encoder."
    return owner.startswith(family) and f"{owner}.running_mean" in expected


def _count(state: Mapping[str, Any], pattern: str, start: int = 1) -> int:
    n = 0
    while pattern.format(start + n) in state:
        n += 1
    return n


def _dim(shape: tuple[int, ...], axis: int, name: str, source: str) -> int:
    if len(shape) <= axis:
        raise CheckpointError(f"{source}: {name} has shape {shape}; expected a weight matrix.")
    return int(shape[axis])


def _describe(config: Mapping[str, Any]) -> str:
    return (f"latent {config['latent_features']}, encoder {list(config['encoder_conv_dims'])} + "
            f"{list(config['encoder_fc_dims'])}, ODE net {list(config['hidden_dims'])}, "
            f"batch_norm={config['batch_norm']}, train_T={config['train_T']}")


def _statistic(value: Any, name: str, sizes: tuple[int, ...]) -> np.ndarray:
    """A normalisation file or array as a flat float64 vector of one of ``sizes`` finite values."""
    where = f"the normalisation {name}"
    if isinstance(value, (str, os.PathLike)):
        try:
            value = np.load(value, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise CheckpointError(f"cannot read {where} file {str(value)!r}: {error}") from error
    array = np.asarray(value)
    if array.size not in sizes or not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise CheckpointError(
            f"{where} must hold {' or '.join(map(str, sizes))} finite numbers (PointFlow's "
            f"train_set_{name}.npy: shape (1, 1, {sizes[-1] if name == 'mean' else 1})); got shape {array.shape}, "
            f"dtype {array.dtype}."
        )
    return array.astype(np.float64).reshape(-1)

