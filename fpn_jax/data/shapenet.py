"""ShapeNetCore.v2.PC15k point clouds as PointFlow (Yang et al., 2019) reads them.

The tree is ``<root>/<synset>/{train,val,test}/<model_id>.npy``, one (15000, 3) float array
of surface points per shape. ``load_shapenet`` follows PointFlow's ``Uniform15KPC``
(``datasets.py``):

* **Order.** For each split, the categories are visited in the given order (PointFlow's
  ``synsetid_to_cate`` order by default) and each category's ``.npy`` files in file-name
  order; the gathered list of all shapes is then shuffled once with
  ``random.Random(38383).shuffle`` over the indices ``0..N-1``. PointFlow lists a folder with
  ``os.listdir`` (an order the file system chooses); sorting makes the order reproducible.
* **Points.** A cloud of P points is split into ``train_points = cloud[:b]`` and
  ``test_points = cloud[b:]`` with b = 10000 for P >= 15000 (PC15k) and b = floor(2P / 3)
  for smaller clouds (the offline stand-in's tiny test files). The inputs take ``points``
  of the train points: a seeded random subset (without replacement) for the train split,
  the first ``points`` for validation and test, as PointFlow's evaluation does. Optional
  reference clouds take the first ``reference_points`` of the test points (PointFlow's
  ``test_points``, the targets of its reconstruction and generation metrics).
* **Normalisation.** One per-axis mean m (1, 3) and one scalar std s (1, 1) over the
  training split, taken as PointFlow does over *all* P points of every training cloud (its
  ``all_points`` before the 10000/5000 slice):

      m_k = mean_{i, j} x_{ijk},    s = std_{i, j, k} x_{ijk}  (population std, ddof = 0),

  where s is the std of the flattened coordinates about their own scalar mean (PointFlow's
  ``all_points.reshape(-1).std()``), not about m. Inputs are (x - m) / s; the statistics are
  accumulated file by file (Chan's parallel update, float64), so only the taken points stay
  in memory. The released checkpoint's ``train_set_mean.npy`` / ``train_set_std.npy`` may
  be passed instead (``normalization=``).
"""

from __future__ import annotations

import dataclasses
import os
import random
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fpn_jax.data.base import Dataset, Normalization, Split

__all__ = ["SHAPENET_CATEGORIES", "ShapeNetDataset", "load_shapenet", "split_boundary"]

# PointFlow's ``synsetid_to_cate`` (datasets.py), in its dict order: the position of a pair
# is PointFlow's category index. Boat (02858304, merged into vessel) and bicycle (02834778)
# are commented out there and absent here.
SHAPENET_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("02691156", "airplane"), ("02773838", "bag"), ("02801938", "basket"),
    ("02808440", "bathtub"), ("02818832", "bed"), ("02828884", "bench"),
    ("02876657", "bottle"), ("02880940", "bowl"), ("02924116", "bus"),
    ("02933112", "cabinet"), ("02747177", "can"), ("02942699", "camera"),
    ("02954340", "cap"), ("02958343", "car"), ("03001627", "chair"),
    ("03046257", "clock"), ("03207941", "dishwasher"), ("03211117", "monitor"),
    ("04379243", "table"), ("04401088", "telephone"), ("02946921", "tin_can"),
    ("04460130", "tower"), ("04468005", "train"), ("03085013", "keyboard"),
    ("03261776", "earphone"), ("03325088", "faucet"), ("03337140", "file"),
    ("03467517", "guitar"), ("03513137", "helmet"), ("03593526", "jar"),
    ("03624134", "knife"), ("03636649", "lamp"), ("03642806", "laptop"),
    ("03691459", "speaker"), ("03710193", "mailbox"), ("03759954", "microphone"),
    ("03761084", "microwave"), ("03790512", "motorcycle"), ("03797390", "mug"),
    ("03928116", "piano"), ("03938244", "pillow"), ("03948459", "pistol"),
    ("03991062", "pot"), ("04004475", "printer"), ("04074963", "remote_control"),
    ("04090263", "rifle"), ("04099429", "rocket"), ("04225987", "skateboard"),
    ("04256520", "sofa"), ("04330267", "stove"), ("04530566", "vessel"),
    ("04554684", "washer"), ("02992529", "cellphone"),
    ("02843684", "birdhouse"), ("02871439", "bookshelf"),
)

