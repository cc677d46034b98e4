"""Bayes-rule classification and manipulation, checked against direct computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import data, make_flow
from flax import nnx

from fpn_jax import ConditionalMAF, class_log_likelihoods, classify, manipulate


@pytest.mark.parametrize("kind", ["maf", "rnvp"])
def test_classify_is_bayes_rule_over_log_prob(kind):
    flow = make_flow(kind, 3, context_features=4, batch_norm=True)
    z, _ = data(3, n=37)
    direct = jnp.stack([flow.log_prob(z, jnp.broadcast_to(jax.nn.one_hot(k, 4), (37, 4))) for k in range(4)], 1)
    np.testing.assert_allclose(class_log_likelihoods(flow, z, batch_size=16), direct, atol=1e-5, rtol=1e-5)

    log_prior = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))
    predictions, log_posterior = classify(flow, z, log_prior=log_prior, batch_size=16)
    expected = direct + log_prior
    np.testing.assert_array_equal(predictions, jnp.argmax(expected, 1))
    np.testing.assert_allclose(log_posterior, expected - jax.nn.logsumexp(expected, 1, keepdims=True), atol=1e-5)


def test_classify_needs_eval_mode():
    flow = make_flow("maf", 3, batch_norm=True)
    flow.train()
    with pytest.raises(RuntimeError, match="eval"):
        classify(flow, jnp.zeros((4, 3)))


@pytest.mark.parametrize("kind", ["maf", "rnvp"])
def test_manipulate_keeps_the_noise(kind):
    flow = make_flow(kind, 3)
    z, c = data(3)
    target = jnp.roll(c, 1, axis=1)
    moved = manipulate(flow, z, c, target)
    np.testing.assert_allclose(manipulate(flow, z, c, c), z, atol=1e-5)
    np.testing.assert_allclose(flow.to_noise(moved, target), flow.to_noise(z, c), atol=1e-5)
    assert float(jnp.abs(moved - z).max()) > 1e-3



def test_posterior_is_normalised_for_extreme_latents():
    # Regression (found by tests/test_properties.py): with log-likelihoods ~ -1e18 the old
    # ``log_lik - logsumexp(log_lik)`` lost the log K in float32, so K tied classes each got
    # probability 1. A MAF whose context weights are zero ties every class exactly.
    flow = make_flow("maf", 2, context_features=3)
    flow.eval()
    params = nnx.state(flow, nnx.Param)
    nnx.update(flow, jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if "context" in jax.tree_util.keystr(path) else v, params
    ))
    z = np.array([[0.3, -0.2], [1e6, 1e6]], np.float32)
    log_lik = np.asarray(class_log_likelihoods(flow, z))
    assert (log_lik == log_lik[:, :1]).all() and log_lik[1, 0] < -1e15  # tied, and extreme
    _, log_post = classify(flow, z)
    np.testing.assert_allclose(np.exp(np.asarray(log_post, np.float64)), 1 / 3, rtol=1e-6)


def test_attribute_log_ratios_are_log_p_under_y_minus_under_y_with_one_bit_flipped():
    from fpn_jax.inference import attribute_log_ratios

    flow = ConditionalMAF(3, 4, hidden_features=8, num_layers=2, rngs=nnx.Rngs(1))
    flow.eval()
    rng = np.random.default_rng(0)
    z = rng.normal(size=(7, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=(7, 4)).astype(np.float32)
    ratios = attribute_log_ratios(flow, z, y, batch_size=3)
    assert ratios.shape == (7, 4)
    for a in range(4):
        flipped = y.copy()
        flipped[:, a] = 1 - flipped[:, a]
        expected = np.asarray(flow.log_prob(z, y)) - np.asarray(flow.log_prob(z, flipped))
        np.testing.assert_allclose(ratios[:, a], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="0 / 1"):
        attribute_log_ratios(flow, z, y * 0.5)
