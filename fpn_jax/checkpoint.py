"""Orbax checkpoints of fpn-jax modules: one folder = the module's state + what it is.

A checkpoint folder holds two orbax items:

* ``state``: every ``nnx.Variable`` of the module (parameters, batch-norm statistics...);
* ``meta``: JSON ``{"format", "architecture", "config", "extra"}``. ``architecture`` is a
  name registered with ``register`` (``fpn_jax.registry``) and ``config`` the constructor's keyword arguments, so
  ``load(path)`` rebuilds the module without the caller knowing what it was.

Writes are atomic: orbax writes into a temporary folder and renames it when complete, and
``save(..., overwrite=True)`` moves the old folder aside only once the new one is whole, so
a crash at any point leaves a loadable checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from fpn_jax.errors import CheckpointError
from fpn_jax.registry import architectures, build, register

FORMAT = "fpn-jax/1"

__all__ = ["CheckpointError", "architectures", "build", "load", "read_meta", "register", "save"]


def save(path: str | os.PathLike, module: nnx.Module, *, extra: dict[str, Any] | None = None,
         overwrite: bool = False) -> Path:
    """Writes ``module`` (a registered architecture) to the folder ``path``.

    Args:
      path: the checkpoint folder (created; its parent too).
      module: an instance of a class decorated with ``register``.
      extra: JSON-able notes kept beside it (training history, data set...).
      overwrite: replace an existing checkpoint (atomically) instead of raising.

    Returns:
      The absolute path written.
    """
    path = Path(path).absolute()
    name = getattr(type(module), "architecture", None)
    if name is None:
        raise TypeError(f"save: {type(module).__name__} is not a registered architecture (see checkpoint.register).")
    meta = {"format": FORMAT, "architecture": name, "config": module.config, "extra": extra or {}}
    try:
        json.dumps(meta)
    except TypeError as error:
        raise TypeError(
            f"save: the configuration of {type(module).__name__} is not JSON-able ({error}); "
            f"custom callables (such as a non-jax.nn activation) cannot be stored: {module.config}"
        ) from None
    if path.exists() and not overwrite:
        raise FileExistsError(f"save: {path} exists; pass overwrite=True to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{_token()}")
    state = jax.device_get(nnx.to_pure_dict(nnx.state(module)))
    try:
        with _checkpointer() as checkpointer:
            checkpointer.save(
                temporary, ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
            )
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if jax.process_index() == 0:  # several processes (every one calls save): process 0 renames
        _recover(path)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            os.replace(temporary, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, path)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"fpn_jax.checkpoint.save {path}")
    return path


def _token() -> str:
    """A random name for a temporary folder, the same in every process of a multi-process run."""
    token = np.frombuffer(uuid.uuid4().bytes[:4], np.int32)
    if jax.process_count() > 1:  # orbax writes one folder with every process: process 0's name
        token = multihost_utils.broadcast_one_to_all(token)
    return f"{int(np.asarray(token).view(np.uint32)[0]):08x}"


def _recover(path: Path) -> None:
    """Puts back the previous checkpoint if a crash in ``save`` left it moved aside.

    ``save(overwrite=True)`` renames the old folder to ``.NAME.old-*`` and then the complete new
    one (``.NAME.tmp-*``) to NAME. A crash between the two renames leaves no NAME: the old
    folder, complete, is renamed back (and the unfinished new one removed).
    """
    if path.exists():
        return
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.replace(olds[-1], path)
        for leftover in [*olds[:-1], *path.parent.glob(f".{path.name}.tmp-*")]:
            shutil.rmtree(leftover, ignore_errors=True)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``meta`` item of a checkpoint: architecture, config and extra notes."""
    path = Path(path)
    _recover(path.absolute())
    file = path / "meta" / "metadata"
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder.")
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not an fpn-jax checkpoint (no {file.relative_to(path)}).") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file}: corrupt checkpoint metadata ({error}).") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise CheckpointError(f"{file}: unknown checkpoint format {found!r}; expected {FORMAT!r}.")
    kinds = {"architecture": str, "config": dict, "extra": dict}
    problems = [
        f"`{k}` is missing" if k not in meta else f"`{k}` must be a {t.__name__}, got {type(meta[k]).__name__}"
        for k, t in kinds.items()
        if not isinstance(meta.get(k), t)
    ]
    if problems:
        raise CheckpointError(f"{file}: corrupt checkpoint metadata: {'; '.join(problems)}.")
    return meta


