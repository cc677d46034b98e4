"""Morpho-MNIST morphometrics of digit images, binary attributes at training-set medians.

The measurements follow Morpho-MNIST (Castro, Tan, Kainz, Konukoglu, Glocker, "Morpho-MNIST:
Quantitative Assessment and Diagnostics for Representation Learning", JMLR 20(178), 2019;
code dccastro/Morpho-MNIST, ``morphomnist/morpho.py`` and ``measure.py``: ``measure_image``
with its defaults ``threshold=0.5, scale=4, bound_frac=0.02``). For one image x (H, W):

1. upsample by s = ``scale`` (``skimage.transform.pyramid_expand``, cubic), x_s (sH, sW),
   clipped to [0, 1]; binarise at ``min + threshold·(max − min)``: B (sH, sW);
2. medial axis of B with its distance map (``skimage.morphology.medial_axis``): skeleton
   S ⊂ B and d(p), the Euclidean distance of pixel p to the background;
3. the measurements, in pixels of the original image:

   * ``area``      = |B| / s²;
   * ``length``    = Σ_{p ∈ S} Σ_q w(p, q) / s, q over the skeleton neighbours right of p
     (w = 1) and below-left, below, below-right of it (w = √2, 1, √2): every skeleton link
     counted once, a diagonal one as √2 (Morpho-MNIST's ``_SKEL_LEN_MASK``);
   * ``thickness`` = 2 · mean_{p ∈ S} d(p) / s: twice the mean distance from the skeleton to
     the digit's edge (Morpho-MNIST's ``mean_thickness``; close to area / length, the
     stroke's area over its length, for a stroke of even width);
   * ``slant``     = arctan(−μ₁₁ / μ₀₂) in radians, μ the central moments of the grey-level
     upsampled image x_s (x the column, y the row, pointing down): the horizontal shear that
     makes the digit upright; > 0 leans right (top to the right), < 0 leans left;
   * ``width``, ``height``: of the bounding parallelogram of the de-slanted digit: with
     c = −tan(slant) = μ₁₁ / μ₀₂ and ȳ the centroid's row, the columns where the cumulative
     mass of x_s along the sheared coordinate ``u = x + ½ − c (y − ȳ)`` reaches f / 2 and
     1 − f / 2 (f = ``bound_frac``) give left and right, the rows where the cumulative row
     mass does so give top and bottom (linear interpolation, Morpho-MNIST's
     ``bounding_parallelogram``); width = (right − left) / s, height = (bottom − top) / s.

Differences from the original, on purpose: images are floats in [0, 1] (the original reads
uint8 and casts the upsampled image back to uint8); many images are measured at once (the
upsampled binary images are tiled into one mosaic, each with a background border, and
``medial_axis`` runs once per mosaic: its per-call set-up dominates at this size; the
distance map is unchanged and the skeleton differs from one image at a time only where
``medial_axis`` breaks ties at random, seeded here: thickness within ~0.5 %); a blank image
(max − min below 1e-6) measures NaN throughout.

Binary attributes (``ATTRIBUTES``): an attribute is 1 where its measurement lies above the
training split's median (``medians``, ``binarize``), e.g. ``thick`` = thickness > median.
``morpho_dataset`` turns MNIST into a multi-hot data set: context = [one-hot digit (10),
binary attributes (A)], ``context_names`` = ("digit 0", ..., "digit 9", *attributes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fpn_jax.data.base import Dataset, Split

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_SIDES",
    "DEFAULT_ATTRIBUTES",
    "MEASUREMENTS",
    "binarize",
    "measure",
    "measure_dataset",
    "medians",
    "morpho_dataset",
]

MEASUREMENTS = ("area", "length", "thickness", "slant", "width", "height")
"""Morpho-MNIST's measurements, in its column order (pixels, pixels², radians for slant)."""

ATTRIBUTES: dict[str, str] = {
    "thick": "thickness", "slanted": "slant", "wide": "width", "tall": "height", "large": "area", "long": "length",
}
"""Binary attribute → the measurement it thresholds (1 above the training median)."""

ATTRIBUTE_SIDES: dict[str, tuple[str, str]] = {
    "thick": ("thin", "thick"), "slanted": ("left", "right"), "wide": ("narrow", "wide"),
    "tall": ("short", "tall"), "large": ("small", "large"), "long": ("short stroke", "long stroke"),
}
"""Names of the two sides (value 0, value 1) of each attribute: ``slanted`` 1 leans further right."""

