"""An offline stand-in for ShapeNetCore.v2.PC15k: surface point clouds of parametric shapes.

``write_synthetic_shapenet`` writes the PC15k layout ``<root>/<synset>/{train,val,test}/
<model_id>.npy`` (each (P, 3) float32, P = 15000 by default) for eight classes of shapes,
so ``load_shapenet(root, categories=SYNTHETIC_CATEGORIES)`` reads it like the real data.
The pseudo-synsets are 8-digit ids starting with 9 (real WordNet ids start with 0).

Every cloud is P i.i.d. points drawn uniformly by area from the shape's surface, in random
row order (so any prefix is itself a uniform sample, as PointFlow's first-2048 evaluation
clouds assume). Shapes are built in a canonical frame (main axis z), given a random size
s ~ U[0.3, 0.5] (the radius of the origin-centred ball holding the shape, so every cloud lies
within |p| <= 0.5, about PC15k's scale), a random aspect, and then rotated:
``p_world = R p_local`` with R = R_y(psi) Q for ``rotation="yaw"`` (Q turns the canonical z
up to PC15k's gravity axis y, psi ~ U[0, 2 pi)), a uniform random rotation for ``"full"``
and Q alone for ``"none"``.

Uniform sampling by area, per primitive (vectorised NumPy):

* sphere: x / |x| r with x ~ N(0, I);
* ellipsoid (a, b, c): a unit-sphere point u mapped to (a u_1, b u_2, c u_3) is kept with
  probability g(u) / max g, g(u) = sqrt((b c u_1)^2 + (a c u_2)^2 + (a b u_3)^2), the map's
  area element;
* box: a face chosen with probability proportional to its area, then a uniform point on it;
* cylinder, cone, capsule: lateral surface and caps chosen by area; on the cone's lateral
  surface the distance from the apex is l sqrt(U) (slant l; the area within t grows as t^2);
  a capsule's two hemispheres are one sphere split at its equator;
* torus (R, r): tube angle theta kept with probability (R + r cos theta) / (R + r), the
  area element, and the angle around the axis uniform;
* airplane-like: an ellipsoid fuselage with box wings, tailplane and fin, components chosen
  by area (the fuselage's by Thomsen's formula, within 1.1 %) and points inside another
  component rejected, so the sample is uniform on the union's outer surface.

Class counts are imbalanced like ShapeNet's (default: geometric from 640 to 40, 1874 shapes),
split per class into train / val / test fractions (default 0.7 / 0.1 / 0.2, PC15k's).
Everything is deterministic from ``seed``: shape i of a class draws from
``np.random.default_rng([seed, class_index, i])``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_DEFAULT_COUNTS",
    "sample_airplane",
    "sample_box",
    "sample_capsule",
    "sample_cone",
    "sample_cylinder",
    "sample_ellipsoid",
    "sample_sphere",
    "sample_torus",
    "synthetic_shape",
    "write_synthetic_shapenet",
]

# (pseudo-synset, name) pairs, in label order; the default counts fall along this order.
SYNTHETIC_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("90000001", "airplane"),
    ("90000002", "box"),
    ("90000003", "cylinder"),
    ("90000004", "ellipsoid"),
    ("90000005", "capsule"),
    ("90000006", "cone"),
    ("90000007", "sphere"),
    ("90000008", "torus"),
)
# Long-tailed like ShapeNet's (table 8436 ... birdhouse 73): geometric from 640 to 40.
SYNTHETIC_DEFAULT_COUNTS: dict[str, int] = {
    name: int(round(640 * (40 / 640) ** (i / (len(SYNTHETIC_CATEGORIES) - 1))))
    for i, (_, name) in enumerate(SYNTHETIC_CATEGORIES)
}
MANIFEST = "synthetic_shapenet.json"
_FORMAT = "fpn-jax synthetic ShapeNet stand-in"
_VERSION = 1
_SPLIT_FOLDERS = ("train", "val", "test")
_WHERE = "write_synthetic_shapenet"


# ----------------------------------------------------------------------------- primitives
# Each sampler draws n points uniformly by area in the canonical frame (main axis z),
# returns (n, 3) float64 in random row order.


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) points uniform on the unit sphere (normalised standard Gaussians)."""
    x = rng.standard_normal((n, 3))
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-300)


