"""ShapeNetCore.v2.PC15k loading (PointFlow's order, split and statistics) and the synthetic stand-in.

Everything runs on tiny trees written here (a few clouds of a few hundred points per class);
PointFlow's behaviour is re-implemented independently in the tests (the seed-38383 shuffle,
the statistics over all points of the training clouds) and compared with the loader.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, stats

from fpn_jax.data import (
    SHAPENET_CATEGORIES,
    SYNTHETIC_CATEGORIES,
    Dataset,
    Normalization,
    load_shapenet,
    write_synthetic_shapenet,
)
from fpn_jax.data import synthetic_shapes as synth
from fpn_jax.data.shapenet import ShapeNetDataset, split_boundary

AIRPLANE, BAG, CHAIR, BIRDHOUSE = "02691156", "02773838", "03001627", "02843684"
SPLITS = ("train", "val", "test")


def make_tree(root: Path, sizes: dict[str, tuple[int, int, int]], *, points: int = 300, seed: int = 0) -> Path:
    """Writes ``<root>/<synset>/{train,val,test}/<id>.npy`` random (points, 3) float32 clouds.

    Class k's clouds are shifted by k along x and scaled by 1 + k, so the statistics are not trivial.
    """
    rng = np.random.default_rng(seed)
    for k, (synset, counts) in enumerate(sizes.items()):
        for folder, count in zip(SPLITS, counts, strict=True):
            directory = root / synset / folder
            directory.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                name = f"{rng.integers(16 ** 8):08x}"
                cloud = (rng.standard_normal((points, 3)) * (1 + k) + [k, 0.5, -0.25]).astype(np.float32)
                np.save(directory / f"{name}.npy", cloud)
    return root


def pointflow_order(root: Path, synsets: list[str], folder: str) -> list[tuple[int, Path]]:
    """PointFlow's Uniform15KPC order, re-implemented: gather per category, shuffle once with 38383."""
    gathered = []
    for label, synset in enumerate(synsets):
        for path in sorted((root / synset / folder).glob("*.npy")):
            gathered.append((label, path))
    shuffle_idx = list(range(len(gathered)))
    random.Random(38383).shuffle(shuffle_idx)
    return [gathered[i] for i in shuffle_idx]


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "pc15k", {AIRPLANE: (5, 2, 3), BAG: (3, 1, 2), CHAIR: (4, 2, 2)})


# ------------------------------------------------------------------ the category list


def test_the_category_list_is_pointflows():
    assert len(SHAPENET_CATEGORIES) == 55
    assert len({s for s, _ in SHAPENET_CATEGORIES}) == 55 and len({n for _, n in SHAPENET_CATEGORIES}) == 55
    assert SHAPENET_CATEGORIES[0] == ("02691156", "airplane")
    assert SHAPENET_CATEGORIES[1] == ("02773838", "bag")
    assert SHAPENET_CATEGORIES[10] == ("02747177", "can")
    assert SHAPENET_CATEGORIES[14] == ("03001627", "chair")
    assert SHAPENET_CATEGORIES[18] == ("04379243", "table")
    assert SHAPENET_CATEGORIES[20] == ("02946921", "tin_can")
    assert SHAPENET_CATEGORIES[50] == ("04530566", "vessel")
    assert SHAPENET_CATEGORIES[52] == ("02992529", "cellphone")
    assert SHAPENET_CATEGORIES[53] == ("02843684", "birdhouse")
    assert SHAPENET_CATEGORIES[54] == ("02871439", "bookshelf")
    synsets = {s for s, _ in SHAPENET_CATEGORIES}
    assert "02858304" not in synsets and "02834778" not in synsets  # boat, bicycle: commented out
    assert all(len(s) == 8 and s.isdigit() for s in synsets)


def test_split_boundary():
    assert split_boundary(15000) == 10000
    assert split_boundary(20000) == 10000
    assert split_boundary(300) == 200
    assert split_boundary(14999) == 9999


# ------------------------------------------------------------------ loading