_SHUFFLE_SEED = 38383  # PointFlow's random.Random(38383)
_PC15K_POINTS, _PC15K_BOUNDARY = 15_000, 10_000
_WHERE = "load_shapenet"


def split_boundary(num_points: int) -> int:
    """The index b splitting a cloud of P points into train points [:b] and test points [b:].

    b = 10000 for P >= 15000 (PointFlow's PC15k slice) and b = floor(2P / 3) for smaller
    clouds (the offline stand-in's small files), so P = 15000 gives the same 10000 / 5000.
    """
    return _PC15K_BOUNDARY if num_points >= _PC15K_POINTS else (2 * num_points) // 3


@dataclasses.dataclass(frozen=True, eq=False)
class ShapeNetDataset(Dataset):
    """A point-cloud ``Dataset`` with the shapes' origin and optional reference clouds.

    Attributes (besides ``Dataset``'s):
      categories: the (synset, name) pair of each class, in label order.
      model_ids: per split (``"train"``, ``"validation"``, ``"test"``), each row's file as
        ``"<synset>/<split folder>/<model_id>"``, in the rows' (shuffled) order.
      reference: per split, (N, reference_points, 3) float32 normalised test points
        (``cloud[b:][:reference_points]``), or None when ``reference_points=0``.
    """

    categories: tuple[tuple[str, str], ...] = ()
    model_ids: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    reference: dict[str, np.ndarray] | None = None


@dataclasses.dataclass
class _Entry:
    """One shape to read: its file, class index and which points to keep."""

    path: Path
    label: int
    model_id: str


def load_shapenet(
    root: str | os.PathLike,
    *,
    categories: str | Sequence[str | tuple[str, str]] | None = None,
    points: int = 2048,
    seed: int = 0,
    validation: str | float = "val",
    normalization: Normalization | tuple[Any, Any] | None = None,
    reference_points: int = 0,
) -> ShapeNetDataset:
    """Loads ShapeNetCore.v2.PC15k (or a tree of the same layout) as PointFlow does.

    Every split is gathered over the categories (in ``categories`` order, each category's
    files sorted by name), shuffled with ``random.Random(38383)``, and each cloud reduced to
    ``points`` of its train points (see the module docstring for the maths).

    Args:
      root: the folder holding one ``<synset>`` folder per category, each with ``train``,
        ``val`` and ``test`` folders of ``<model_id>.npy`` files of shape (P, 3).
      categories: which classes, in label order. None: every synset folder under ``root``
        (all must be known ShapeNet synsets), in PointFlow's order. ``"all"``: all 55.
        Otherwise a sequence whose items are a known synset id or name (``"02691156"``,
        ``"airplane"``) or a ``(synset, name)`` pair (any folder name, e.g.
        ``SYNTHETIC_CATEGORIES`` for the offline stand-in); folders not listed are ignored.
      points: points per cloud in the inputs, at most the train part b of every cloud.
      seed: seed of the train split's random point subsets.
      validation: the folder read as the validation split (``"val"``, what PointFlow
        evaluates on), or a fraction in (0, 1) of the train folder's shuffled shapes (the
        last ones) held out instead; the training statistics then skip them.
      normalization: precomputed statistics instead of the training split's: a
        ``Normalization`` or a pair ``(mean, std)`` of arrays or ``.npy`` paths (PointFlow's
        ``train_set_mean.npy``, ``train_set_std.npy``); mean has 3 values, std 1 (or 3 for
        a per-axis std).
      reference_points: test points kept per cloud as ``ShapeNetDataset.reference``
        (0: none), at most P - b.

    Returns:
      A ``ShapeNetDataset`` whose splits hold inputs (N, points, 3) float32, normalised;
      one-hot contexts (N, C) float32 and labels (N,) int32 with C = len(categories);
      ``num_classes=C``, ``value_range=None``, ``context_names`` the category names and
      ``normalization`` with mean (1, 3) and std (1, 1) float32.

    Raises:
      FileNotFoundError: ``root``, a category's folder or one of its split folders is
        missing, or ``root`` has no synset folders.
      ValueError: bad arguments; an unknown synset folder (``categories=None``); a split
        without shapes; a cloud file that cannot be read, is not a (P, 3) float array, holds
        NaN or infinite values, or has fewer points than asked for.
    """
    root = Path(root)
    points = _count(points, "points", minimum=1)
    reference_points = _count(reference_points, "reference_points", minimum=0)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"{_WHERE}: `seed` must be an integer; got {seed!r}.")
    if not root.is_dir():
        raise FileNotFoundError(
            f"{_WHERE}: `root` must be a folder of ShapeNetCore.v2.PC15k synset folders; "
            f"{root} {'is not a folder' if root.exists() else 'does not exist'}."
        )
    held_out_fraction = _validation_fraction(validation)
    cats = _resolve_categories(root, categories)
    given = _given_normalization(normalization)

    folders = {"train": "train", "test": "test"}
    if held_out_fraction is None:
        folders["validation"] = str(validation)
    entries = {split: _gather(root, cats, folder) for split, folder in folders.items()}
    if held_out_fraction is not None:
        n_val = int(round(held_out_fraction * len(entries["train"])))
        if not 0 < n_val < len(entries["train"]):
            raise ValueError(
                f"{_WHERE}: `validation={validation!r}` holds out {n_val} of the "
                f"{len(entries['train'])} training shapes; it must leave at least one shape "
                "in each of train and validation."
            )
        entries["validation"] = entries["train"][-n_val:]
        entries["train"] = entries["train"][:-n_val]

    rng = np.random.default_rng(int(seed))
    loaded = {}
    stats = []
    for split in ("train", "validation", "test"):
        want_stats = split == "train" and given is None
        loaded[split] = _read_split(
            entries[split], points, reference_points, rng if split == "train" else None, stats if want_stats else None
        )
    norm = given if given is not None else _combine_stats(stats)

    names = tuple(name for _, name in cats)
    splits, reference, model_ids = {}, {} if reference_points else None, {}
    for split, (inputs, refs) in loaded.items():
        inputs = norm.apply(inputs).astype(np.float32)
        labels = np.array([e.label for e in entries[split]], dtype=np.int32)
        splits[split] = Split.from_labels(inputs, labels, len(cats))
        model_ids[split] = tuple(e.model_id for e in entries[split])
        if reference is not None:
            reference[split] = norm.apply(refs).astype(np.float32)
    return ShapeNetDataset(
        train=splits["train"], validation=splits["validation"], test=splits["test"],
        num_classes=len(cats), value_range=None, context_names=names, normalization=norm,
        categories=cats, model_ids=model_ids, reference=reference,
    )