DEFAULT_ATTRIBUTES = ("thick", "slanted", "wide")
"""Thick / thin, slanted right / left, wide / narrow."""

_SKELETON_LINKS = ((0, 1, 1.0), (1, -1, np.sqrt(2.0)), (1, 0, 1.0), (1, 1, np.sqrt(2.0)))
"""(row offset, column offset, weight) of Morpho-MNIST's ``_SKEL_LEN_MASK``."""


def _check_images(images: Any, *, where: str) -> np.ndarray:
    """(N, H, W) or (N, H, W, 1) numbers → (N, H, W) float64 clipped to [0, 1]."""
    x = np.asarray(images)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.dtype == bool:
        raise ValueError(f"{where}: argument `images` must hold numbers in [0, 1]; got booleans: pass "
                         "images.astype(float).")
    if x.ndim != 3 or not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{where}: argument `images` must be real (N, H, W) or (N, H, W, 1) grey images in [0, 1]; "
                         f"got shape {x.shape} and dtype {x.dtype}.")
    x = x.astype(np.float64)
    if x.size and not np.isfinite(x).all():
        row = int(np.argmax(~np.isfinite(x).reshape(len(x), -1).all(1)))
        raise ValueError(f"{where}: argument `images` must be finite; image {row} of {len(x)} is not.")
    return np.clip(x, 0.0, 1.0)


