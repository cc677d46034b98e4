"""Latents of a frozen base model: encode a data set once, decode latents back to data.

    z = E(x)   (N, *data_shape) → (N, latent)      ``encode``
    x = D(z)   (N, latent) → (N, *data_shape)      ``decode``

Both run the model in eval mode under ``stop_gradient`` (the base model is frozen: nothing
downstream can train it), jit-compiled once per model and chunk size, in fixed-size chunks
so memory stays bounded whatever N is, each chunk split over all devices
(``fpn_jax.runtime.mesh``, ``fpn_jax.parallel``).

Inputs are checked first: examples of the model's ``data_shape``, floating, within its
``data_range`` (a NaN or a value out of range is reported with its first row); latents
finite and of the model's width; N = 0 gives an empty result. A non-finite result from finite inputs raises
``FloatingPointError`` naming the rows (it means broken weights or an overflow inside).

A data set too large for memory (CelebA: 200k images) is encoded once to disk with
``encode_to_shards`` (fixed-size shards ``z_00000.npy``, ... with their attribute rows and a
JSON manifest, resumable after a crash) and read back with ``read_shards``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from fpn_jax import validation as checks
from fpn_jax.autoencoders.base import Autoencoder
from fpn_jax.data.base import Split
from fpn_jax.nn.mode import is_training
from fpn_jax.runtime import mesh
from fpn_jax.runtime.chunks import map_in_chunks
from fpn_jax.typing import Array, Batch, Key, Latents


def _require_frozen(model: Autoencoder, where: str) -> None:
    if not isinstance(model, Autoencoder):
        raise TypeError(
            f"{where}: argument `model` must be a base model (fpn_jax.autoencoders.Autoencoder); "
            f"got {type(model).__name__}."
        )
    if is_training(model):
        raise RuntimeError(
            f"{where}: the base model is in training mode; freeze it first (fpn_jax.autoencoders.freeze)."
        )


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef: nnx.GraphDef, state: nnx.State, x: Array, key: Array | None) -> Array:
    return jax.lax.stop_gradient(nnx.merge(graphdef, state).encode(x, key=key))


@functools.partial(jax.jit, static_argnums=0)
def _encode_sampled(graphdef: nnx.GraphDef, state: nnx.State, x: Array, keys: Array) -> Array:
    """One posterior sample per example, example n drawn with ``keys[n]``."""
    model = nnx.merge(graphdef, state)
    return jax.lax.stop_gradient(jax.vmap(lambda xi, ki: model.encode(xi[None], key=ki)[0])(x, keys))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _decode(graphdef: nnx.GraphDef, state: nnx.State, z: Array, options: tuple) -> Array:
    return jax.lax.stop_gradient(nnx.merge(graphdef, state).decode(z, **dict(options)))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _decode_sampled(graphdef: nnx.GraphDef, state: nnx.State, z: Array, keys: Array, options: tuple) -> Array:
    """One draw of a stochastic decoder per latent, latent n drawn with ``keys[n]``."""
    model = nnx.merge(graphdef, state)
    return jax.lax.stop_gradient(
        jax.vmap(lambda zi, ki: model.decode(zi[None], key=ki, **dict(options))[0])(z, keys)
    )


_BROKEN = "Check the base model's parameters (e.g. with np.isfinite on nnx.state(model))."


@checks.overflow_checked(what="the latents", where="fpn_jax.latents.encode", hint=_BROKEN)
def encode(model: Autoencoder, x: Batch, *, key: Key | None = None, batch_size: int = 2048) -> np.ndarray:
    """Z = E(x) for a whole data set, (N, latent_features) float32 on the host.

    Args:
      model: a frozen base model.
      x: (N, *model.data_shape) floats within ``model.data_range``.
      key: sample z ~ q(z | x) where the model has a posterior (the VAE); default its mean.
      batch_size: examples per compiled call.

    Raises:
      ValueError: ``x`` of the wrong shape or dtype, or a row with values outside ``model.data_range`` or
        NaN (naming the first); a bad ``key`` or ``batch_size``.
      TypeError / RuntimeError: ``model`` is not a base model / not frozen.
      FloatingPointError: a latent came out non-finite (broken weights), naming the rows.
    """
    where = "fpn_jax.latents.encode"
    _require_frozen(model, where)
    batch_size = checks.positive_int(batch_size, name="batch_size", where=where)
    if key is not None:
        key = checks.check_key(key, where=where)
    x = model.check_data(x, name="x", where=where)
    graphdef, state = nnx.split(model)
    state = mesh.replicate(state)
    if key is None:
        return np.asarray(map_in_chunks(lambda c: _encode(graphdef, state, c, None), x, batch_size=batch_size))
    keys = jax.random.split(key, x.shape[0])  # one key per example: results do not depend on batch_size
    return np.asarray(map_in_chunks(
        lambda c, k: _encode_sampled(graphdef, state, c, k), x, keys, batch_size=batch_size
    ))


@checks.overflow_checked(what="the decoded data", where="fpn_jax.latents.decode", hint=_BROKEN)
def decode(
    model: Autoencoder, z: Latents, *, key: Key | None = None, batch_size: int = 2048, **options: Any
) -> np.ndarray:
    """X = D(z) for many latents, (N, *data_shape) float32 on the host.

    Args:
      model: a frozen base model.
      z: (N, model.latent_features) latents.
      key: for a stochastic decoder; latent n is decoded with the n-th of N keys split from
        it, so results do not depend on ``batch_size``.
      batch_size: latents per compiled call.
      **options: passed to ``model.decode`` (hashable: they are compiled in).

    Raises:
      ValueError: ``z`` of the wrong shape or dtype or with a non-finite row (naming the
        first); a bad ``key`` or ``batch_size``.
      TypeError / RuntimeError: ``model`` is not a base model / not frozen.
      FloatingPointError: a decoded example came out non-finite, naming the rows.
    """
    where = "fpn_jax.latents.decode"
    _require_frozen(model, where)
    batch_size = checks.positive_int(batch_size, name="batch_size", where=where)
    if key is not None:
        key = checks.check_key(key, where=where)
    z = checks.as_float_matrix(z, name="z", width=model.latent_features, where=where, width_name="latent_features")
    graphdef, state = nnx.split(model)
    state = mesh.replicate(state)
    frozen_options = tuple(sorted(options.items()))
    if key is None:
        return np.asarray(
            map_in_chunks(lambda c: _decode(graphdef, state, c, frozen_options), z, batch_size=batch_size)
        )
    keys = jax.random.split(key, z.shape[0])
    return np.asarray(map_in_chunks(
        lambda c, k: _decode_sampled(graphdef, state, c, k, frozen_options), z, keys, batch_size=batch_size
    ))


# --------------------------------------------------------------------------- latent shards on disk

SHARDS_MANIFEST = "manifest.json"
_SHARDS_FORMAT = "fpn_jax.latent_shards"
_SHARDS_VERSION = 1


def encode_to_shards(
    model: Autoencoder,
    batches_or_split: Any,
    folder: str | os.PathLike,
    *,
    key: Key | None = None,
    shard_size: int = 1024,
    batch_size: int = 256,
    progress: bool | str = True,
) -> Path:
    """Encodes a streamed data set once into latent shards on disk, resumably.

    Rows [k S, (k + 1) S) (S = ``shard_size``) go to shard k: ``z_{k:05d}.npy`` (rows, D)
    float32 latents and ``attributes_{k:05d}.npy`` (rows, C) float32 context rows, in the
    source's order, plus ``manifest.json`` (shard size, model class, configuration and a
    fingerprint of its parameters, the key, the row count, ``complete``). Each shard is
    encoded with one ``encode`` call, sampling with ``jax.random.fold_in(key, k)`` when a
    ``key`` is given (z ~ q(z | x), as FPN's ``run_latent_space_celeba.py``), so shard k's
    latents depend only on its rows, the model and the key: a resumed run gives exactly what
    one uninterrupted run gives. A shard's files are written to ``*.tmp`` and renamed
    (attributes first, latents last), so a crash never leaves a file that passes for
    finished; finished shards (both files readable, with the expected rows) are kept and
    skipped, and stale ``*.tmp`` files are removed.

    Host memory holds one shard of inputs (S rows; 1024 CelebA images at 256x256 are 0.8 GB)
    plus what the source reads ahead; the device encodes ``batch_size`` rows per call.

    Args:
      model: a frozen base model.
      batches_or_split: the data, one of

        * a streamed split: an object with ``__len__`` and ``batches(batch_size, *, start)``
          yielding ``(inputs, attributes, ...)`` tuples in order from row ``start`` (e.g.
          ``fpn_jax.data.CelebA(root).split("train")``); a resumed run reads only the
          unfinished shards' rows;
        * a ``fpn_jax.data.Split`` in memory (inputs and context);
        * any iterable of ``(inputs, attributes)`` (or longer) tuples of any sizes, re-cut
          into shards; it is read from the start again when resumed (finished shards are
          not re-encoded).
      folder: the shards' folder (created; it must be empty or hold an earlier run's shards).
      key: sample z ~ q(z | x) with it where the model has a posterior; None: the mean.
      shard_size: rows per shard S.
      batch_size: rows per compiled encode call, and per read of a streamed split.
      progress: show a tqdm bar with ETA over the rows (a string is used as its description).

    Returns:
      ``Path(folder)``; read it with ``read_shards``.

    Raises:
      TypeError / RuntimeError: ``model`` is not a base model / not frozen; ``batches_or_split``
        is none of the above.
      ValueError: bad arguments; a batch whose inputs and attributes differ in rows; a source
        giving more or fewer rows than its ``len``; ``folder`` holding shards of another run
        (another model, parameters, key, shard size or row count), naming what differs.
      FileExistsError: ``folder`` is not empty and holds no shard manifest.
      As ``encode``: inputs of the wrong shape or range, non-finite latents.
    """
    where = "fpn_jax.latents.encode_to_shards"
    _require_frozen(model, where)
    shard_size = checks.positive_int(shard_size, name="shard_size", where=where)
    batch_size = checks.positive_int(batch_size, name="batch_size", where=where)
    if key is not None:
        key = checks.check_key(key, where=where)
    folder = Path(folder)

    source, total = _shard_source(batches_or_split, where)
    config = {
        "format": _SHARDS_FORMAT,
        "version": _SHARDS_VERSION,
        "shard_size": shard_size,
        "latent_features": int(model.latent_features),
        "model": type(model).__name__,
        "model_config": _jsonable(model.config),
        "model_fingerprint": _fingerprint(model),
        "key": None if key is None else _key_data(key),
    }
    manifest = _start_manifest(folder, config, total, where)
    if manifest.get("complete") and total is not None and all(
        _finished(folder, k, _rows_of(k, shard_size, total)) for k in range(_num_shards(total, shard_size))
    ):
        return folder
    for stale in folder.glob("*.tmp"):
        stale.unlink()

    todo = None
    if total is not None:  # a streamed split or arrays: read only the unfinished shards
        every = range(_num_shards(total, shard_size))
        todo = [k for k in every if not _finished(folder, k, _rows_of(k, shard_size, total))]
    done = 0 if todo is None else total - sum(_rows_of(k, shard_size, total) for k in todo)
    desc = progress if isinstance(progress, str) else "encoding to latent shards"
    bar = tqdm(total=total, initial=done, desc=desc, unit="row", disable=not progress, dynamic_ncols=True)

    def encode_shard(k: int, x: np.ndarray, attributes: np.ndarray) -> None:
        shard_key = None if key is None else jax.random.fold_in(key, k)
        z = encode(model, x, key=shard_key, batch_size=batch_size)
        _save_atomic(folder / f"attributes_{k:05d}.npy", np.asarray(attributes, dtype=np.float32))
        _save_atomic(folder / f"z_{k:05d}.npy", np.asarray(z, dtype=np.float32))

    try:
        if todo is not None:
            for run in _runs(todo):
                shards = _cut(source(batch_size, run[0] * shard_size), run[0], shard_size, where)
                try:
                    for k in run:
                        got = next(shards, None)
                        expected = _rows_of(k, shard_size, total)
                        rows = 0 if got is None else got[1].shape[0]
                        if rows != expected:
                            raise ValueError(
                                f"{where}: the source gave {rows} rows for shard {k} (rows {k * shard_size}.."
                                f"{k * shard_size + expected - 1}); its len() of {total} says {expected}."
                            )
                        if k == _num_shards(total, shard_size) - 1 and next(shards, None) is not None:
                            raise ValueError(f"{where}: the source gave more rows than its len() of {total}.")
                        encode_shard(k, got[1], got[2])
                        bar.update(expected)
                finally:
                    shards.close()
        else:  # an iterable: read it all, encode what is not finished
            rows_seen = 0
            for k, x, attributes in _cut(iter(source), 0, shard_size, where):
                if not _finished(folder, k, x.shape[0]):
                    encode_shard(k, x, attributes)
                rows_seen += x.shape[0]
                bar.update(x.shape[0])
            if manifest.get("num_rows") is not None and manifest["num_rows"] != rows_seen:
                raise ValueError(
                    f"{where}: {folder} holds shards of {manifest['num_rows']} rows; the source gave {rows_seen}. "
                    "Use another folder (or delete this one) for different data."
                )
            total = rows_seen
        extra = sorted(p.name for p in folder.glob("z_*.npy") if _shard_index(p) >= _num_shards(total, shard_size))
        if extra:
            raise ValueError(
                f"{where}: {folder} holds shard(s) beyond the {_num_shards(total, shard_size)} of these {total} rows "
                f"({', '.join(extra[:3])}); it was written for other data. Use another folder or delete it."
            )
    finally:
        bar.close()
    _write_json_atomic(folder / SHARDS_MANIFEST, {**config, "num_rows": total,
                                                  "num_shards": _num_shards(total, shard_size), "complete": True})
    return folder


def read_shards(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The latents and attribute rows that ``encode_to_shards`` wrote, in the source's order.

    Args:
      folder: a folder of finished shards (its manifest says ``complete``).

    Returns:
      ``(z, attributes)``: (N, D) float32 and (N, C) float32.

    Raises:
      FileNotFoundError: no manifest or a missing shard file.
      ValueError: an unfinished run (the message says how many shards are done) or shards
        whose shapes disagree with the manifest.
    """
    where = "fpn_jax.latents.read_shards"
    folder = Path(folder)
    manifest = _read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"{where}: {folder} holds no {SHARDS_MANIFEST} of encode_to_shards.")
    size, total = manifest["shard_size"], manifest.get("num_rows")
    if not manifest.get("complete") or total is None:
        done = len(list(folder.glob("z_*.npy")))
        of = "" if total is None else f" of {_num_shards(total, size)}"
        raise ValueError(
            f"{where}: {folder} is unfinished ({done}{of} shards written); run encode_to_shards again to finish it."
        )
    zs, attributes = [], []
    for k in range(manifest["num_shards"]):
        rows = _rows_of(k, size, total)
        for name, parts in (("attributes", attributes), ("z", zs)):
            path = folder / f"{name}_{k:05d}.npy"
            if not path.is_file():
                raise FileNotFoundError(f"{where}: shard file {path} is missing; run encode_to_shards again.")
            array = np.load(path, allow_pickle=False)
            if array.ndim != 2 or array.shape[0] != rows:
                raise ValueError(f"{where}: {path} must hold {rows} rows (2-D); got shape {array.shape}.")
            parts.append(array)
    z = np.concatenate(zs) if zs else np.zeros((0, manifest["latent_features"]), np.float32)
    a = np.concatenate(attributes) if attributes else np.zeros((0, 0), np.float32)
    if z.shape[1] != manifest["latent_features"]:
        raise ValueError(
            f"{where}: the latents have {z.shape[1]} columns; the manifest says {manifest['latent_features']}."
        )
    return z, a


