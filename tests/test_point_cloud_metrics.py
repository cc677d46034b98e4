"""PointFlow's point-cloud metrics (fpn_jax.evaluation.point_clouds) against brute-force NumPy/SciPy."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from fpn_jax.evaluation import point_clouds as pc


def clouds(seed: int, count: int, points: int, kind: str = "uniform") -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.uniform(-0.5, 0.5, (count, points, 3)).astype(np.float32)
    if kind == "gauss":
        return (0.3 * rng.normal(size=(count, points, 3)) + 0.1).astype(np.float32)
    x = rng.normal(size=(count, points, 3))  # sphere surface, slightly squashed
    return (0.4 * x / np.linalg.norm(x, axis=-1, keepdims=True) * [1.0, 0.8, 1.1]).astype(np.float32)


def chamfer_np(a: np.ndarray, b: np.ndarray) -> float:
    d = ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)
    return d.min(axis=1).mean() + d.min(axis=0).mean()


def emd_brute(a: np.ndarray, b: np.ndarray) -> float:
    cost = np.sqrt(((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1))
    n = len(a)
    return min(cost[np.arange(n), list(p)].mean() for p in itertools.permutations(range(n)))


# --------------------------------------------------------------------------------------------
# Per-pair distances
# --------------------------------------------------------------------------------------------


def test_chamfer_matches_brute_force():
    a, b = clouds(0, 4, 50), clouds(1, 4, 37, "gauss")
    got = np.asarray(pc.chamfer(a, b))
    want = np.array([chamfer_np(x, y) for x, y in zip(a, b, strict=True)])
    assert got.shape == (4,)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(pc.chamfer(b, a)), want, rtol=1e-5)  # symmetric
    assert np.all(np.asarray(pc.chamfer(a, a)) < 1e-6)
    # shifted far from the origin: centring keeps float32 accurate
    np.testing.assert_allclose(np.asarray(pc.chamfer(a + 20.0, b + 20.0)), want, rtol=1e-3)


def test_chamfer_under_jit():
    a, b = clouds(0, 2, 16), clouds(1, 2, 16)
    np.testing.assert_allclose(np.asarray(jax.jit(pc.chamfer)(a, b)), np.asarray(pc.chamfer(a, b)), rtol=1e-6)


def test_emd_exact_matches_permutations_and_scipy():
    rng = np.random.default_rng(3)
    for n in (1, 2, 4, 6):
        a, b = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
        assert pc.emd_exact(a, b) == pytest.approx(emd_brute(a, b), rel=1e-12)
    a, b = clouds(4, 2, 90)
    cost = np.sqrt(((a[:, None].astype(np.float64) - b[None]) ** 2).sum(-1))
    rows, cols = linear_sum_assignment(cost)
    assert pc.emd_exact(a, b) == pytest.approx(cost[rows, cols].mean(), rel=1e-12)
    assert pc.emd_exact(a, a[::-1]) == 0.0  # a permutation of the same points
    assert pc.emd_exact(a, b) == pytest.approx(pc.emd_exact(b, a), rel=1e-12)


# Measured with the defaults (300 iterations, epsilon 2e-3, decay 0.96): lower bound within
# 0.6 % of the exact EMD for 64-256 points (0.1 % up to 128), upper bound within 4.5 % (2 % up to 128).
LOWER_RTOL, UPPER_RTOL = 0.01, 0.05


@pytest.mark.parametrize("kind,points", [("uniform", 64), ("gauss", 96), ("sphere", 128)])
def test_emd_approx_against_exact(kind, points):
    a, b = clouds(10 + points, 4, points, kind), clouds(20 + points, 4, points, "uniform")
    lower, upper = (np.asarray(x, np.float64) for x in pc.emd_approx(a, b, return_bounds=True))
    exact = np.array([pc.emd_exact(x, y) for x, y in zip(a, b, strict=True)])
    np.testing.assert_array_equal(lower, np.asarray(pc.emd_approx(a, b)))
    assert np.all(lower <= exact * (1 + 1e-5)), (lower, exact)  # certified bounds
    assert np.all(upper >= exact * (1 - 1e-5)), (upper, exact)
    assert np.max(np.abs(lower / exact - 1)) < LOWER_RTOL
    assert np.max(upper / exact - 1) < UPPER_RTOL


def test_emd_approx_identical_and_permuted_clouds():
    a = clouds(5, 3, 100)
    np.testing.assert_array_equal(np.asarray(pc.emd_approx(a, a)), 0.0)
    perm = np.random.default_rng(0).permutation(100)
    np.testing.assert_array_equal(np.asarray(pc.emd_approx(a, a[:, perm])), 0.0)
    _, upper = pc.emd_approx(a, a, return_bounds=True)
    assert np.all(np.asarray(upper) < 1e-4)


def test_emd_approx_is_scale_invariant():
    a, b = clouds(6, 2, 64), clouds(7, 2, 64)
    scaled = np.asarray(pc.emd_approx(3.0 * a, 3.0 * b))
    np.testing.assert_allclose(scaled, 3.0 * np.asarray(pc.emd_approx(a, b)), rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Pairwise matrices
# --------------------------------------------------------------------------------------------


def test_pairwise_cd_equals_per_pair_and_ignores_batch_size():
    s, r = clouds(8, 5, 40), clouds(9, 4, 30)
    want = np.array([[chamfer_np(x, y) for y in r] for x in s])
    for batch_size in (1, 3, 7, 64):
        got = pc.pairwise_distances(s, r, "cd", batch_size=batch_size)
        assert got.shape == (5, 4) and got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-5)
    small, large = pc.pairwise_distances(s, r, batch_size=3), pc.pairwise_distances(s, r, batch_size=64)
    np.testing.assert_allclose(small, large, rtol=1e-6)
    # samples against themselves: the upper triangle, mirrored, diagonal 0
    own = pc.pairwise_distances(s, None, "cd", batch_size=4)
    want_own = np.array([[chamfer_np(x, y) for y in s] for x in s])
    np.testing.assert_allclose(own, want_own, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.diag(own), 0.0)
    np.testing.assert_array_equal(own, own.T)
    assert pc.pairwise_distances(s[:1], None).shape == (1, 1)


def test_pairwise_emd_equals_per_pair_and_ignores_batch_size():
    s, r = clouds(11, 4, 32), clouds(12, 3, 32, "gauss")
    options = {"num_iters": 200}
    want = np.array([[float(pc.emd_approx(x[None], y[None], **options)[0]) for y in r] for x in s])
    for batch_size in (1, 5, 16):
        got = pc.pairwise_distances(s, r, "emd", batch_size=batch_size, emd_options=options)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    exact = pc.pairwise_distances(s, r, "emd_exact", batch_size=2)
    np.testing.assert_allclose(exact, [[pc.emd_exact(x, y) for y in r] for x in s], rtol=1e-12)
    assert np.all(np.abs(want / exact - 1) < LOWER_RTOL)
    own = pc.pairwise_distances(s, None, "emd", batch_size=4, emd_options=options)
    np.testing.assert_array_equal(np.diag(own), 0.0)
    np.testing.assert_allclose(own[0, 1], float(pc.emd_approx(s[:1], s[1:2], **options)[0]), rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Set metrics
# --------------------------------------------------------------------------------------------


def mmd_np(d):
    return np.mean([min(d[s, r] for s in range(d.shape[0])) for r in range(d.shape[1])])


def cov_np(d):
    return len({int(np.argmin(row)) for row in d}) / d.shape[1]


def nna_np(d_ss, d_rr, d_sr):
    """Straight from the definition: pooled set, leave-one-out nearest neighbour, ties to references."""
    s_count, r_count = d_sr.shape
    items = [("r", i) for i in range(r_count)] + [("s", i) for i in range(s_count)]

    def dist(x, y):
        (kx, ix), (ky, iy) = x, y
        if kx == ky == "r":
            return d_rr[ix, iy]
        if kx == ky == "s":
            return d_ss[ix, iy]
        return d_sr[ix, iy] if kx == "s" else d_sr[iy, ix]

    correct = 0
    for k, item in enumerate(items):
        others = [(dist(item, other), j) for j, other in enumerate(items) if j != k]
        nearest = items[min(others)[1]]
        correct += nearest[0] == item[0]
    return correct / len(items)


@pytest.mark.parametrize("s_count,r_count", [(7, 5), (4, 9), (6, 6)])
def test_set_metrics_match_numpy(s_count, r_count):
    rng = np.random.default_rng(s_count * 10 + r_count)
    d_sr = rng.uniform(size=(s_count, r_count))
    d_ss = rng.uniform(size=(s_count, s_count))
    d_ss = d_ss + d_ss.T
    d_rr = rng.uniform(size=(r_count, r_count))
    d_rr = d_rr + d_rr.T
    assert pc.mmd(d_sr) == pytest.approx(mmd_np(d_sr))
    assert pc.coverage(d_sr) == pytest.approx(cov_np(d_sr))
    assert pc.one_nn_accuracy(d_ss, d_rr, d_sr) == pytest.approx(nna_np(d_ss, d_rr, d_sr))


def test_ties_in_coverage_and_1nna():
    d_sr = np.array([[1.0, 1.0], [1.0, 1.0]])
    assert pc.coverage(d_sr) == 0.5  # both samples pick reference 0
    zeros = np.zeros((2, 2))
    # every distance 0: each cloud's nearest is the first other one in pooled order (a reference)
    assert pc.one_nn_accuracy(zeros, zeros, zeros) == pytest.approx(nna_np(zeros, zeros, zeros)) == 0.5


def test_identical_sets_give_full_coverage_and_zero_1nna():
    x = clouds(13, 6, 48)
    d = pc.pairwise_distances(x, x, "cd")
    d_own = pc.pairwise_distances(x, None, "cd")
    assert pc.mmd(d) == pytest.approx(0.0, abs=1e-6)
    assert pc.coverage(d) == 1.0
    assert pc.one_nn_accuracy(d_own, d_own, d) == 0.0
    results = pc.generation_metrics(x, x, ("cd", "emd"), progress=False, emd_options={"num_iters": 100})
    assert results["COV-CD"] == results["COV-EMD"] == 1.0
    assert results["1-NNA-CD"] == results["1-NNA-EMD"] == 0.0
    assert results["MMD-EMD"] == 0.0 and results["JSD"] == 0.0


def test_generation_metrics_keys_and_separated_sets():
    s = clouds(14, 5, 32)
    r = clouds(15, 6, 32) * 0.5 + 0.25  # a different distribution
    results = pc.generation_metrics(s, r, ("cd", "emd_exact"), batch_size=8, progress=False)
    assert set(results) == {"MMD-CD", "COV-CD", "1-NNA-CD", "MMD-EMD-exact", "COV-EMD-exact", "1-NNA-EMD-exact", "JSD"}
    d_sr = pc.pairwise_distances(s, r, "cd")
    assert results["MMD-CD"] == pytest.approx(pc.mmd(d_sr))
    assert results["1-NNA-CD"] == 1.0 and results["1-NNA-EMD-exact"] == 1.0
    assert 0.0 < results["JSD"] <= 1.0
    only_cd = pc.generation_metrics(s, r, "cd", progress=False, jsd_resolution=0)
    assert set(only_cd) == {"MMD-CD", "COV-CD", "1-NNA-CD"}


# --------------------------------------------------------------------------------------------
# JSD
# --------------------------------------------------------------------------------------------


def test_occupancy_grid_like_pointflow():
    grid = pc._sphere_grid(28)
    ticks = np.float32(np.arange(28) / 27 - 0.5)
    full = np.array(list(itertools.product(ticks, ticks, ticks)), np.float32)
    assert grid.shape == (int(np.sum(np.linalg.norm(full, axis=1) <= 0.5)), 3)
    x = clouds(16, 3, 200)
    counts = pc.occupancy_counts(x)
    assert counts.shape == (grid.shape[0],) and counts.sum() == 600
    # nearest kept cell, by brute force
    cells = np.argmin(((x.reshape(-1, 1, 3).astype(np.float64) - grid[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(counts, np.bincount(cells, minlength=grid.shape[0]))


def test_jsd_properties():
    a, b = clouds(17, 8, 256), clouds(18, 5, 300, "gauss")
    assert pc.jsd(a, a) == 0.0
    assert pc.jsd(a, a[::-1, ::-1]) == 0.0  # order of clouds and points does not matter
    forward, backward = pc.jsd(a, b), pc.jsd(b, a)
    assert forward == backward and 0.0 < forward <= 1.0  # bits: at most log2(2) = 1
    # against the entropy form PointFlow also computes, H(M) - (H(P) + H(Q)) / 2
    p, q = pc.occupancy_counts(a), pc.occupancy_counts(b)
    p, q = p / p.sum(), q / q.sum()

    def entropy(x):
        x = x[x > 0]
        return -np.sum(x * np.log2(x))

    assert forward == pytest.approx(entropy((p + q) / 2) - (entropy(p) + entropy(q)) / 2, abs=1e-9)
    # disjoint supports: the maximum, 1 bit
    left = np.full((2, 10, 3), -0.3, np.float32)
    right = np.full((2, 10, 3), 0.25, np.float32)
    assert pc.jsd(left, right) == pytest.approx(1.0)
    assert pc.jsd(a, 0.5 * a) > pc.jsd(a, 0.95 * a) > 0.0


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_errors_are_named():
    a = clouds(19, 2, 10)
    with pytest.raises(ValueError, match=r"chamfer: argument `a` must be an array of point clouds of shape \(S, N"):
        pc.chamfer(a[0], a[0])
    with pytest.raises(ValueError, match=r"chamfer: argument `b` must be an array of point clouds"):
        pc.chamfer(a, a[..., :2])
    with pytest.raises(ValueError, match=r"chamfer: arguments `a` and `b` must hold the same number of clouds"):
        pc.chamfer(a, a[:1])
    bad = a.copy()
    bad[1, 3, 0] = np.nan
    with pytest.raises(ValueError, match=r"chamfer: argument `b` must hold finite values; row 1 of 2 has NaN"):
        pc.chamfer(a, bad)
    with pytest.raises(ValueError, match=r"pairwise_distances: argument `references` must hold finite values"):
        pc.pairwise_distances(a, np.where(np.isnan(bad), np.inf, bad))
    with pytest.raises(ValueError, match=r"must be a floating-point array"):
        pc.chamfer(a.astype(np.int32), a)
    with pytest.raises(ValueError, match=r"emd_exact: the EMD needs clouds with equal point counts"):
        pc.emd_exact(a[0], a[1, :5])
    with pytest.raises(ValueError, match=r"emd_exact: argument `a` must be an array of point clouds of shape \(N, 3\)"):
        pc.emd_exact(a, a)
    with pytest.raises(ValueError, match=r"emd_approx: the EMD needs clouds with equal point counts"):
        pc.emd_approx(a, a[:, :5])
    with pytest.raises(ValueError, match=r"emd_approx: `epsilon` must be a number in \(0, 1\]"):
        pc.emd_approx(a, a, epsilon=0.0)
    with pytest.raises(ValueError, match=r"emd_approx: `num_iters` must be an integer >= 1"):
        pc.emd_approx(a, a, num_iters=0)
    with pytest.raises(ValueError, match=r"pairwise_distances: the EMD needs clouds with equal point counts"):
        pc.pairwise_distances(a, a[:, :5], "emd")
    with pytest.raises(ValueError, match=r"pairwise_distances: unknown metric 'l2'"):
        pc.pairwise_distances(a, a, "l2")
    with pytest.raises(ValueError, match=r"pairwise_distances: `batch_size` must be an integer >= 1"):
        pc.pairwise_distances(a, a, batch_size=0)
    with pytest.raises(ValueError, match=r"pairwise_distances: unknown `emd_options` \['iters'\]"):
        pc.pairwise_distances(a, a, "emd", emd_options={"iters": 3})
    with pytest.raises(ValueError, match=r"generation_metrics: the EMD needs clouds with equal point counts"):
        pc.generation_metrics(a, a[:, :5], progress=False)
    with pytest.raises(ValueError, match=r"generation_metrics: `metrics` repeats a name"):
        pc.generation_metrics(a, a, ("cd", "cd"), progress=False)
    with pytest.raises(ValueError, match=r"one_nn_accuracy: argument `d_ss` must have shape \(3x3\)"):
        pc.one_nn_accuracy(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"mmd: argument `d_sr` must hold finite values"):
        pc.mmd(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match=r"coverage: argument `d_sr` must be a 2-D real distance matrix"):
        pc.coverage(np.zeros(3))
    with pytest.raises(ValueError, match=r"jsd: argument `references` must be an array of point clouds"):
        pc.jsd(a, a[0])
    with pytest.raises(ValueError, match=r"occupancy_counts: `resolution` must be >= 2"):
        pc.occupancy_counts(a, 1)