def test_order_sizes_and_labels_follow_pointflow(tree):
    d = load_shapenet(tree, points=64)
    assert isinstance(d, ShapeNetDataset) and isinstance(d, Dataset)
    synsets = [AIRPLANE, BAG, CHAIR]  # PointFlow's order: airplane 0, bag 1, chair 14
    assert d.categories == ((AIRPLANE, "airplane"), (BAG, "bag"), (CHAIR, "chair"))
    assert d.num_classes == 3 and d.context_names == ("airplane", "bag", "chair") and d.value_range is None
    for split, folder, n in (("train", "train", 12), ("validation", "val", 5), ("test", "test", 7)):
        expected = pointflow_order(tree, synsets, folder)
        got = getattr(d, split)
        assert len(got) == n
        assert d.model_ids[split] == tuple(f"{p.parent.parent.name}/{folder}/{p.stem}" for _, p in expected)
        np.testing.assert_array_equal(got.labels, [label for label, _ in expected])
        assert got.labels.dtype == np.int32 and got.context.dtype == np.float32
        np.testing.assert_array_equal(got.context, np.eye(3, dtype=np.float32)[got.labels])
        assert got.inputs.shape == (n, 64, 3) and got.inputs.dtype == np.float32
        if split != "train":  # evaluation clouds: the first `points` train points
            raw = np.stack([np.load(p)[:64] for _, p in expected])
            np.testing.assert_allclose(got.inputs, d.normalization.apply(raw), rtol=1e-6, atol=1e-6)