def _count(value: Any, name: str, *, minimum: int) -> int:
    """An integer argument >= minimum, else a ValueError naming it."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{_WHERE}: `{name}` must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def _validation_fraction(validation: Any) -> float | None:
    """None for a folder name, the fraction for a number in (0, 1); else a ValueError."""
    if isinstance(validation, str):
        if not validation or validation in (".", "..") or "/" in validation or os.sep in validation:
            raise ValueError(
                f"{_WHERE}: `validation` must be a split folder name such as 'val' or a fraction in (0, 1); "
                f"got {validation!r}."
            )
        return None
    if isinstance(validation, (float, np.floating)) and 0.0 < float(validation) < 1.0:
        return float(validation)
    raise ValueError(
        f"{_WHERE}: `validation` must be a split folder name such as 'val' or a fraction in (0, 1); "
        f"got {validation!r}."
    )


def _resolve_categories(root: Path, categories: Any) -> tuple[tuple[str, str], ...]:
    """The (synset, name) pairs to load, in label order, with their folders checked."""
    by_synset = dict(SHAPENET_CATEGORIES)
    by_name = {name: synset for synset, name in SHAPENET_CATEGORIES}
    if categories is None:
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not present:
            raise FileNotFoundError(
                f"{_WHERE}: {root} holds no synset folders; expected ShapeNetCore.v2.PC15k's layout "
                "<root>/<synset>/{train,val,test}/<model_id>.npy (e.g. <root>/02691156/train/...)."
            )
        unknown = [name for name in present if name not in by_synset]
        if unknown:
            raise ValueError(
                f"{_WHERE}: unknown synset folder(s) in {root}: {', '.join(unknown)}; with categories=None every "
                "folder must be one of the 55 ShapeNet synsets of SHAPENET_CATEGORIES. Pass `categories` to "
                "choose folders (e.g. categories=SYNTHETIC_CATEGORIES for the offline stand-in) or remove them."
            )
        return tuple(pair for pair in SHAPENET_CATEGORIES if pair[0] in present)

    if isinstance(categories, str):
        items: list[Any] = list(SHAPENET_CATEGORIES) if categories == "all" else [categories]
    else:
        try:
            items = list(categories)
        except TypeError:
            raise ValueError(
                f"{_WHERE}: `categories` must be None, 'all' or a sequence of synset ids, names or "
                f"(synset, name) pairs; got {categories!r}."
            ) from None
    if not items:
        raise ValueError(f"{_WHERE}: `categories` must name at least one category; got {categories!r}.")
    pairs = []
    for item in items:
        if isinstance(item, str):
            if item in by_synset:
                pairs.append((item, by_synset[item]))
            elif item in by_name:
                pairs.append((by_name[item], item))
            else:
                raise ValueError(
                    f"{_WHERE}: `categories` item {item!r} is neither a ShapeNet synset id nor a name of "
                    "SHAPENET_CATEGORIES; pass a (synset, name) pair for other folders."
                )
        elif (
            isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(s, str) and s for s in item)
        ):
            pairs.append((item[0], item[1]))
        else:
            raise ValueError(
                f"{_WHERE}: each `categories` item must be a synset id, a name or a (synset, name) pair of "
                f"strings; got {item!r}."
            )
    for kind, column in (("synset", 0), ("name", 1)):
        values = [p[column] for p in pairs]
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"{_WHERE}: `categories` repeats the {kind}(s) {', '.join(repeated)}.")
    missing = [synset for synset, _ in pairs if not (root / synset).is_dir()]
    if missing:
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"{_WHERE}: category folder(s) missing from {root}: {', '.join(missing)}; "
            f"found {', '.join(present) if present else 'no folders'}."
        )
    return tuple(pairs)


def _given_normalization(normalization: Any) -> Normalization | None:
    """Checks precomputed statistics; returns them as mean (1, 3), std (1, 1) or (1, 3) float32."""
    if normalization is None:
        return None
    if isinstance(normalization, Normalization):
        mean, std = normalization.mean, normalization.std
    elif isinstance(normalization, (tuple, list)) and len(normalization) == 2:
        mean, std = normalization
    else:
        raise ValueError(
            f"{_WHERE}: `normalization` must be None, a Normalization or a pair (mean, std); "
            f"got {type(normalization).__name__}."
        )

    def value(x: Any, name: str, sizes: tuple[int, ...]) -> np.ndarray:
        if isinstance(x, (str, os.PathLike)):
            try:
                x = np.load(x, allow_pickle=False)
            except (OSError, ValueError, EOFError) as err:
                raise ValueError(f"{_WHERE}: cannot read the `normalization` {name} file {x}: {err}") from err
        x = np.asarray(x)
        if x.size not in sizes or not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
            raise ValueError(
                f"{_WHERE}: the `normalization` {name} must hold {' or '.join(map(str, sizes))} finite numbers "
                f"(e.g. PointFlow's train_set_{name}.npy, shape (1, 1, {sizes[0]})); got shape {x.shape}, "
                f"dtype {x.dtype}."
            )
        return x.astype(np.float32).reshape(1, x.size)

    mean, std = value(mean, "mean", (3,)), value(std, "std", (1, 3))
    if np.any(std <= 0):
        raise ValueError(f"{_WHERE}: the `normalization` std must be positive; got {std.ravel().tolist()}.")
    return Normalization(mean=mean, std=std)


def _gather(root: Path, cats: tuple[tuple[str, str], ...], folder: str) -> list[_Entry]:
    """A split's shapes over all categories (files sorted by name), shuffled as PointFlow does."""
    gathered = []
    for label, (synset, _) in enumerate(cats):
        directory = root / synset / folder
        if not directory.is_dir():
            raise FileNotFoundError(
                f"{_WHERE}: split folder {directory} is missing; each category folder must hold "
                f"train, val and test folders (this split reads '{folder}')."
            )
        files = sorted(p for p in directory.iterdir() if p.name.endswith(".npy") and p.is_file())
        gathered += [_Entry(p, label, f"{synset}/{folder}/{p.name[:-4]}") for p in files]
    if not gathered:
        raise ValueError(
            f"{_WHERE}: the '{folder}' split has no .npy files in any of the {len(cats)} category "
            f"folder(s) ({', '.join(s for s, _ in cats[:5])}{', ...' if len(cats) > 5 else ''}) of {root}."
        )
    order = list(range(len(gathered)))
    random.Random(_SHUFFLE_SEED).shuffle(order)
    return [gathered[i] for i in order]


