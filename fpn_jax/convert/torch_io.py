"""Reading PyTorch checkpoints as NumPy, and checking them against an expected layout.

torch is imported lazily inside ``read_state_dict`` only: importing this module (or any
converter) never imports torch. Install it with ``pip install "fpn-jax[torch]"``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fpn_jax.checkpoint import CheckpointError

IGNORED_SUFFIXES = ("num_batches_tracked",)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            'Reading PyTorch checkpoints needs torch: pip install "fpn-jax[torch]" '
            "(the CPU build is enough)."
        ) from e
    return torch


def read_state_dict(path: str | os.PathLike, *, wrappers: tuple[str, ...] = ("state_dict",)) -> dict[str, np.ndarray]:
    """Reads a PyTorch ``state_dict`` saved with ``torch.save`` as NumPy arrays.

    Accepts a plain state dict (``.pt``/``.pth``) or a dict holding one under
    ``"state_dict"`` (a PyTorch Lightning ``.ckpt``). If every key starts with ``model.``
    (a LightningModule wrapping the network as ``self.model``) that prefix is removed.
    Loading uses ``torch.load(..., map_location="cpu", weights_only=True)``: no code from
    the file is executed.

    Args:
      path: the checkpoint file.
      wrappers: keys under which a dict may hold the state dict, tried in order
        (``"state_dict"`` for Lightning; PointFlow's train.py saves it under ``"model"``).

    Returns:
      ``{key: array}``, arrays in their stored dtype (bfloat16 becomes float32).

    Raises:
      ImportError: torch is not installed.
      CheckpointError: the file is missing, truncated, corrupt, holds no state dict, or
        holds tensors with NaN or infinite values (naming them).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {str(path)!r}.")
    torch = _import_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError...
        raise CheckpointError(
            f"Cannot read {str(path)!r} as a PyTorch checkpoint; the file may be truncated or "
            f"corrupt ({type(e).__name__}: {e})"
        ) from e
    wrapper = next((w for w in wrappers if isinstance(obj, Mapping) and isinstance(obj.get(w), Mapping)), None)
    if wrapper is not None:
        obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj:
        under = " or ".join(repr(w) for w in wrappers)
        raise CheckpointError(
            f"{str(path)!r} holds no state_dict (a non-empty mapping of parameter names to "
            f"tensors, possibly under {under}); found {type(obj).__name__}."
        )
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{str(path)!r} is not a state_dict: entry {key!r} is a {type(value).__name__}, not a tensor."
            )
        value = value.detach().cpu()
        state[str(key)] = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    if all(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}
    bad = [
        k for k, v in state.items()
        if np.issubdtype(v.dtype, np.inexact) and not np.isfinite(v).all()
    ]
    if bad:
        raise CheckpointError(
            f"{str(path)!r} holds NaN or infinite values (a diverged run?) in {len(bad)} tensor(s): "
            + ", ".join(sorted(bad, key=_natural)[:10]) + (", ..." if len(bad) > 10 else "") + "."
        )
    return state


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