def load(path: str | os.PathLike, *, expect: type | None = None) -> nnx.Module:
    """Rebuilds the module saved in ``path`` and restores its state.

    Args:
      path: a folder written by ``save``.
      expect: optional base class the module must be an instance of.

    Raises:
      CheckpointError: missing or corrupt files (orbax checksums the array data, so a
        damaged byte is detected), metadata whose configuration does not build the
        architecture, stored arrays whose names or shapes do not fit it (listing the
        offending parameters), or parameters holding NaN or infinities (naming them).
    """
    path = Path(path).absolute()
    meta = read_meta(path)
    try:
        abstract = nnx.eval_shape(lambda: build(meta["architecture"], meta["config"], rngs=nnx.Rngs(0)))
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except (TypeError, ValueError) as error:  # the constructor refused the stored configuration
        raise CheckpointError(
            f"{path}: the stored configuration does not build a {meta['architecture']} "
            f"({type(error).__name__}: {error}); config = {meta['config']}."
        ) from None
    if expect is not None and not isinstance(abstract, expect):
        raise CheckpointError(
            f"{path}: holds a {meta['architecture']} ({type(abstract).__name__}); expected a {expect.__name__}."
        )
    graphdef, abstract_state = nnx.split(abstract)
    target = nnx.to_pure_dict(abstract_state)
    legacy = _check_shapes(path, target, meta["architecture"], abstract)
    try:
        with _checkpointer() as checkpointer:
            restored = checkpointer.restore(
                path, ocp.args.Composite(state=ocp.args.StandardRestore(target if legacy is None else legacy[0]))
            )
        if legacy is not None:
            restored = {"state": legacy[1](restored["state"])}
    except Exception as error:  # orbax/tensorstore raise many types for damaged files
        raise CheckpointError(
            f"{path}: could not read the stored arrays; the checkpoint is corrupt or incomplete "
            f"({type(error).__name__}: {_first_line(error)})."
        ) from None
    bad = [
        _key(p) for p, v in jax.tree_util.tree_leaves_with_path(restored["state"])
        if not np.isfinite(np.asarray(v)).all()
    ]
    if bad:
        raise CheckpointError(
            f"{path}: the stored arrays hold NaN or infinite values (a diverged run?) in "
            f"{len(bad)} parameter(s): {', '.join(bad[:10])}{', ...' if len(bad) > 10 else ''}."
        )
    nnx.replace_by_pure_dict(abstract_state, restored["state"])
    return nnx.merge(graphdef, abstract_state)


def _first_line(error: Exception, limit: int = 400) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text if len(text) <= limit else text[:limit] + "..."


def _check_shapes(path: Path, target: dict, architecture: str, abstract: nnx.Module) -> Any:
    """Compares the stored array tree with the architecture's before reading any data.

    Returns None when they agree, or ``(legacy_target, upgrade)`` when the module recognises
    the stored shapes as an older layout of itself
    (``abstract.legacy_layout(target, expected_shapes, stored_shapes)``):
    restore ``legacy_target``, then ``upgrade`` maps that pure dict to the current one.
    """
    try:
        with _checkpointer() as checkpointer:
            stored = checkpointer.metadata(path).item_metadata["state"]
    except Exception as error:
        raise CheckpointError(
            f"{path}: unreadable array metadata in {path / 'state'}; the checkpoint is corrupt or "
            f"incomplete ({type(error).__name__}: {_first_line(error)})."
        ) from None
    if stored is None:
        raise CheckpointError(
            f"{path}: the checkpoint has no stored state ({path / 'state'} is missing or incomplete)."
        )
    expected = {_key(p): tuple(v.shape) for p, v in jax.tree_util.tree_leaves_with_path(target)}
    actual = {_key(p): tuple(getattr(v, "shape", ())) for p, v in jax.tree_util.tree_leaves_with_path(stored)}
    problems = [f"missing: {k} (expected shape {expected[k]})" for k in sorted(expected.keys() - actual.keys())]
    problems += [f"unexpected: {k} (shape {actual[k]})" for k in sorted(actual.keys() - expected.keys())]
    problems += [
        f"shape mismatch: {k}: expected {expected[k]}, got {actual[k]}"
        for k in sorted(expected.keys() & actual.keys())
        if expected[k] != actual[k]
    ]
    if not problems:
        return None
    legacy_layout = getattr(abstract, "legacy_layout", None)
    legacy = legacy_layout(target, expected, actual) if legacy_layout is not None else None
    if legacy is not None:
        return legacy
    raise CheckpointError(
        f"{path}: the stored arrays do not fit architecture {architecture!r}:\n  " + "\n  ".join(problems)
    )


def _checkpointer() -> ocp.Checkpointer:
    handler = ocp.CompositeCheckpointHandler(
        state=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler()
    )
    return ocp.Checkpointer(handler)


def _key(path: tuple) -> str:
    return ".".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
