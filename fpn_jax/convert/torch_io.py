"""Reading PyTorch checkpoints as NumPy, and checking them against an expected layout.

``read_torch_file`` reads every kind of file the original FPN code leaves on disk: a plain
``state_dict`` (``.pt``/``.pth``), a PyTorch Lightning ``.ckpt`` (old ones, whose callback states
are keyed by class objects, included), and a whole pickled module (``model.pkt``, what the
original ``run.py`` saves), with the original's ``config.yaml`` found beside it or one folder up.
Nothing in the file is run: see ``fpn_jax.convert.pickled``. ``read_state_dict`` returns just
the arrays.

torch is imported lazily: importing this module (or any converter) never imports torch.
Install it with ``pip install "fpn-jax[torch]"``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fpn_jax.checkpoint import CheckpointError
from fpn_jax.convert.pickled import (
    NotATorchFileError,
    PickledObject,
    StandIn,
    TorchFileError,
    TruncatedFileError,
    UnknownClassError,
)

__all__ = [
    "ConfigMismatchWarning",
    "NotATorchFileError",
    "TorchFile",
    "TorchFileError",
    "TruncatedFileError",
    "UnknownClassError",
    "UnsupportedVariantError",
    "check_destination",
    "check_state_dict",
    "find_original_config",
    "read_state_dict",
    "read_torch_file",
]

IGNORED_SUFFIXES = ("num_batches_tracked",)
CONFIG_NAME = "config.yaml"


class UnsupportedVariantError(CheckpointError):
    """The file holds a model of a variant that fpn-jax cannot represent exactly.

    Attributes:
      variant: what it is, in words (``"a MAF without residual blocks"``).
    """

    def __init__(self, message: str, variant: str):
        super().__init__(message)
        self.variant = variant


class ConfigMismatchWarning(UserWarning):
    """The original code's ``config.yaml`` beside a checkpoint disagrees with its weights."""


@dataclasses.dataclass(frozen=True)
class TorchFile:
    """What a torch file holds, read without running any of its code.

    Attributes:
      source: the file, for messages.
      state: ``{key: array}``, the ``state_dict`` (of the pickled module, if it is one).
      layout: ``"state_dict"``, ``"wrapped"`` (a dict holding it, e.g. a Lightning ``.ckpt``)
        or ``"module"`` (a whole pickled module).
      module: the pickled module's inert stand-in (class, attributes, submodules), or None.
      config: the original code's ``config.yaml`` beside the file (parsed), or None.
      config_path: where that config was found, or None.
    """

    source: str
    state: dict[str, np.ndarray]
    layout: str
    module: PickledObject | None = None
    config: dict[str, Any] | None = None
    config_path: Path | None = None


def find_original_config(path: str | os.PathLike) -> tuple[dict[str, Any] | None, Path | None]:
    """The original FPN code's ``config.yaml`` for a checkpoint, if there is one.

    ``run.py`` writes ``version_N/config.yaml`` and ``version_N/checkpoints/model.pkt`` (Lightning
    writes its ``.ckpt`` files to the same ``checkpoints`` folder), so the file's folder and the
    one above are searched, in that order. Only a YAML mapping with a ``model_params`` mapping
    (``name``, ``params``) counts; anything else is ignored.

    Args:
      path: the checkpoint file.

    Returns:
      ``(config, its path)``, or ``(None, None)``.
    """
    import yaml

    path = Path(path)
    for folder in (path.parent, path.parent.parent):
        candidate = folder / CONFIG_NAME
        if not candidate.is_file():
            continue
        try:
            config = yaml.safe_load(candidate.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        params = config.get("model_params") if isinstance(config, dict) else None
        if isinstance(params, dict) and "name" in params:
            if not isinstance(params.get("params"), dict):
                params["params"] = {}
            return config, candidate
    return None, None


def read_torch_file(
    path: str | os.PathLike, *, wrappers: tuple[str, ...] = ("state_dict",), config: bool = True
) -> TorchFile:
    """Reads a torch file (state dict, Lightning checkpoint or pickled module) as NumPy arrays.

    Loading uses torch's restricted unpickler (``weights_only=True``) with inert stand-ins for
    the classes it names (``fpn_jax.convert.pickled``): no code from the file is run, and
    neither the original repository, nflows nor Lightning needs to be installed. A mapping
    holding the state dict (or a pickled module) under one of ``wrappers`` is unwrapped; if
    every key of a state dict starts with ``model.`` (a LightningModule wrapping the network as
    ``self.model``) that prefix is removed.

    Args:
      path: the file.
      wrappers: keys under which a dict may hold the state dict, tried in order
        (``"state_dict"`` for Lightning; PointFlow's train.py saves it under ``"model"``).
      config: look for the original code's ``config.yaml`` beside the file.

    Returns:
      A ``TorchFile``; arrays in their stored dtype (bfloat16 becomes float32).

    Raises:
      ImportError: torch is not installed.
      CheckpointError: the file is missing or a folder, or holds no state dict, or holds
        tensors with NaN or infinite values (naming them). Its subclasses say why a file cannot
        be read: ``NotATorchFileError``, ``TruncatedFileError``, ``UnknownClassError`` (a pickled
        object of a class fpn-jax does not know, named).
    """
    from fpn_jax.convert import pickled

    path = Path(path)
    if path.is_dir():
        raise NotATorchFileError(
            f"{str(path)!r} is a folder, not a torch file (an fpn-jax checkpoint already? Load it with "
            "fpn_jax.checkpoint.load)."
        )
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {str(path)!r}.")
    obj = pickled.load(path)
    layout = "state_dict"
    wrapper = next(
        (w for w in wrappers if isinstance(obj, Mapping) and isinstance(obj.get(w), (Mapping, PickledObject))), None
    )
    if wrapper is not None:
        obj, layout = obj[wrapper], "wrapped"
    module = None
    if isinstance(obj, PickledObject) and obj.is_module:
        module, obj, layout = obj, obj.state_dict(), "module"
    if not isinstance(obj, Mapping) or not obj:
        under = " or ".join(repr(w) for w in wrappers)
        found = obj.qualified_name if isinstance(obj, StandIn) or _is_stand_in_class(obj) else type(obj).__name__
        raise CheckpointError(
            f"{str(path)!r} holds no state_dict (a non-empty mapping of parameter names to "
            f"tensors, possibly under {under}) and no pickled module; found {found}."
        )
    state = _arrays(obj, path)
    if layout != "module" and all(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}
    found_config, config_path = find_original_config(path) if config else (None, None)
    return TorchFile(str(path), state, layout, module, found_config, config_path)


def _is_stand_in_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, StandIn)


