"""C-MAF and C-RealNVP: the maths of the density, both directions, and the public API."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FLOWS, data, make_flow, perturb
from flax import nnx

from fpn_jax.nn import MADE


@pytest.mark.parametrize("features", [2, 3, 7])
def test_noise_round_trip(flow_kind, features):
    kind, bn = flow_kind
    flow = make_flow(kind, features, batch_norm=bn)
    z, c = data(features)
    u = flow.to_noise(z, c)
    np.testing.assert_allclose(flow.from_noise(u, c), z, atol=1e-5, rtol=1e-5)
    assert float(jnp.abs(u - z).max()) > 1e-2  # the flow is not the identity


@pytest.mark.parametrize("features", [2, 5])
def test_log_prob_is_change_of_variables_with_autodiff_jacobian(flow_kind, features):
    kind, bn = flow_kind
    flow = make_flow(kind, features, batch_norm=bn)
    z, c = data(features)
    u = flow.to_noise(z, c)
    jac = jax.jit(jax.vmap(jax.jacfwd(lambda v, ci: flow.to_noise(v[None], ci[None])[0])))(z, c)
    base = jax.scipy.stats.norm.logpdf(u).sum(-1)
    expected = base + jnp.linalg.slogdet(jac)[1]
    np.testing.assert_allclose(flow.log_prob(z, c), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", ["maf", "rnvp"])
def test_density_integrates_to_one_in_2d(kind):
    flow = make_flow(kind, 2, batch_norm=True)
    grid = jnp.linspace(-30.0, 30.0, 1201)
    step = float(grid[1] - grid[0])
    points = jnp.stack(jnp.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    for label in range(3):
        context = jnp.broadcast_to(jax.nn.one_hot(label, 3), (points.shape[0], 3))
        mass = float(jnp.exp(flow.log_prob(points, context)).sum()) * step**2
        assert mass == pytest.approx(1.0, abs=5e-3), f"class {label}"


def test_made_jacobian_is_strictly_triangular():
    features, hidden = 6, 20
    made = perturb(MADE(features, hidden, 3, num_blocks=2, batch_norm=True, rngs=nnx.Rngs(0)), jax.random.key(1))
    x, c = data(features, n=4)
    jac = jax.jit(jax.vmap(jax.jacfwd(lambda v, ci: made(v[None], ci[None])[0])))(x, c)  # (N, 2, D, D)
    jac = jnp.abs(jac).max(axis=(0, 1))  # (D outputs, D inputs)
    upper = np.triu(np.ones((features, features), bool))
    assert float(jac[upper].max()) == 0.0  # output i never sees inputs i, i+1, ...
    assert float(jac[~upper].min()) > 0.0  # and does see every input before it


def test_made_output_columns_keep_nflows_interleaved_order():
    # Column i·m + k of the output layer (nflows' layout, what conversion maps) is parameter k of
    # feature i: it moves out[:, k, i] and nothing else.
    features, m = 5, 3
    made = perturb(MADE(features, 8, 2, num_blocks=1, output_multiplier=m, rngs=nnx.Rngs(0)), jax.random.key(1))
    x, c = data(features, n=4)
    c = c[:, :2]
    before = made(x, c)
    for i, k in [(0, 0), (3, 1), (4, 2), (2, 2)]:
        bias = made.final_layer.bias[...]
        made.final_layer.bias[...] = bias.at[i * m + k].add(1.0)
        moved = np.asarray(made(x, c) - before)
        made.final_layer.bias[...] = bias
        expected = np.zeros((m, features))
        expected[k, i] = 1.0
        np.testing.assert_allclose(moved, np.broadcast_to(expected, moved.shape), atol=1e-5)
        assert made.grouped_output_order()[k * features + i] == i * m + k


def test_context_changes_log_prob(flow_kind):
    kind, bn = flow_kind
    flow = make_flow(kind, 4, batch_norm=bn)
    z, _ = data(4)
    lps = [flow.log_prob(z, jnp.broadcast_to(jax.nn.one_hot(k, 3), (8, 3))) for k in range(3)]
    assert float(jnp.abs(lps[0] - lps[1]).min()) > 1e-3
    assert float(jnp.abs(lps[1] - lps[2]).min()) > 1e-3


def test_multi_hot_context_and_embedding(flow_kind):
    kind, bn = flow_kind
    flow = make_flow(kind, 4, context_features=5, batch_norm=bn, embedding_features=2)
    z, _ = data(4)
    a = jnp.array([[1.0, 0, 1, 1, 0]] * 8)
    b = jnp.array([[1.0, 0, 1, 0, 0]] * 8)
    assert float(jnp.abs(flow.log_prob(z, a) - flow.log_prob(z, b)).min()) > 1e-4
    np.testing.assert_allclose(flow.from_noise(flow.to_noise(z, a), a), z, atol=1e-5)


@pytest.mark.parametrize("embedding", [None, 2])
def test_every_parameter_gets_a_gradient(flow_kind, embedding):
    kind, bn = flow_kind
    flow = make_flow(kind, 4, batch_norm=bn, embedding_features=embedding, dropout=0.1)
    flow.train()
    graphdef, params, rest = nnx.split(flow, nnx.Param, ...)
    z, c = data(4, n=16)

    def loss(params):
        model = nnx.merge(graphdef, params, rest, copy=True)  # copy: batch norm updates its statistics
        return -model.log_prob(z, c, key=jax.random.key(0)).mean()

    grads = jax.grad(loss)(params)
    for path, g in jax.tree.flatten_with_path(grads)[0]:
        assert float(jnp.abs(g).max()) > 0.0, jax.tree_util.keystr(path)


def test_sample_and_log_prob_agree_with_log_prob(flow_kind):
    kind, bn = flow_kind
    flow = make_flow(kind, 3, batch_norm=bn)
    _, c = data(3, n=32)
    z, lp = flow.sample_and_log_prob(jax.random.key(5), c)
    assert z.shape == (32, 3) and lp.shape == (32,)
    np.testing.assert_allclose(lp, flow.log_prob(z, c), atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(flow.sample(jax.random.key(5), c), z)  # keys are explicit
    assert not np.allclose(flow.sample(jax.random.key(6), c), z)


def test_jit_vmap_and_eager_agree(flow_kind):
    kind, bn = flow_kind
    flow = make_flow(kind, 3, batch_norm=bn)
    z, c = data(3)
    reference = flow.log_prob(z, c)
    with jax.disable_jit():
        np.testing.assert_allclose(flow.log_prob(z, c), reference, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(flow.log_prob)(z, c), reference, atol=1e-5, rtol=1e-5)
    stacked = jax.vmap(flow.log_prob)(jnp.stack([z, z + 1]), jnp.stack([c, c]))
    np.testing.assert_allclose(stacked[0], reference, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(stacked[1], flow.log_prob(z + 1, c), atol=1e-5, rtol=1e-5)
    u = jax.jit(flow.to_noise)(z, c)
    np.testing.assert_allclose(jax.jit(flow.from_noise)(u, c), z, atol=1e-5)
    samples = jax.vmap(flow.sample, in_axes=(0, None))(jax.random.split(jax.random.key(0), 2), c)
    assert samples.shape == (2, 8, 3)


def test_pure_functions_after_one_split(flow_kind):
    kind, bn = flow_kind
    flow = make_flow(kind, 3, batch_norm=bn)
    graphdef, state = nnx.split(flow)
    traces = []

    @jax.jit
    def log_prob(state, z, c):
        traces.append(1)
        return nnx.merge(graphdef, state).log_prob(z, c)

    z, c = data(3)
    # The public path compiles with fpn_jax.runtime.compiler's options: other kernels, other rounding.
    np.testing.assert_allclose(log_prob(state, z, c), flow.log_prob(z, c), rtol=1e-5, atol=1e-5)
    log_prob(state, z + 1.0, c)
    assert len(traces) == 1  # new batch contents, no retrace


def test_training_mode_batch_norm(flow_kind):
    kind, bn = flow_kind
    flow = make_flow(kind, 3, batch_norm=bn)
    z, c = data(3)
    flow.train()
    flow.log_prob(z, c)  # density direction works with batch statistics
    if bn:
        with pytest.raises(RuntimeError, match="eval"):
            flow.sample(jax.random.key(0), c)
        with pytest.raises(ValueError, match="N >= 2"):
            flow.log_prob(z[:1], c[:1])
    else:
        flow.sample(jax.random.key(0), c)
    flow.eval()
    flow.sample(jax.random.key(0), c)


def test_nan_is_not_hidden(flow_kind):
    kind, bn = flow_kind
    flow = make_flow(kind, 3, batch_norm=bn)
    z, c = data(3)
    z = z.at[2, 1].set(jnp.nan)
    with pytest.raises(ValueError, match=r"`z` must hold finite values; row 2 of 8 has NaN"):
        flow.log_prob(z, c)  # concrete input: reported at the boundary
    lp = jax.jit(flow.log_prob)(z, c)  # traced: no value check, and the NaN stays in its row
    assert bool(jnp.isnan(lp[2]))
    assert not bool(jnp.isneginf(lp).any())


@pytest.mark.parametrize("kind", ["maf", "rnvp"])
def test_fresh_flows_start_near_the_identity(kind):
    flow = FLOWS[kind](4, 3, hidden_features=16, num_layers=5, rngs=nnx.Rngs(0))
    z, c = data(4, n=64)
    reversals = z[:, ::-1] if kind == "maf" else z  # C-MAF: 5 reverse permutations
    np.testing.assert_allclose(flow.to_noise(z, c), reversals, atol=0.05)
    np.testing.assert_allclose(flow.log_prob(z, c), jax.scipy.stats.norm.logpdf(z).sum(1), atol=0.1)