def test_statistics_are_pointflows_over_all_points_of_the_training_clouds(tree):
    d = load_shapenet(tree, points=32)
    # PointFlow: all_points (N, 15000, 3) of the train split, before the [:10000] slice.
    all_points = np.concatenate([np.load(p)[None] for _, p in pointflow_order(tree, [AIRPLANE, BAG, CHAIR], "train")])
    mean = all_points.reshape(-1, 3).mean(axis=0).reshape(1, 3)
    std = all_points.reshape(-1).std(axis=0).reshape(1, 1)
    assert d.normalization.mean.shape == (1, 3) and d.normalization.std.shape == (1, 1)
    np.testing.assert_allclose(d.normalization.mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d.normalization.std, std, rtol=1e-5)
    x = d.test.inputs
    np.testing.assert_allclose(d.normalization.apply(d.normalization.invert(x)), x, atol=1e-5)
    raw = np.random.default_rng(1).normal(size=(4, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(d.normalization.invert(d.normalization.apply(raw)), raw, atol=1e-5)


def test_train_points_are_a_seeded_subset_of_the_train_part(tree):
    d = load_shapenet(tree, points=50, reference_points=40)
    expected = pointflow_order(tree, [AIRPLANE, BAG, CHAIR], "train")
    raw_inputs = d.normalization.invert(d.train.inputs)
    for row, (_, path) in enumerate(expected):
        cloud = np.load(path)
        train_part = cloud[:200]  # the first 2/3 of a 300-point cloud
        distances = np.linalg.norm(raw_inputs[row][:, None] - train_part[None], axis=-1)
        match = distances.argmin(axis=1)
        assert distances.min(axis=1).max() < 1e-4  # every point comes from cloud[:200]
        assert len(set(match.tolist())) == 50  # without replacement
        np.testing.assert_allclose(d.normalization.invert(d.reference["train"][row]), cloud[200:240], atol=1e-5)
    again = load_shapenet(tree, points=50, reference_points=40)
    other = load_shapenet(tree, points=50, seed=1)
    np.testing.assert_array_equal(again.train.inputs, d.train.inputs)
    np.testing.assert_array_equal(again.validation.inputs, d.validation.inputs)
    assert not np.array_equal(other.train.inputs, d.train.inputs)
    np.testing.assert_array_equal(other.test.inputs, d.test.inputs)
    assert other.reference is None and set(d.reference) == {"train", "validation", "test"}


def test_a_pc15k_sized_cloud_splits_at_10000(tmp_path):
    root = make_tree(tmp_path / "big", {AIRPLANE: (1, 1, 1)}, points=15000)
    d = load_shapenet(root, points=2048, reference_points=2048)
    cloud = np.load(next((root / AIRPLANE / "test").glob("*.npy")))
    np.testing.assert_allclose(d.normalization.invert(d.test.inputs[0]), cloud[:2048], atol=1e-5)
    np.testing.assert_allclose(d.normalization.invert(d.reference["test"][0]), cloud[10000:12048], atol=1e-5)
    with pytest.raises(ValueError, match=r"holds 15000 points.*reference_points=5001"):
        load_shapenet(root, points=2048, reference_points=5001)


def test_given_normalization_arrays_or_npy_paths(tree, tmp_path):
    mean, std = np.array([[[0.1, -0.2, 0.3]]], np.float32), np.array([[[2.0]]], np.float32)
    np.save(tmp_path / "train_set_mean.npy", mean)
    np.save(tmp_path / "train_set_std.npy", std)
    for given in ((mean, std), Normalization(mean, std),
                  (tmp_path / "train_set_mean.npy", str(tmp_path / "train_set_std.npy"))):
        d = load_shapenet(tree, points=16, normalization=given)
        assert d.normalization.mean.shape == (1, 3) and d.normalization.std.shape == (1, 1)
        first = np.load(pointflow_order(tree, [AIRPLANE, BAG, CHAIR], "val")[0][1])[:16]
        np.testing.assert_allclose(d.validation.inputs[0], (first - mean[0]) / 2.0, rtol=1e-6, atol=1e-6)


def test_category_selection(tree):
    # None: the folders present, in PointFlow's order; explicit lists keep their order.
    shutil_tree = make_tree(tree.parent / "two", {BIRDHOUSE: (2, 1, 1), AIRPLANE: (2, 1, 1)})
    d = load_shapenet(shutil_tree, points=8)
    assert d.context_names == ("airplane", "birdhouse")
    d = load_shapenet(tree, categories=["chair", AIRPLANE], points=8)
    assert d.categories == ((CHAIR, "chair"), (AIRPLANE, "airplane")) and d.num_classes == 2
    expected = pointflow_order(tree, [CHAIR, AIRPLANE], "test")
    np.testing.assert_array_equal(d.test.labels, [label for label, _ in expected])
    d = load_shapenet(tree, categories=[(BAG, "my bag")], points=8)
    assert d.context_names == ("my bag",) and len(d.train) == 3
    d = load_shapenet(tree, categories="bag", points=8)
    assert d.context_names == ("bag",)


def test_validation_as_a_fraction_of_train(tree):
    d = load_shapenet(tree, points=16, validation=0.25)
    order = pointflow_order(tree, [AIRPLANE, BAG, CHAIR], "train")
    assert len(d.train) == 9 and len(d.validation) == 3 and len(d.test) == 7
    assert d.model_ids["validation"] == tuple(f"{p.parent.parent.name}/train/{p.stem}" for _, p in order[-3:])
    kept = np.concatenate([np.load(p)[None] for _, p in order[:-3]])
    np.testing.assert_allclose(d.normalization.std, kept.reshape(-1).std().reshape(1, 1), rtol=1e-5)


def _remove_val(root):
    for p in (root / BAG / "val").iterdir():
        p.unlink()
    (root / BAG / "val").rmdir()


def _first(root, folder="train", synset=AIRPLANE):
    return sorted((root / synset / folder).glob("*.npy"))[0]


ERRORS = {
    "missing root": (lambda r: r / "nowhere", {}, FileNotFoundError, "does not exist"),
    "root is a file": (lambda r: (r / "f.txt").write_text("x") and r / "f.txt", {}, FileNotFoundError, "not a folder"),
    "no synset folders": (lambda r: (r / "empty").mkdir() or r / "empty", {}, FileNotFoundError, "no synset folders"),
    "missing split folder": (lambda r: _remove_val(r) or r, {}, FileNotFoundError, rf"{BAG}/val is missing"),
    "unknown synset folder": (
        lambda r: (r / "12345678" / "train").mkdir(parents=True) or r, {}, ValueError, r"unknown synset.*12345678"
    ),
    "missing category folder": (lambda r: r, {"categories": ["sofa"]}, FileNotFoundError, r"missing.*04256520"),
    "unknown category name": (lambda r: r, {"categories": ["dragon"]}, ValueError, "'dragon'"),
    "repeated category": (lambda r: r, {"categories": ["bag", BAG]}, ValueError, "repeats"),
    "not (N, 3)": (
        lambda r: np.save(_first(r), np.zeros((300, 2), np.float32)) or r, {}, ValueError, r"\(P, 3\).*\(300, 2\)"
    ),
    "not float": (lambda r: np.save(_first(r), np.zeros((300, 3), np.int64)) or r, {}, ValueError, "dtype int64"),
    "NaN points": (
        lambda r: np.save(_first(r, "test"), np.where(np.arange(900).reshape(300, 3) == 31, np.nan, 0.0)) or r,
        {}, ValueError, r"NaN or infinite.*row 10",
    ),
    "fewer points than asked for": (lambda r: r, {"points": 201}, ValueError, r"holds 300 points.*points=201"),
    "a short file": (
        lambda r: np.save(_first(r, "val", CHAIR), np.zeros((30, 3), np.float32)) or r, {"points": 64},
        ValueError, "holds 30 points",
    ),
    "unreadable .npy": (
        lambda r: _first(r).write_bytes(b"not a numpy file") and r, {}, ValueError, "cannot read.*as .npy"
    ),
    "truncated .npy": (
        lambda r: _first(r).write_bytes(_first(r).read_bytes()[:200]) and r, {}, ValueError, "cannot read"
    ),
    "empty split": (
        lambda r: [p.unlink() for p in (r / AIRPLANE / "test").iterdir()] and r, {"categories": ["airplane"]},
        ValueError, "'test' split has no .npy files",
    ),
    "bad points": (lambda r: r, {"points": 0}, ValueError, "`points` must be an integer >= 1"),
    "bad validation": (lambda r: r, {"validation": 1.5}, ValueError, "`validation`"),
    "bad normalization": (
        lambda r: r, {"normalization": (np.zeros(3), np.zeros(1))}, ValueError, "std must be positive"
    ),
    "bad normalization shape": (
        lambda r: r, {"normalization": (np.zeros(2), np.ones(1))}, ValueError, r"mean must hold 3.*\(2,\)"
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_named_errors(tree, case):
    prepare, kwargs, error, pattern = ERRORS[case]
    root = prepare(tree)
    with pytest.raises(error, match=pattern):
        load_shapenet(root, **{"points": 16, **kwargs})


# ------------------------------------------------------------------ the synthetic stand-in


SMALL = {"airplane": 4, "box": 3, "cylinder": 3, "ellipsoid": 3, "capsule": 3, "cone": 3, "sphere": 3, "torus": 5}


def test_default_counts_are_long_tailed():
    counts = list(synth.SYNTHETIC_DEFAULT_COUNTS.values())
    assert len(SYNTHETIC_CATEGORIES) >= 8 and len(counts) == len(SYNTHETIC_CATEGORIES)
    assert counts == sorted(counts, reverse=True) and counts[0] >= 10 * counts[-1] and counts[-1] >= 40
    assert 1500 <= sum(counts) <= 2500
    names = {n for _, n in SYNTHETIC_CATEGORIES}
    assert {"sphere", "box", "cylinder", "cone", "torus", "capsule", "airplane", "ellipsoid"} <= names
    assert not {s for s, _ in SYNTHETIC_CATEGORIES} & {s for s, _ in SHAPENET_CATEGORIES}


def test_synthetic_tree_counts_determinism_and_loading(tmp_path):
    root = write_synthetic_shapenet(tmp_path / "a", counts=SMALL, points_per_cloud=120, seed=3, splits=(1, 1, 1))
    for synset, name in SYNTHETIC_CATEGORIES:
        per_split = [len(list((root / synset / f).glob("*.npy"))) for f in SPLITS]
        assert sum(per_split) == SMALL[name] and min(per_split) >= 1
        cloud = np.load(next((root / synset / "train").glob("*.npy")))
        assert cloud.shape == (120, 3) and cloud.dtype == np.float32
    manifest = json.loads((root / synth.MANIFEST).read_text())
    assert len(manifest["shapes"]) == sum(SMALL.values())
    # Determinism: the same seed writes the same bytes, another seed other clouds.
    again = write_synthetic_shapenet(tmp_path / "b", counts=SMALL, points_per_cloud=120, seed=3, splits=(1, 1, 1))
    files = sorted(p.relative_to(root) for p in root.rglob("*.npy"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.npy"))
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = write_synthetic_shapenet(tmp_path / "c", counts=SMALL, points_per_cloud=120, seed=4, splits=(1, 1, 1))
    assert sorted(p.relative_to(other) for p in other.rglob("*.npy")) != files
    # Loading: the same layout as PC15k, P < 15000 -> the first 2/3 are train points.
    d = load_shapenet(root, categories=SYNTHETIC_CATEGORIES, points=80)
    assert d.num_classes == 8 and len(d.train) + len(d.validation) + len(d.test) == sum(SMALL.values())
    assert np.bincount(np.concatenate([d.train.labels, d.validation.labels, d.test.labels])).tolist() == list(
        SMALL.values()
    )
    with pytest.raises(ValueError, match="holds 120 points"):
        load_shapenet(root, categories=SYNTHETIC_CATEGORIES, points=81)
    with pytest.raises(ValueError, match=r"unknown synset.*90000001.*SYNTHETIC_CATEGORIES"):
        load_shapenet(root, points=8)


def test_synthetic_tree_is_reused_or_refused(tmp_path):
    kwargs = {"counts": {"sphere": 3, "box": 3}, "points_per_cloud": 30, "splits": (1, 1, 1)}
    root = write_synthetic_shapenet(tmp_path / "s", **kwargs)
    stamp = (root / synth.MANIFEST).stat().st_mtime_ns
    assert write_synthetic_shapenet(root, **kwargs) == root
    assert (root / synth.MANIFEST).stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="other arguments"):
        write_synthetic_shapenet(root, **{**kwargs, "seed": 1})
    write_synthetic_shapenet(root, **{**kwargs, "seed": 1}, overwrite=True)
    assert json.loads((root / synth.MANIFEST).read_text())["config"]["seed"] == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_synthetic_shapenet(tmp_path / "other", **kwargs, overwrite=True)
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("kwargs, pattern", [
    ({"counts": {"dragon": 3}}, "unknown class"),
    ({"counts": {"sphere": -1}}, r"counts\['sphere'\]"),
    ({"counts": {"sphere": 2}}, "fewer than the 3 splits"),
    ({"counts": [1, 2]}, "`counts` must be"),
    ({"splits": (0, 1, 1)}, "`splits`"),
    ({"points_per_cloud": 2}, "`points_per_cloud`"),
    ({"rotation": "tilt"}, "`rotation`"),
])
def test_synthetic_argument_errors(tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        write_synthetic_shapenet(tmp_path / "x", **kwargs)


def test_split_allocation():
    assert synth._allocate(40, (0.7, 0.1, 0.2), "x") == [28, 4, 8]
    assert synth._allocate(3, (0.7, 0.1, 0.2), "x") == [1, 1, 1]
    assert synth._allocate(5, (1.0, 0.0, 0.0), "x") == [5, 0, 0]
    assert sum(synth._allocate(131, (0.7, 0.1, 0.2), "x")) == 131


# Distance of canonical-frame points to each class's surface (0 on the surface).
def _residual(name, p, q):
    rho = np.hypot(p[:, 0], p[:, 1])
    z = p[:, 2]
    if name == "sphere":
        return np.abs(np.linalg.norm(p, axis=1) - q["radius"])
    if name == "ellipsoid":
        return np.abs(np.sum((p / q["axes"]) ** 2, axis=1) - 1)
    if name == "box":
        return np.abs(np.max(np.abs(p) / q["half_extents"], axis=1) - 1)
    if name == "cylinder":
        r, h = q["radius"], q["half_height"]
        side = np.abs(rho - r) + np.maximum(np.abs(z) - h, 0)
        cap = np.abs(np.abs(z) - h) + np.maximum(rho - r, 0)
        return np.minimum(side, cap)
    if name == "cone":
        r, height = q["radius"], q["height"]
        side = np.abs(rho - r * (height / 2 - z) / height) + np.maximum(np.abs(z) - height / 2, 0)
        base = np.abs(z + height / 2) + np.maximum(rho - r, 0)
        return np.minimum(side, base)
    if name == "torus":
        return np.abs(np.hypot(rho - q["major"], z) - q["minor"])
    if name == "capsule":
        axis_point = np.clip(z, -q["half_length"], q["half_length"])
        return np.abs(np.hypot(rho, z - axis_point) - q["radius"])
    raise AssertionError(name)


@pytest.mark.parametrize("name", [n for _, n in SYNTHETIC_CATEGORIES if n != "airplane"])
def test_synthetic_points_lie_on_the_surfaces(name):
    rng = np.random.default_rng(7)
    for rotation in ("full", "yaw"):
        cloud, params = synth.synthetic_shape(name, 2000, rng, rotation=rotation)
        rot = np.array(params["rotation"])
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        assert np.isclose(np.linalg.det(rot), 1.0)
        local = cloud @ rot
        assert _residual(name, local, params).max() < 1e-9
        assert np.linalg.norm(cloud, axis=1).max() <= 0.5 + 1e-9  # within the ball of radius s <= 0.5
        if rotation == "yaw":  # the canonical z axis is PC15k's up axis y
            np.testing.assert_allclose(rot[:, 2], [0, 1, 0], atol=1e-12)


def test_airplane_points_lie_on_the_outer_surface_of_its_parts():
    cloud, params = synth.synthetic_shape("airplane", 4000, np.random.default_rng(1), rotation="none")
    p = cloud @ np.array(params["rotation"])
    assert np.linalg.norm(cloud, axis=1).max() <= 0.5 + 1e-9
    length, w, t = params["length"], params["fuselage_radius"], params["thickness"]
    fuselage = np.array([length, w, w])
    boxes = [
        ((params["wing_offset"], 0, 0), (params["wing_chord"], params["wing_span"], t)),
        ((-0.8 * length, 0, 0), (params["tail_chord"], params["tail_span"], t)),
        ((-0.8 * length, 0, params["fin_height"] / 2), (params["tail_chord"], t, params["fin_height"] / 2)),
    ]
    level = np.sum((p / fuselage) ** 2, axis=1)
    box_level = [np.max(np.abs(p - np.array(c)) / np.array(h), axis=1) for c, h in boxes]
    on_surface = np.isclose(level, 1, atol=1e-9) | np.any([np.isclose(b, 1, atol=1e-9) for b in box_level], axis=0)
    inside = (level < 1 - 1e-6) | np.any([b < 1 - 1e-6 for b in box_level], axis=0)
    assert on_surface.all() and not inside.any()
    on_fuselage = np.isclose(level, 1, atol=1e-9)
    assert 0.2 < on_fuselage.mean() < 0.9
    # Rows are in random order: both halves hold the parts in the same proportions.
    assert abs(on_fuselage[:2000].mean() - on_fuselage[2000:].mean()) < 0.05


def _chi2_pvalue(counts, expected_fractions):
    counts = np.asarray(counts, dtype=float)
    expected = np.asarray(expected_fractions, dtype=float)
    return stats.chisquare(counts, counts.sum() * expected / expected.sum()).pvalue


def test_box_faces_receive_points_in_proportion_to_their_areas():
    h = np.array([0.5, 0.2, 0.05])
    p = synth.sample_box(np.random.default_rng(0), 60_000, h)
    face = np.argmax(np.abs(p) / h, axis=1) * 2 + (p[np.arange(len(p)), np.argmax(np.abs(p) / h, axis=1)] > 0)
    areas = np.repeat([h[1] * h[2], h[0] * h[2], h[0] * h[1]], 2)
    assert _chi2_pvalue(np.bincount(face, minlength=6), areas) > 1e-3
    # Within a face the points are uniform: the big face's x is uniform on [-0.5, 0.5].
    top = p[np.isclose(np.abs(p[:, 2]), 0.05)]
    assert _chi2_pvalue(np.histogram(top[:, 0], bins=10, range=(-0.5, 0.5))[0], np.ones(10)) > 1e-3


def test_sphere_and_ellipsoid_are_uniform_by_area():
    rng = np.random.default_rng(1)
    # Archimedes: on a sphere z is uniform on [-r, r].
    z = synth.sample_sphere(rng, 40_000, 0.4)[:, 2]
    assert _chi2_pvalue(np.histogram(z, bins=16, range=(-0.4, 0.4))[0], np.ones(16)) > 1e-3
    # A prolate spheroid (a = b < c): the area of the band [z0, z1] is the integral of
    # 2 pi sqrt(a^2 (1 - z^2 / c^2) + a^4 z^2 / c^4) dz.
    a, c = 0.1, 0.45
    z = synth.sample_ellipsoid(rng, 40_000, (a, a, c))[:, 2]
    edges = np.linspace(-c, c, 13)
    band = [integrate.quad(lambda s: math.sqrt(a * a * (1 - s * s / c / c) + a ** 4 * s * s / c ** 4), lo, hi)[0]
            for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    assert _chi2_pvalue(np.histogram(z, bins=edges)[0], band) > 1e-3
    # ... and not merely uniform in the sphere's parameter (that would fail the same test).
    naive = (synth.sample_sphere(rng, 40_000, 1.0) * [a, a, c])[:, 2]
    assert _chi2_pvalue(np.histogram(naive, bins=edges)[0], band) < 1e-6


def test_torus_cylinder_cone_and_capsule_parts_are_weighted_by_area():
    rng = np.random.default_rng(2)
    big, small = 0.3, 0.12
    p = synth.sample_torus(rng, 40_000, big, small)
    outer = np.hypot(p[:, 0], p[:, 1]) > big
    expected = (math.pi * big + 2 * small) / (2 * math.pi * big)
    assert abs(outer.mean() - expected) < 4 * math.sqrt(expected * (1 - expected) / len(p))
    theta = np.arctan2(p[:, 2], np.hypot(p[:, 0], p[:, 1]) - big)
    edges = np.linspace(-math.pi, math.pi, 13)
    lo, hi = edges[:-1], edges[1:]
    band = big * (hi - lo) + small * (np.sin(hi) - np.sin(lo))
    assert _chi2_pvalue(np.histogram(theta, bins=edges)[0], band) > 1e-3

    def fraction_ok(mask, expected):
        return abs(mask.mean() - expected) < 4 * math.sqrt(expected * (1 - expected) / mask.size)

    r, h = 0.2, 0.3
    p = synth.sample_cylinder(rng, 40_000, r, h)
    assert fraction_ok(np.isclose(np.abs(p[:, 2]), h), r / (r + 2 * h))
    r, height = 0.3, 0.4
    p = synth.sample_cone(rng, 40_000, r, height)
    base = np.isclose(p[:, 2], -height / 2)
    assert fraction_ok(base, r / (r + math.hypot(r, height)))
    # Lateral surface: the fraction within t of the slant from the apex is t^2.
    t = (height / 2 - p[~base, 2]) / height
    assert _chi2_pvalue(np.histogram(t, bins=10, range=(0, 1))[0], np.diff(np.linspace(0, 1, 11) ** 2)) > 1e-3
    r, h = 0.15, 0.25
    p = synth.sample_capsule(rng, 40_000, r, h)
    assert fraction_ok(np.abs(p[:, 2]) > h, r / (r + h))


def _features(cloud):
    """Rotation- and scale-invariant statistics: PCA spectrum and the radial profile."""
    centred = cloud - cloud.mean(axis=0)
    eig = np.sort(np.linalg.eigvalsh(np.cov(centred.T)))[::-1]
    radius = np.linalg.norm(centred, axis=1)
    radius = radius / radius.mean()
    return np.concatenate([eig / eig.sum(), np.percentile(radius, [2, 10, 25, 50, 75, 90, 98]), [radius.std()]])


def test_classes_are_separable_by_simple_statistics():
    names = [n for _, n in SYNTHETIC_CATEGORIES]
    rng = np.random.default_rng(5)
    feats, labels = [], []
    for label, name in enumerate(names):
        for _ in range(16):
            cloud, _ = synth.synthetic_shape(name, 600, rng, rotation="full")
            feats.append(_features(cloud))
            labels.append(label)
    feats, labels = np.array(feats), np.array(labels)
    train = np.arange(len(labels)) % 2 == 0
    mu, sd = feats[train].mean(0), feats[train].std(0) + 1e-9
    z = (feats - mu) / sd
    centroids = np.stack([z[train & (labels == k)].mean(0) for k in range(len(names))])
    predicted = np.argmin(((z[~train][:, None] - centroids) ** 2).sum(-1), axis=1)
    accuracy = (predicted == labels[~train]).mean()
    assert accuracy > 0.6, accuracy  # chance is 1/8