def _arrays(obj: Mapping, path: Path) -> dict[str, np.ndarray]:
    """``{key: array}`` of a mapping of tensors; names NaN/inf tensors and non-tensor entries."""
    import torch

    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            what = value.qualified_name if isinstance(value, StandIn) else type(value).__name__
            raise CheckpointError(f"{str(path)!r} is not a state_dict: entry {key!r} is a {what}, not a tensor.")
        value = value.detach().cpu()
        state[str(key)] = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    bad = [k for k, v in state.items() if np.issubdtype(v.dtype, np.inexact) and not np.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"{str(path)!r} holds NaN or infinite values (a diverged run?) in {len(bad)} tensor(s): "
            + ", ".join(sorted(bad, key=_natural)[:10]) + (", ..." if len(bad) > 10 else "") + "."
        )
    return state


def read_state_dict(path: str | os.PathLike, *, wrappers: tuple[str, ...] = ("state_dict",)) -> dict[str, np.ndarray]:
    """Reads the ``state_dict`` of a torch file as NumPy arrays (see ``read_torch_file``).

    Accepts a plain state dict (``.pt``/``.pth``), a dict holding one under a wrapper key (a
    PyTorch Lightning ``.ckpt``, old class-keyed callback states included) or a whole pickled
    module of nflows, torch.nn or the original FPN code. No code from the file is executed.

    Args:
      path: the checkpoint file.
      wrappers: keys under which a dict may hold the state dict, tried in order
        (``"state_dict"`` for Lightning; PointFlow's train.py saves it under ``"model"``).

    Returns:
      ``{key: array}``, arrays in their stored dtype (bfloat16 becomes float32).

    Raises:
      ImportError: torch is not installed.
      CheckpointError: the file is missing, not a torch file, truncated, corrupt, a pickle of
        an unknown class, holds no state dict, or holds tensors with NaN or infinite values
        (naming them); see ``read_torch_file``.
    """
    return read_torch_file(path, wrappers=wrappers, config=False).state


def check_destination(destination: str | os.PathLike, overwrite: bool) -> None:
    """Fails early, before any reading, if ``destination`` exists and may not be replaced.

    Raises:
      FileExistsError: ``destination`` exists and ``overwrite`` is False (the message names
        ``overwrite=True``; the command line names ``--overwrite``).
    """
    if Path(destination).exists() and not overwrite:
        raise FileExistsError(f"{Path(destination).absolute()} exists; pass overwrite=True to replace it.")


def _natural(key: str) -> list:
    """Sort key ordering ``blocks.10`` after ``blocks.9``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def check_state_dict(
    state: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
    *,
    source: str,
    architecture: str,
) -> None:
    """Checks a state dict's keys and shapes against an architecture's expected layout.

    Keys ending in ``num_batches_tracked`` are ignored on both sides.

    Args:
      state: ``{key: array}`` as read by ``read_state_dict``.
      expected: ``{key: shape}`` of the architecture.
      source: where ``state`` came from (a file name), for the message.
      architecture: what it was checked against, for the message.

    Raises:
      CheckpointError: listing every missing key, every unexpected key and every shape
        mismatch (expected vs actual shape).
    """
    got = {k: tuple(np.shape(v)) for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}
    want = {k: tuple(int(n) for n in s) for k, s in expected.items() if not k.endswith(IGNORED_SUFFIXES)}
    missing = sorted(want.keys() - got.keys(), key=_natural)
    unexpected = sorted(got.keys() - want.keys(), key=_natural)
    mismatched = [
        f"{k}: expected {want[k]}, got {got[k]}"
        for k in sorted(want.keys() & got.keys(), key=_natural)
        if want[k] != got[k]
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = [f"{source} does not match {architecture}:"]
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
    ):
        if items:
            parts.append(f"  {title} ({len(items)}):")
            parts.extend(f"    {item}" for item in items)
    raise CheckpointError("\n".join(parts))