def _rejection(
    rng: np.random.Generator, n: int, propose: Callable[[int], tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Draws n samples from ``propose(m) -> (candidates (m, ...), acceptance probabilities (m,))``."""
    kept: list[np.ndarray] = []
    have = 0
    while have < n:
        m = max(64, int(1.3 * (n - have)) + 16)
        candidates, prob = propose(m)
        accepted = candidates[rng.random(m) < prob]
        kept.append(accepted)
        have += len(accepted)
    return np.concatenate(kept)[:n]


def sample_sphere(rng: np.random.Generator, n: int, radius: float) -> np.ndarray:
    """Draws n points uniform on the sphere |p| = radius: radius x / |x|, x ~ N(0, I_3).

    Returns:
      (n, 3) float64.
    """
    return radius * _unit_vectors(rng, n)


def sample_ellipsoid(rng: np.random.Generator, n: int, axes: Sequence[float]) -> np.ndarray:
    """Draws n points uniform by area on the ellipsoid (x/a)^2 + (y/b)^2 + (z/c)^2 = 1.

    The map u -> (a u_1, b u_2, c u_3) of the unit sphere scales area by
    g(u) = sqrt((b c u_1)^2 + (a c u_2)^2 + (a b u_3)^2) <= max(bc, ac, ab), so uniform u
    kept with probability g(u) / max g are uniform by area on the ellipsoid.

    Args:
      rng: the random generator.
      n: number of points.
      axes: the semi-axes (a, b, c).

    Returns:
      (n, 3) float64.
    """
    a, b, c = (float(v) for v in axes)
    weights = np.array([b * c, a * c, a * b])

    def propose(m: int) -> tuple[np.ndarray, np.ndarray]:
        u = _unit_vectors(rng, m)
        return u, np.linalg.norm(u * weights, axis=1) / weights.max()

    return _rejection(rng, n, propose) * np.array([a, b, c])


def ellipsoid_area(axes: Sequence[float]) -> float:
    """Thomsen's approximation 4 pi ((a^p b^p + a^p c^p + b^p c^p) / 3)^(1/p), p = 1.6075 (<= 1.061 % off)."""
    a, b, c = (float(v) ** 1.6075 for v in axes)
    return 4 * math.pi * ((a * b + a * c + b * c) / 3) ** (1 / 1.6075)


def sample_box(rng: np.random.Generator, n: int, half_extents: Sequence[float]) -> np.ndarray:
    """Draws n points uniform by area on the surface of the box |x| <= h_x, |y| <= h_y, |z| <= h_z.

    Face pair k (normal along axis k) has area 4 h_i h_j each; a face is drawn with
    probability proportional to its area, then a uniform point on it.

    Returns:
      (n, 3) float64; each point has |p_k| = h_k on its face's axis k.
    """
    h = np.asarray(half_extents, dtype=np.float64)
    face_areas = np.array([h[1] * h[2], h[0] * h[2], h[0] * h[1]])
    axis = rng.choice(3, size=n, p=face_areas / face_areas.sum())
    sign = rng.choice(np.array([-1.0, 1.0]), size=n)
    p = rng.uniform(-1.0, 1.0, (n, 3)) * h
    p[np.arange(n), axis] = sign * h[axis]
    return p


def _disk(rng: np.random.Generator, n: int, radius: float) -> np.ndarray:
    """(n, 2) points uniform in the disk of ``radius`` (rho = radius sqrt(U))."""
    rho = radius * np.sqrt(rng.random(n))
    phi = rng.uniform(0.0, 2 * np.pi, n)
    return np.stack([rho * np.cos(phi), rho * np.sin(phi)], axis=1)


def sample_cylinder(rng: np.random.Generator, n: int, radius: float, half_height: float) -> np.ndarray:
    """Draws n points uniform by area on the closed cylinder x^2 + y^2 <= r^2, |z| <= h.

    Areas: lateral 4 pi r h, each cap pi r^2.

    Returns:
      (n, 3) float64.
    """
    r, h = float(radius), float(half_height)
    areas = np.array([4 * np.pi * r * h, np.pi * r * r, np.pi * r * r])
    part = rng.choice(3, size=n, p=areas / areas.sum())
    phi = rng.uniform(0.0, 2 * np.pi, n)
    p = np.stack([r * np.cos(phi), r * np.sin(phi), rng.uniform(-h, h, n)], axis=1)
    caps = part > 0
    p[caps, :2] = _disk(rng, int(caps.sum()), r)
    p[caps, 2] = np.where(part[caps] == 1, h, -h)
    return p


def sample_cone(rng: np.random.Generator, n: int, radius: float, height: float) -> np.ndarray:
    """Draws n points uniform by area on the closed cone with apex (0, 0, H/2) and base disk at z = -H/2.

    Areas: lateral pi r l with slant l = sqrt(r^2 + H^2), base pi r^2. On the lateral surface
    the area within distance t l of the apex grows as t^2, so t = sqrt(U).

    Returns:
      (n, 3) float64.
    """
    r, height = float(radius), float(height)
    areas = np.array([np.pi * r * math.hypot(r, height), np.pi * r * r])
    base = rng.random(n) < areas[1] / areas.sum()
    t = np.sqrt(rng.random(n))
    phi = rng.uniform(0.0, 2 * np.pi, n)
    p = np.stack([r * t * np.cos(phi), r * t * np.sin(phi), height / 2 - height * t], axis=1)
    p[base, :2] = _disk(rng, int(base.sum()), r)
    p[base, 2] = -height / 2
    return p


def sample_torus(rng: np.random.Generator, n: int, major: float, minor: float) -> np.ndarray:
    """Draws n points uniform by area on the torus (sqrt(x^2 + y^2) - R)^2 + z^2 = r^2 (R > r).

    With p = ((R + r cos theta) cos phi, (R + r cos theta) sin phi, r sin theta) the area
    element is r (R + r cos theta) dtheta dphi: phi is uniform and theta ~ U[0, 2 pi) is kept
    with probability (R + r cos theta) / (R + r).

    Returns:
      (n, 3) float64.
    """
    big, small = float(major), float(minor)

    def propose(m: int) -> tuple[np.ndarray, np.ndarray]:
        theta = rng.uniform(0.0, 2 * np.pi, m)
        return theta, (big + small * np.cos(theta)) / (big + small)

    theta = _rejection(rng, n, propose)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    ring = big + small * np.cos(theta)
    return np.stack([ring * np.cos(phi), ring * np.sin(phi), small * np.sin(theta)], axis=1)


def sample_capsule(rng: np.random.Generator, n: int, radius: float, half_length: float) -> np.ndarray:
    """Draws n points uniform by area on a capsule: the tube x^2 + y^2 = r^2, |z| <= h, with hemisphere ends.

    Areas: lateral 4 pi r h, the two hemispheres together 4 pi r^2 (a sphere whose upper half
    moves up by h and lower half down by h).

    Returns:
      (n, 3) float64.
    """
    r, h = float(radius), float(half_length)
    ends = rng.random(n) < r / (r + h)  # 4 pi r^2 / (4 pi r^2 + 4 pi r h)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    p = np.stack([r * np.cos(phi), r * np.sin(phi), rng.uniform(-h, h, n)], axis=1)
    cap = r * _unit_vectors(rng, int(ends.sum()))
    cap[:, 2] += np.where(cap[:, 2] >= 0, h, -h)
    p[ends] = cap
    return p


def _box_surface(center: Sequence[float], half: Sequence[float]) -> tuple[float, Callable, Callable]:
    """(area, sampler, strictly-inside test) of an axis-aligned box."""
    c, h = np.asarray(center, dtype=np.float64), np.asarray(half, dtype=np.float64)
    area = 8 * (h[0] * h[1] + h[0] * h[2] + h[1] * h[2])
    return (
        area,
        lambda rng, m: sample_box(rng, m, h) + c,
        lambda p: np.all(np.abs(p - c) < h * (1 - 1e-9), axis=1),
    )


def sample_airplane(
    rng: np.random.Generator,
    n: int,
    *,
    length: float,
    fuselage_radius: float,
    wing_chord: float,
    wing_span: float,
    wing_offset: float,
    tail_chord: float,
    tail_span: float,
    fin_height: float,
    thickness: float,
) -> np.ndarray:
    """Draws n points uniform by area on an airplane-like union of an ellipsoid and three thin boxes.

    Canonical frame: nose along +x, wings along y, up z. Components (all half-sizes):

    * fuselage: ellipsoid with semi-axes (length, fuselage_radius, fuselage_radius);
    * wings: box centred at (wing_offset, 0, 0), half extents (wing_chord, wing_span, thickness);
    * tailplane: box at (-0.8 length, 0, 0), half extents (tail_chord, tail_span, thickness);
    * fin: box at (-0.8 length, 0, fin_height / 2), half extents (tail_chord, thickness, fin_height / 2).

    A component is drawn with probability proportional to its area (the fuselage's by
    Thomsen's formula), and a point strictly inside another component is rejected, so the
    points are uniform on the outer surface of the union.

    Returns:
      (n, 3) float64.
    """
    fuselage = np.array([length, fuselage_radius, fuselage_radius], dtype=np.float64)
    parts = [
        (
            ellipsoid_area(fuselage),
            lambda g, m: sample_ellipsoid(g, m, fuselage),
            lambda p: np.sum((p / fuselage) ** 2, axis=1) < 1 - 1e-9,
        ),
        _box_surface((wing_offset, 0, 0), (wing_chord, wing_span, thickness)),
        _box_surface((-0.8 * length, 0, 0), (tail_chord, tail_span, thickness)),
        _box_surface((-0.8 * length, 0, fin_height / 2), (tail_chord, thickness, fin_height / 2)),
    ]
    areas = np.array([a for a, _, _ in parts])

    def propose(m: int) -> tuple[np.ndarray, np.ndarray]:
        part = rng.choice(len(parts), size=m, p=areas / areas.sum())
        p = np.empty((m, 3))
        for k, (_, sample, _) in enumerate(parts):
            rows = part == k
            p[rows] = sample(rng, int(rows.sum()))
        covered = np.zeros(m, dtype=bool)
        for k, (_, _, inside) in enumerate(parts):
            covered |= (part != k) & inside(p)
        return p, (~covered).astype(np.float64)

    return _rejection(rng, n, propose)


# ----------------------------------------------------------------------------- shapes


def _rotation_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


# Canonical z-up to PC15k's y-up: a rotation by -90 degrees about x, (x, y, z) -> (x, z, -y).
_Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def _random_rotation(rng: np.random.Generator, rotation: str) -> np.ndarray:
    """A (3, 3) rotation: R_y(psi) Q (yaw), uniform on SO(3) (full), or Q (none)."""
    if rotation == "none":
        return _Z_UP_TO_Y_UP.copy()
    if rotation == "yaw":
        return _rotation_y(rng.uniform(0.0, 2 * np.pi)) @ _Z_UP_TO_Y_UP
    w, x, y, z = _unit4(rng)  # a uniform unit quaternion gives a uniform rotation
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _unit4(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    return q / np.linalg.norm(q)


def _shape_parameters(name: str, rng: np.random.Generator) -> dict[str, Any]:
    """Random size and aspect of one shape of class ``name``.

    The size s ~ U[0.3, 0.5] is the radius of the origin-centred ball that holds the shape
    (touching it), so every cloud lies within |p| <= 0.5.
    """
    s = rng.uniform(0.3, 0.5)
    u = rng.uniform
    if name == "sphere":
        return {"radius": s}
    if name == "ellipsoid":
        return {"axes": [s * u(0.35, 0.85), s * u(0.35, 0.85), s]}
    if name == "box":
        v = np.array([u(0.3, 1.0), u(0.3, 1.0), 1.0])
        return {"half_extents": list(s * v / np.linalg.norm(v))}
    if name == "cylinder":
        r, h = u(0.3, 0.9), u(0.5, 1.0)
        return {"radius": s * r / math.hypot(r, h), "half_height": s * h / math.hypot(r, h)}
    if name == "cone":
        r, half = u(0.4, 1.0), u(0.6, 1.0)
        return {"radius": s * r / math.hypot(r, half), "height": 2 * s * half / math.hypot(r, half)}
    if name == "torus":
        ratio = u(0.2, 0.5)
        return {"major": s / (1 + ratio), "minor": s * ratio / (1 + ratio)}
    if name == "capsule":
        radius = s * u(0.2, 0.45)
        return {"radius": radius, "half_length": s - radius}
    if name == "airplane":
        return {
            "length": s,
            "fuselage_radius": s * u(0.07, 0.12),
            "wing_chord": s * u(0.08, 0.14),
            "wing_span": s * u(0.65, 0.9),
            "wing_offset": s * u(-0.15, 0.15),
            "tail_chord": s * u(0.05, 0.08),
            "tail_span": s * u(0.25, 0.35),
            "fin_height": s * u(0.15, 0.25),
            "thickness": 0.015 * s,
        }
    raise ValueError(
        f"synthetic_shape: `name` must be one of {', '.join(n for _, n in SYNTHETIC_CATEGORIES)}; got {name!r}."
    )


_SAMPLERS: dict[str, Callable[..., np.ndarray]] = {
    "sphere": sample_sphere,
    "ellipsoid": sample_ellipsoid,
    "box": sample_box,
    "cylinder": sample_cylinder,
    "cone": sample_cone,
    "torus": sample_torus,
    "capsule": sample_capsule,
    "airplane": sample_airplane,
}


def synthetic_shape(
    name: str, n: int, rng: np.random.Generator, *, rotation: Literal["yaw", "full", "none"] = "yaw"
) -> tuple[np.ndarray, dict[str, Any]]:
    """One random shape of class ``name``: n surface points and the parameters that made them.

    The points are ``p_local @ R.T`` (p_world = R p_local), so ``cloud @ R`` recovers the
    canonical-frame points of the ``sample_<name>`` sampler with the recorded parameters.

    Args:
      name: a class name of ``SYNTHETIC_CATEGORIES``.
      n: number of points.
      rng: the random generator (size, aspect, rotation, then the points).
      rotation: ``"yaw"`` (about PC15k's up axis y), ``"full"`` (uniform on SO(3)) or ``"none"``.

    Returns:
      ``(cloud, params)``: cloud (n, 3) float64; params ``{"class": name, "rotation": R as
      nested lists (3, 3), <sampler keyword arguments>}``.

    Raises:
      ValueError: an unknown ``name`` or ``rotation``, or n < 1.
    """
    if rotation not in ("yaw", "full", "none"):
        raise ValueError(f"synthetic_shape: `rotation` must be 'yaw', 'full' or 'none'; got {rotation!r}.")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"synthetic_shape: `n` must be an integer >= 1; got {n!r}.")
    params = _shape_parameters(name, rng)
    rot = _random_rotation(rng, rotation)
    local = _SAMPLERS[name](rng, int(n), **params)
    record = {"class": name, "rotation": rot.tolist()}
    record.update({k: (list(map(float, v)) if isinstance(v, list) else float(v)) for k, v in params.items()})
    return local @ rot.T, record


# ----------------------------------------------------------------------------- the tree


def _check_counts(counts: Any) -> dict[str, int]:
    names = [name for _, name in SYNTHETIC_CATEGORIES]
    if counts is None:
        return dict(SYNTHETIC_DEFAULT_COUNTS)
    if isinstance(counts, (int, np.integer)) and not isinstance(counts, bool):
        counts = dict.fromkeys(names, int(counts))
    elif isinstance(counts, Mapping):
        unknown = sorted(set(counts) - set(names))
        if unknown:
            raise ValueError(f"{_WHERE}: `counts` names unknown class(es) {unknown}; the classes are {names}.")
        counts = {name: counts.get(name, 0) for name in names}
    elif isinstance(counts, Sequence) and not isinstance(counts, str) and len(counts) == len(names):
        counts = dict(zip(names, counts, strict=True))
    else:
        raise ValueError(
            f"{_WHERE}: `counts` must be None, an integer, a mapping class name -> count or a sequence of "
            f"{len(names)} counts (one per class of SYNTHETIC_CATEGORIES, in order); got {counts!r}."
        )
    for name, value in counts.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{_WHERE}: `counts[{name!r}]` must be an integer >= 0; got {value!r}.")
    counts = {name: int(v) for name, v in counts.items()}
    if not any(counts.values()):
        raise ValueError(f"{_WHERE}: `counts` must ask for at least one shape; got {counts}.")
    return counts


def _check_splits(splits: Any) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(f) for f in splits)
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3 or min(fractions, default=-1) < 0 or not fractions[0] > 0 or sum(fractions) <= 0:
        raise ValueError(
            f"{_WHERE}: `splits` must be three fractions (train, val, test) >= 0 with train > 0, e.g. "
            f"(0.7, 0.1, 0.2); got {splits!r}."
        )
    total = sum(fractions)
    return tuple(f / total for f in fractions)  # type: ignore[return-value]


def _allocate(count: int, fractions: tuple[float, float, float], name: str) -> list[int]:
    """Shapes per split for one class: largest-remainder rounding, at least one per split with a positive fraction."""
    if count == 0:
        return [0, 0, 0]
    positive = [f > 0 for f in fractions]
    if count < sum(positive):
        raise ValueError(
            f"{_WHERE}: class {name!r} has {count} shape(s), fewer than the {sum(positive)} splits with a positive "
            f"fraction in `splits`; ask for at least {sum(positive)} (or 0)."
        )
    exact = [f * count for f in fractions]
    sizes = [max(int(math.floor(e)), 1 if p else 0) for e, p in zip(exact, positive, strict=True)]
    while sum(sizes) < count:
        k = max(range(3), key=lambda i: (exact[i] - sizes[i], -i))
        sizes[k] += 1
    while sum(sizes) > count:
        k = max((i for i in range(3) if sizes[i] > (1 if positive[i] else 0)), key=lambda i: sizes[i] - exact[i])
        sizes[k] -= 1
    return sizes


def _model_id(seed: int, name: str, index: int) -> str:
    """A 32-hex-digit id like ShapeNet's, fixed by (seed, class, index)."""
    return hashlib.md5(f"fpn-jax-synthetic/{seed}/{name}/{index}".encode()).hexdigest()


def write_synthetic_shapenet(
    root: str | os.PathLike,
    *,
    counts: int | Mapping[str, int] | Sequence[int] | None = None,
    points_per_cloud: int = 15_000,
    seed: int = 0,
    splits: Sequence[float] = (0.7, 0.1, 0.2),
    rotation: Literal["yaw", "full", "none"] = "yaw",
    overwrite: bool = False,
) -> Path:
    """Writes the offline stand-in for ShapeNetCore.v2.PC15k under ``root``; returns ``root``.

    Layout: ``<root>/<pseudo-synset>/{train,val,test}/<32-hex id>.npy``, each (P, 3) float32
    with P = ``points_per_cloud``, plus ``<root>/synthetic_shapenet.json`` recording the
    arguments and every shape's class, split, id, parameters and rotation (see
    ``synthetic_shape``). Load it with ``load_shapenet(root, categories=SYNTHETIC_CATEGORIES)``;
    for P < 15000 the loader takes the first floor(2P / 3) points as train points.

    The tree is written to a temporary sibling folder and renamed into place, so an
    interrupted run leaves no partial tree. If ``root`` already holds a complete stand-in
    written with the same arguments it is returned as is.

    Args:
      root: the folder to create (absent or empty, or an earlier stand-in).
      counts: shapes per class (all splits together): a mapping class name -> count
        (missing classes get 0), a sequence in ``SYNTHETIC_CATEGORIES`` order, one integer
        for every class, or None for ``SYNTHETIC_DEFAULT_COUNTS`` (640 ... 40, 1874 shapes).
      points_per_cloud: P, points per file (15000 as PC15k; small values for tests).
      seed: the seed everything is drawn from.
      splits: fractions (train, val, test), normalised to sum 1; per class the sizes are
        rounded by largest remainder with at least one shape in each split of positive fraction.
      rotation: ``"yaw"``, ``"full"`` or ``"none"`` (see ``synthetic_shape``).
      overwrite: replace an earlier stand-in written with other arguments.

    Returns:
      ``Path(root)``.

    Raises:
      ValueError: bad arguments (unknown classes, negative counts, a class with fewer shapes
        than splits, bad fractions).
      FileExistsError: ``root`` holds something other than an empty folder or a stand-in, or a
        stand-in with other arguments and ``overwrite`` is False.
    """
    root = Path(root)
    counts = _check_counts(counts)
    fractions = _check_splits(splits)
    if not isinstance(points_per_cloud, (int, np.integer)) or isinstance(points_per_cloud, bool) or (
        points_per_cloud < 3
    ):
        raise ValueError(f"{_WHERE}: `points_per_cloud` must be an integer >= 3; got {points_per_cloud!r}.")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{_WHERE}: `seed` must be an integer >= 0; got {seed!r}.")
    if rotation not in ("yaw", "full", "none"):
        raise ValueError(f"{_WHERE}: `rotation` must be 'yaw', 'full' or 'none'; got {rotation!r}.")
    config = {
        "seed": int(seed), "counts": counts, "points_per_cloud": int(points_per_cloud),
        "splits": list(fractions), "rotation": rotation,
    }
    sizes = {name: _allocate(counts[name], fractions, name) for _, name in SYNTHETIC_CATEGORIES}

    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f"{_WHERE}: `root` {root} exists and is not a folder.")
        if any(root.iterdir()):
            manifest = _read_manifest(root)
            if manifest is None:
                raise FileExistsError(
                    f"{_WHERE}: `root` {root} is not empty and holds no {MANIFEST}; choose a new or empty folder."
                )
            if manifest.get("config") == config and _complete(root, sizes):
                return root
            if not overwrite:
                raise FileExistsError(
                    f"{_WHERE}: `root` {root} holds a stand-in written with other arguments (or an incomplete "
                    f"one): {manifest.get('config')}; pass overwrite=True to replace it or choose another folder."
                )
            shutil.rmtree(root)
        else:
            root.rmdir()

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        shapes = []
        for label, (synset, name) in enumerate(SYNTHETIC_CATEGORIES):
            for folder in _SPLIT_FOLDERS:
                (staging / synset / folder).mkdir(parents=True)
            split_of = np.repeat(np.arange(3), sizes[name])
            for index in range(counts[name]):
                rng = np.random.default_rng([int(seed), label, index])
                cloud, params = synthetic_shape(name, int(points_per_cloud), rng, rotation=rotation)
                folder = _SPLIT_FOLDERS[split_of[index]]
                model_id = _model_id(int(seed), name, index)
                np.save(staging / synset / folder / f"{model_id}.npy", cloud.astype(np.float32))
                shapes.append({"synset": synset, "split": folder, "id": model_id, **params})
        manifest = {
            "format": _FORMAT, "version": _VERSION, "config": config,
            "categories": [list(pair) for pair in SYNTHETIC_CATEGORIES], "shapes": shapes,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest))
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _read_manifest(root: Path) -> dict[str, Any] | None:
    """The stand-in's manifest under ``root``, or None when there is none (or another file)."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == _FORMAT else None


def _complete(root: Path, sizes: dict[str, list[int]]) -> bool:
    """Whether every class's split folders hold the expected number of .npy files."""
    for synset, name in SYNTHETIC_CATEGORIES:
        for folder, expected in zip(_SPLIT_FOLDERS, sizes[name], strict=True):
            directory = root / synset / folder
            if not directory.is_dir() or sum(1 for p in directory.iterdir() if p.suffix == ".npy") != expected:
                return False
    return True