def _read_cloud(path: Path) -> np.ndarray:
    """One cloud file, checked: a finite floating (P, 3) array."""
    try:
        cloud = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{_WHERE}: cannot read the point-cloud file {path} as .npy: {err}") from err
    if not isinstance(cloud, np.ndarray):  # an .npz archive under a .npy name
        if hasattr(cloud, "close"):
            cloud.close()
        raise ValueError(
            f"{_WHERE}: {path} must hold one (P, 3) float array (.npy); got a {type(cloud).__name__}."
        )
    if cloud.ndim != 2 or cloud.shape[1] != 3 or not np.issubdtype(cloud.dtype, np.floating):
        raise ValueError(
            f"{_WHERE}: {path} must hold a (P, 3) float array of points; got shape {cloud.shape}, dtype {cloud.dtype}."
        )
    finite = np.isfinite(cloud).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{_WHERE}: {path} holds {bad.size} point(s) with NaN or infinite coordinates "
            f"(first at row {bad[0]}: {cloud[bad[0]].tolist()})."
        )
    return cloud


def _read_split(
    entries: list[_Entry],
    points: int,
    reference_points: int,
    rng: np.random.Generator | None,
    stats: list[tuple[int, np.ndarray, float, float]] | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Reads a split's clouds one file at a time, keeping only the taken points (raw units).

    Args:
      entries: the split's shapes in their final order.
      points: input points per cloud.
      reference_points: test points per cloud kept as references (0: none).
      rng: a random subset of the train points when given (train), else the first ``points``.
      stats: when given, receives per file (P, per-axis mean (3,), flat mean, flat M2) in float64.

    Returns:
      Inputs (N, points, 3) float32 and references (N, reference_points, 3) float32 or None.
    """
    inputs = np.empty((len(entries), points, 3), dtype=np.float32)
    refs = np.empty((len(entries), reference_points, 3), dtype=np.float32) if reference_points else None
    for row, entry in enumerate(entries):
        cloud = _read_cloud(entry.path)
        total = cloud.shape[0]
        boundary = split_boundary(total)
        if boundary < points or total - boundary < reference_points:
            need = f"`points={points}` input points from its train part [:{boundary}]"
            if reference_points:
                need += f" and `reference_points={reference_points}` from its test part [{boundary}:]"
            raise ValueError(
                f"{_WHERE}: {entry.path} holds {total} points, too few for {need} (train points are "
                f"[:10000] of 15000-point clouds, the first 2/3 of smaller ones); ask for fewer points."
            )
        if rng is not None:
            inputs[row] = cloud[rng.choice(boundary, size=points, replace=False)]
        else:
            inputs[row] = cloud[:points]
        if refs is not None:
            refs[row] = cloud[boundary:boundary + reference_points]
        if stats is not None:
            flat = cloud.astype(np.float64).ravel()
            flat_mean = float(flat.mean())
            squares = float(((flat - flat_mean) ** 2).sum())
            stats.append((total, cloud.mean(axis=0, dtype=np.float64), flat_mean, squares))
    return inputs, refs


def _combine_stats(stats: list[tuple[int, np.ndarray, float, float]]) -> Normalization:
    """PointFlow's global statistics from per-file ones (Chan et al.'s parallel variance).

    With file i holding P_i points, per-axis mean m_i, flat mean mu_i over its 3 P_i
    coordinates and flat sum of squared deviations M2_i:

        m = sum_i P_i m_i / sum_i P_i,    mu = sum_i P_i mu_i / sum_i P_i,
        s^2 = (sum_i M2_i + sum_i 3 P_i (mu_i - mu)^2) / (3 sum_i P_i).
    """
    counts = np.array([s[0] for s in stats], dtype=np.float64)
    axis_means = np.stack([s[1] for s in stats])
    flat_means = np.array([s[2] for s in stats])
    m2 = np.array([s[3] for s in stats])
    weights = counts / counts.sum()
    mean = weights @ axis_means
    flat_mean = weights @ flat_means
    variance = (m2.sum() + (3 * counts * (flat_means - flat_mean) ** 2).sum()) / (3 * counts.sum())
    std = np.sqrt(variance)
    if not std > 0:
        raise ValueError(f"{_WHERE}: the training clouds' coordinates have zero spread; cannot normalise them.")
    return Normalization(mean=mean.reshape(1, 3).astype(np.float32), std=np.reshape(std, (1, 1)).astype(np.float32))