def measure(
    images: Any,
    *,
    threshold: float = 0.5,
    scale: int = 4,
    bound_frac: float = 0.02,
    batch_size: int = 256,
    progress: bool | str = True,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Morpho-MNIST's measurements of every image (see the module docstring for the formulas).

    Args:
      images: (N, H, W) or (N, H, W, 1) grey images in [0, 1] (values outside are clipped),
        the digit bright on a dark background.
      threshold: binarisation level, a fraction of each image's range, in (0, 1).
      scale: s, the upsampling factor (an integer >= 1).
      bound_frac: f, the mass left outside the bounding parallelogram, in [0, 1).
      batch_size: images per ``medial_axis`` mosaic.
      progress: show a progress bar (a string: its description).
      seed: seed of ``medial_axis``' tie-breaking.

    Returns:
      ``{name: (N,) float64}`` for ``MEASUREMENTS``: area (px²), length (px), thickness (px),
      slant (rad), width (px), height (px); NaN throughout for a blank image.

    Raises:
      ValueError: images of the wrong shape or dtype, non-finite values, or bad options.
    """
    where = "morpho.measure"
    x = _check_images(images, where=where)
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"{where}: `scale` must be an integer >= 1; got {scale!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{where}: `batch_size` must be an integer >= 1; got {batch_size!r}.")
    for name, value, low, high in (("threshold", threshold, 0.0, 1.0), ("bound_frac", bound_frac, 0.0, 1.0)):
        ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
        if not ok or not (low < value < high or (name == "bound_frac" and value == 0.0)):
            raise ValueError(f"{where}: `{name}` must be a number in ({low}, {high}); got {value!r}.")
    out = {name: np.full(len(x), np.nan) for name in MEASUREMENTS}
    if len(x) == 0:
        return out
    starts = range(0, len(x), int(batch_size))
    if progress:
        starts = tqdm(starts, desc=progress if isinstance(progress, str) else "measuring digits", unit="batch",
                      total=-(-len(x) // int(batch_size)), leave=False)
    for start in starts:
        rows = slice(start, start + int(batch_size))
        for name, values in _measure_batch(x[rows], float(threshold), int(scale), float(bound_frac),
                                           seed + start).items():
            out[name][rows] = values
    return out


def _upsample(x: np.ndarray, scale: int) -> np.ndarray:
    """(B, H, W) → (B, sH, sW): ``pyramid_expand`` (cubic) image by image, clipped to [0, 1]."""
    from skimage.transform import pyramid_expand

    if scale == 1:
        return x.copy()
    return np.clip(np.stack([pyramid_expand(image, upscale=scale, order=3) for image in x]), 0.0, 1.0)


def _medial_axes(binary: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Skeletons and distance maps (B, H, W) of binary images, one ``medial_axis`` call on a mosaic.

    Every image gets a one-pixel background border, so the distance to the background and
    the skeleton of one tile never see another tile.
    """
    from skimage.morphology import medial_axis

    b, h, w = binary.shape
    padded = np.pad(binary, ((0, 0), (1, 1), (1, 1)))
    columns = int(np.ceil(np.sqrt(b)))
    rows = -(-b // columns)
    tiles = np.zeros((rows * columns, h + 2, w + 2), bool)
    tiles[:b] = padded
    mosaic = tiles.reshape(rows, columns, h + 2, w + 2).transpose(0, 2, 1, 3).reshape(rows * (h + 2), -1)
    skeleton, distance = medial_axis(mosaic, return_distance=True, rng=seed)

    def untile(a: np.ndarray) -> np.ndarray:
        return a.reshape(rows, h + 2, columns, w + 2).transpose(0, 2, 1, 3).reshape(-1, h + 2, w + 2)[:b, 1:-1, 1:-1]

    return untile(skeleton), untile(distance)


def _measure_batch(x: np.ndarray, threshold: float, scale: int, bound_frac: float, seed: int) -> dict[str, np.ndarray]:
    """The measurements of a batch x (B, H, W) in [0, 1]."""
    hires = _upsample(x, scale)  # (B, sH, sW)
    low, high = hires.min(axis=(1, 2)), hires.max(axis=(1, 2))
    blank = high - low < 1e-6
    binary = hires >= (low + threshold * (high - low))[:, None, None]
    binary[blank] = False
    skeleton, distance = _medial_axes(binary, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        area = binary.sum(axis=(1, 2)) / scale**2
        links = np.zeros(hires.shape)
        s = skeleton.astype(np.float64)
        for dy, dx, weight in _SKELETON_LINKS:  # links[p] = Σ_q w(p, q) S[q] over the four neighbours
            shifted = np.zeros_like(s)
            src_x = slice(max(dx, 0), s.shape[2] + min(dx, 0))
            dst_x = slice(max(-dx, 0), s.shape[2] + min(-dx, 0))
            shifted[:, : s.shape[1] - dy, dst_x] = s[:, dy:, src_x]
            links += weight * shifted
        length = (links * s).sum(axis=(1, 2)) / scale
        thickness = 2.0 * (distance * s).sum(axis=(1, 2)) / s.sum(axis=(1, 2)) / scale
        slant, width, height = _moments_and_bounds(hires, bound_frac, scale)
    result = {"area": area, "length": length, "thickness": thickness, "slant": slant, "width": width,
              "height": height}
    for values in result.values():
        values[blank] = np.nan
    return result


def _moments_and_bounds(img: np.ndarray, bound_frac: float, scale: int) -> tuple[np.ndarray, ...]:
    """Slant, width and height (B,) from the grey-level moments and the bounding parallelogram."""
    b, h, w = img.shape
    x = np.arange(w, dtype=np.float64)[None, None, :]
    y = np.arange(h, dtype=np.float64)[None, :, None]
    m00 = img.sum(axis=(1, 2))
    m10 = (x * img).sum(axis=(1, 2)) / m00
    m01 = (y * img).sum(axis=(1, 2)) / m00
    u11 = (x * y * img).sum(axis=(1, 2)) / m00 - m10 * m01
    u02 = (y**2 * img).sum(axis=(1, 2)) / m00 - m01**2
    shear = u11 / u02  # Morpho-MNIST's horizontal_shear
    slant = np.arctan(-shear)
    # horizontal CDF at integer t = 0..w-1: mass with x + ½ < t + c (y − ȳ), i.e. t > u = x + ½ − c (y − ȳ)
    usable = np.isfinite(shear) & (m00 > 0)  # the others (blank, or a single row) measure NaN
    safe_shear, safe_row = np.where(usable, shear, 0.0), np.where(usable, m01, 0.0)
    mass = np.where(usable, m00, 1.0)
    u = x + 0.5 - safe_shear[:, None, None] * (y - safe_row[:, None, None])
    first = np.clip(np.floor(u) + 1, 0, w).astype(np.int64)  # the first t counting the pixel (w: none)
    flat = (first + (w + 1) * np.arange(b)[:, None, None]).ravel()
    counts = np.bincount(flat, weights=img.ravel(), minlength=b * (w + 1)).reshape(b, w + 1)[:, :w]
    horizontal = np.cumsum(counts, axis=1) / mass[:, None]
    rows = img.sum(axis=2)
    vertical = np.concatenate([np.zeros((b, 1)), np.cumsum(rows, axis=1)[:, :-1]], axis=1) / mass[:, None]
    half = bound_frac / 2.0
    width, height = np.full(b, np.nan), np.full(b, np.nan)
    locations_x, locations_y = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    for i in np.flatnonzero(usable):
        left, right = np.interp([half, 1.0 - half], horizontal[i], locations_x)
        top, bottom = np.interp([half, 1.0 - half], vertical[i], locations_y)
        width[i], height[i] = (right - left) / scale, (bottom - top) / scale
    return slant, width, height


# -- binary attributes ----------------------------------------------------------------------
def _check_attributes(attributes: Sequence[str], *, where: str) -> tuple[str, ...]:
    if isinstance(attributes, str) or not isinstance(attributes, Sequence) or not attributes:
        raise ValueError(f"{where}: argument `attributes` must be a non-empty sequence of names from "
                         f"{tuple(ATTRIBUTES)}; got {attributes!r}.")
    unknown = [a for a in attributes if a not in ATTRIBUTES]
    if unknown or len(set(attributes)) != len(attributes):
        raise ValueError(f"{where}: argument `attributes` must name distinct attributes from {tuple(ATTRIBUTES)}; "
                         f"got {tuple(attributes)!r}" + (f" (unknown: {unknown})." if unknown else " (repeated)."))
    return tuple(attributes)


def _column(measurements: Mapping[str, np.ndarray], attribute: str, where: str) -> np.ndarray:
    name = ATTRIBUTES[attribute]
    if name not in measurements:
        raise ValueError(f"{where}: argument `measurements` has no {name!r} (needed by {attribute!r}); it has "
                         f"{sorted(measurements)}.")
    return np.asarray(measurements[name], np.float64)


def medians(measurements: Mapping[str, np.ndarray], attributes: Sequence[str] = DEFAULT_ATTRIBUTES) -> dict[str, float]:
    """Each attribute's threshold: the median of its measurement (NaN rows ignored).

    Args:
      measurements: ``measure``'s output on the training images.
      attributes: names from ``ATTRIBUTES``.

    Returns:
      ``{attribute: median}``, e.g. ``{"thick": 2.6, ...}`` (pixels; radians for ``slanted``).

    Raises:
      ValueError: an unknown attribute, a missing measurement, or one with no finite value.
    """
    where = "morpho.medians"
    attributes = _check_attributes(attributes, where=where)
    out = {}
    for a in attributes:
        column = _column(measurements, a, where)
        if not np.isfinite(column).any():
            raise ValueError(f"{where}: measurement {ATTRIBUTES[a]!r} has no finite value to take the median of.")
        out[a] = float(np.nanmedian(column))
    return out


def binarize(
    measurements: Mapping[str, np.ndarray], thresholds: Mapping[str, float], attributes: Sequence[str] | None = None
) -> np.ndarray:
    """Binary attributes ``y_a = [m_a > t_a]`` (N, A) float32; a NaN measurement gives 0.

    Args:
      measurements: ``measure``'s output, (N,) per measurement.
      thresholds: ``{attribute: t}`` (``medians`` of the training split).
      attributes: the columns, in order (default: the keys of ``thresholds``).

    Raises:
      ValueError: an unknown attribute, or one without a threshold or measurement.
    """
    where = "morpho.binarize"
    attributes = _check_attributes(tuple(thresholds) if attributes is None else attributes, where=where)
    missing = [a for a in attributes if a not in thresholds]
    if missing:
        raise ValueError(f"{where}: argument `thresholds` has no threshold for {missing}.")
    columns = [_column(measurements, a, where) > float(thresholds[a]) for a in attributes]
    return np.stack(columns, axis=1).astype(np.float32)


# -- the data set -----------------------------------------------------------------------------
def measure_dataset(
    dataset: Dataset,
    *,
    folder: str | os.PathLike | None = None,
    progress: bool = True,
    **options: Any,
) -> dict[str, dict[str, np.ndarray]]:
    """``measure`` on every split's inputs, kept in ``folder`` (one ``<split>.npz`` each) when given.

    A kept split is reused only if it was measured from the same images (a SHA-1 of their
    bytes) with the same options; otherwise it is measured again and overwritten (written to
    a temporary name, then renamed).

    Args:
      dataset: MNIST-like images (N, H, W, 1) in [0, 1] in every split.
      folder: where the measurements are kept (None: nothing kept).
      progress: show progress bars.
      **options: passed to ``measure`` (threshold, scale, bound_frac, batch_size, seed).

    Returns:
      ``{split: {measurement: (N,)}}`` for train, validation and test.

    Raises:
      TypeError: ``dataset`` is not a ``Dataset``; ValueError: as ``measure``.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"morpho.measure_dataset: argument `dataset` must be a fpn_jax.data.Dataset; "
                        f"got {type(dataset).__name__}.")
    out = {}
    for split in ("train", "validation", "test"):
        images = np.ascontiguousarray(getattr(dataset, split).inputs)
        fingerprint = {"sha1": hashlib.sha1(images.tobytes()).hexdigest(), "shape": list(images.shape),
                       "options": {k: options[k] for k in sorted(options)}}
        path = None if folder is None else Path(folder) / f"{split}.npz"
        if path is not None and path.exists():
            with np.load(path) as kept:
                if json.loads(str(kept["fingerprint"])) == fingerprint:
                    out[split] = {name: kept[name] for name in MEASUREMENTS}
                    continue
        out[split] = measure(images, progress=f"measuring {split}" if progress else False, **options)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{split}.tmp.npz")
            np.savez(temporary, fingerprint=json.dumps(fingerprint), **out[split])
            temporary.replace(path)
    return out


def morpho_dataset(
    dataset: Dataset,
    measurements: Mapping[str, Mapping[str, np.ndarray]],
    *,
    attributes: Sequence[str] = DEFAULT_ATTRIBUTES,
    thresholds: Mapping[str, float] | None = None,
) -> tuple[Dataset, dict[str, float]]:
    """MNIST with multi-hot contexts: ``y = [one_hot(digit, 10), binarize(measurements)]``.

    Args:
      dataset: labelled MNIST (``load_mnist``, or a subset of it).
      measurements: ``measure_dataset(dataset)``, row-aligned with every split.
      attributes: the binary attributes, in context order (names from ``ATTRIBUTES``).
      thresholds: ``{attribute: t}``; default the training split's ``medians``.

    Returns:
      ``(data, thresholds)``: the data set with (N, K + A) float32 contexts, labels kept,
      ``context_names = ("digit 0", ..., "digit K-1", *attributes)``; and the thresholds used.

    Raises:
      TypeError / ValueError: a data set without classes, or measurements of other lengths.
    """
    where = "morpho_dataset"
    if not isinstance(dataset, Dataset) or dataset.num_classes is None:
        raise TypeError(f"{where}: argument `dataset` must be a labelled fpn_jax.data.Dataset; got "
                        f"{type(dataset).__name__}" + ("" if not isinstance(dataset, Dataset) else " without classes")
                        + ".")
    attributes = _check_attributes(attributes, where=where)
    if thresholds is None:
        thresholds = medians(measurements["train"], attributes)
    k = int(dataset.num_classes)
    splits = {}
    for split in ("train", "validation", "test"):
        data = getattr(dataset, split)
        if split not in measurements:
            raise ValueError(f"{where}: argument `measurements` has no {split!r} split.")
        rows = {len(np.asarray(v)) for v in measurements[split].values()}
        if rows != {len(data)}:
            raise ValueError(f"{where}: argument `measurements[{split!r}]` must have one row per {split} image "
                             f"({len(data)}); got {sorted(rows)}.")
        if data.labels is None:
            raise ValueError(f"{where}: argument `dataset` must have labels in every split; {split} has none.")
        digit = np.eye(k, dtype=np.float32)[data.labels]
        context = np.concatenate([digit, binarize(measurements[split], thresholds, attributes)], axis=1)
        splits[split] = Split(inputs=data.inputs, context=context, labels=data.labels)
    names = tuple(f"digit {i}" for i in range(k)) + attributes
    return dataclasses.replace(dataset, **splits, context_names=names), {a: float(thresholds[a]) for a in attributes}