def _shard_source(data: Any, where: str) -> tuple[Any, int | None]:
    """(a reader, N): ``reader(batch_size, start)`` for splits and arrays; the iterable and None otherwise."""
    if isinstance(data, Split):
        inputs, context = data.inputs, data.context

        def arrays(batch_size: int, start: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for a in range(start, len(data), batch_size):
                yield inputs[a : a + batch_size], context[a : a + batch_size]

        return arrays, len(data)
    if callable(getattr(data, "batches", None)) and hasattr(data, "__len__"):
        return (lambda batch_size, start: data.batches(batch_size, start=start)), len(data)
    if hasattr(data, "__iter__") and not isinstance(data, (str, bytes, np.ndarray)):
        return data, None
    raise TypeError(
        f"{where}: argument `batches_or_split` must be a streamed split (with len() and batches(batch_size, start=)), "
        f"a fpn_jax.data.Split or an iterable of (inputs, attributes) batches; got {type(data).__name__}."
    )


def _cut(
    batches: Iterator[Any], first: int, shard_size: int, where: str
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Re-cuts ``(inputs, attributes, ...)`` batches into ``(k, inputs, attributes)`` shards from shard ``first``."""
    xs: list[np.ndarray] = []
    attrs: list[np.ndarray] = []
    held, k = 0, first
    try:
        for batch in batches:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise TypeError(f"{where}: each batch must be a tuple (inputs, attributes, ...); got "
                                f"{type(batch).__name__}.")
            x, a = np.asarray(batch[0]), np.asarray(batch[1])
            if a.ndim != 2 or x.ndim < 1 or x.shape[0] != a.shape[0]:
                raise ValueError(f"{where}: a batch's inputs and (N, C) attributes must have the same rows; got "
                                 f"shapes {x.shape} and {a.shape}.")
            while x.shape[0]:
                take = min(shard_size - held, x.shape[0])
                xs.append(x[:take])
                attrs.append(a[:take])
                x, a, held = x[take:], a[take:], held + take
                if held == shard_size:
                    yield k, np.concatenate(xs), np.concatenate(attrs)
                    xs, attrs, held, k = [], [], 0, k + 1
        if held:
            yield k, np.concatenate(xs), np.concatenate(attrs)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _runs(indices: list[int]) -> list[list[int]]:
    """Consecutive runs of sorted integers: [0, 1, 3] -> [[0, 1], [3]]."""
    runs: list[list[int]] = []
    for k in indices:
        if runs and runs[-1][-1] == k - 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def _num_shards(total: int, shard_size: int) -> int:
    return -(-total // shard_size)


def _rows_of(k: int, shard_size: int, total: int) -> int:
    return min(shard_size, total - k * shard_size)


def _shard_index(path: Path) -> int:
    try:
        return int(path.stem.split("_")[-1])
    except ValueError:
        return -1


def _finished(folder: Path, k: int, rows: int) -> bool:
    """Whether shard k's two files exist, are readable .npy headers and hold ``rows`` rows."""
    for name in ("attributes", "z"):
        try:
            array = np.load(folder / f"{name}_{k:05d}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return False
        if array.ndim != 2 or array.shape[0] != rows:
            return False
    return True


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` to ``<path>.tmp``, flushed to disk, then renamed to ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _write_json_atomic(path: Path, content: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / SHARDS_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == _SHARDS_FORMAT else None


def _start_manifest(folder: Path, config: dict[str, Any], total: int | None, where: str) -> dict[str, Any]:
    """The folder's manifest after checking that it belongs to this run (a fresh one for a new folder)."""
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{where}: `folder` {folder} exists and is not a folder.")
    folder.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(folder)
    if manifest is None:
        if any(p.name != SHARDS_MANIFEST for p in folder.iterdir()):
            raise FileExistsError(
                f"{where}: `folder` {folder} is not empty and holds no {SHARDS_MANIFEST} of encode_to_shards; "
                "choose a new or empty folder."
            )
        manifest = {**config, "num_rows": total, "complete": False}
        _write_json_atomic(folder / SHARDS_MANIFEST, manifest)
        return manifest
    differ = [name for name in config if manifest.get(name) != config[name]]
    if total is not None and manifest.get("num_rows") is not None and manifest["num_rows"] != total:
        differ.append("num_rows")
    if differ:
        found = {name: manifest.get(name) for name in differ}
        wanted = {name: config.get(name, total) for name in differ}
        raise ValueError(
            f"{where}: {folder} holds shards of another run: {found}; this run has {wanted}. Use another folder "
            "(or delete this one) to encode with other settings."
        )
    if manifest.get("num_rows") is None and total is not None:
        manifest = {**manifest, "num_rows": total}
        _write_json_atomic(folder / SHARDS_MANIFEST, manifest)
    return manifest


def _key_data(key: Key) -> list[int]:
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return [int(v) for v in np.asarray(data).ravel()]


def _fingerprint(model: Autoencoder) -> str:
    """A hash of the model's parameter paths, shapes, dtypes and first values (cheap at any size)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]:
        if not hasattr(leaf, "dtype"):
            continue
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}{tuple(leaf.shape)}{leaf.dtype}".encode())
        digest.update(np.asarray(jnp.ravel(leaf)[:256]).tobytes())
    return digest.hexdigest()[:32]


def _jsonable(value: Any) -> Any:
    """``value`` made JSON-able (tuples as lists, unknown objects as their repr)."""
    return json.loads(json.dumps(value, default=repr))
