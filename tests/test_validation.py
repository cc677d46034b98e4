"""Bad input gets a ValueError that names the argument, the expected and the actual shape."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_flow
from flax import nnx

import fpn_jax
from fpn_jax import ConditionalMAF, ConditionalRealNVP, TrainConfig, classify, one_hot


@pytest.fixture(scope="module")
def flow():
    return make_flow("maf", 4, context_features=3)


Z = jnp.zeros((5, 4))
C = jnp.eye(3)[jnp.array([0, 1, 2, 0, 1])]


@pytest.mark.parametrize(
    "z, context, pattern",
    [
        (jnp.zeros((5, 6)), C, r"`z` must have shape \(N, 4\) \(features=4\); got shape \(5, 6\)"),
        (Z, jnp.zeros((5, 2)), r"`context` must have shape \(N, 3\) \(context_features=3\); got shape \(5, 2\)"),
        (Z, C[:4], r"same number of rows N; `z` has 5, `context` has 4"),
        (jnp.zeros(4), C, r"`z` must be a 2-D array of shape \(N, 4\).*got a 1-D array of shape \(4,\)"),
        (jnp.zeros((2, 5, 4)), C, r"got a 3-D array"),
        (Z, jnp.array([0, 1, 2, 0, 1]), r"looks like integer class labels.*one_hot"),
        (Z, C.astype(jnp.int32), r"`context` must be a floating-point array.*got dtype int32"),
    ],
)
def test_log_prob_rejects_bad_shapes(flow, z, context, pattern):
    with pytest.raises(ValueError, match=pattern):
        flow.log_prob(z, context)


def test_every_entry_point_validates(flow):
    with pytest.raises(ValueError, match=r"ConditionalMAF.to_noise: argument `z`"):
        flow.to_noise(jnp.zeros((5, 3)), C)
    with pytest.raises(ValueError, match=r"ConditionalMAF.from_noise: argument `u`"):
        flow.from_noise(jnp.zeros((5, 3)), C)
    with pytest.raises(ValueError, match=r"ConditionalMAF.sample: argument `context`"):
        flow.sample(jax.random.key(0), jnp.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"`key` must be a JAX PRNG key"):
        flow.sample(0, C)
    with pytest.raises(ValueError, match=r"argument `z` must have shape \(N, 4\) \(flow.features=4\)"):
        classify(flow, jnp.zeros((5, 2)))


def test_checks_run_under_jit_before_tracing_deeper(flow):
    with pytest.raises(ValueError, match=r"`z` must have shape \(N, 4\)"):
        jax.jit(flow.log_prob)(jnp.zeros((5, 6)), C)


def test_numpy_float64_is_accepted(flow):
    lp = flow.log_prob(np.zeros((5, 4)), np.asarray(C, np.float64))
    assert lp.dtype == jnp.float32 and lp.shape == (5,)


@pytest.mark.parametrize("cls", [ConditionalMAF, ConditionalRealNVP])
def test_constructor_arguments(cls):
    with pytest.raises(ValueError, match="`features` must be an integer >= 1; got 0"):
        cls(0, 3, hidden_features=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="`hidden_features` must be an integer >= 1"):
        cls(2, 3, hidden_features=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`dropout` must be in \[0, 1\)"):
        cls(2, 3, hidden_features=8, dropout=1.0, rngs=nnx.Rngs(0))


def test_dropout_in_training_needs_a_key():
    flow = ConditionalRealNVP(2, 3, hidden_features=8, dropout=0.5, rngs=nnx.Rngs(0))
    flow.train()
    with pytest.raises(ValueError, match="needs a PRNG key"):
        flow.log_prob(jnp.zeros((4, 2)), C[:4])
    a = flow.log_prob(jnp.ones((4, 2)), C[:4], key=jax.random.key(0))
    b = flow.log_prob(jnp.ones((4, 2)), C[:4], key=jax.random.key(1))
    assert not np.array_equal(a, b)  # dropout is live in training mode
    flow.eval()
    np.testing.assert_array_equal(flow.log_prob(jnp.ones((4, 2)), C[:4]), flow.log_prob(jnp.ones((4, 2)), C[:4]))


def test_one_hot_and_config_errors():
    with pytest.raises(ValueError, match=r"labels\[2\] = 7"):
        one_hot(np.array([0, 1, 7]), 3)
    with pytest.raises(ValueError, match="1-D integer array"):
        one_hot(np.array([0.0, 1.0]), 3)
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1"):
        TrainConfig(batch_size=0)


def test_non_finite_inputs_name_the_first_bad_row(flow):
    z = np.zeros((6, 4), np.float32)
    z[[3, 5], 1] = [np.inf, np.nan]
    c = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    for call in (lambda: flow.log_prob(z, c), lambda: flow.to_noise(z, c), lambda: classify(flow, z)):
        expected = r"`z` must hold finite values; row 3 of 6 has an infinite value \(2 bad rows"
        with pytest.raises(ValueError, match=expected):
            call()
    bad_context = c.copy()
    bad_context[4, 0] = np.nan
    expected = r"ConditionalMAF.sample: argument `context` must hold finite values; row 4 of 6 has NaN"
    with pytest.raises(ValueError, match=expected):
        flow.sample(jax.random.key(0), bad_context)
    wide = np.zeros((2, 4))
    wide[1, 2] = 1e300  # finite in float64, infinite once cast to float32
    with pytest.raises(ValueError, match=r"row 1 of 2 has a value beyond float32's range"):
        flow.log_prob(wide, c[:2])


def test_empty_inputs_give_empty_results(flow):
    assert flow.log_prob(np.zeros((0, 4), np.float32), np.zeros((0, 3), np.float32)).shape == (0,)
    assert flow.sample(jax.random.key(0), np.zeros((0, 3), np.float32)).shape == (0, 4)
    pred, log_post = classify(flow, np.zeros((0, 4), np.float32))
    assert pred.shape == (0,) and log_post.shape == (0, 3)


def test_a_batch_of_keys_is_refused(flow):
    expected = r"ConditionalMAF.sample: argument `key` must be a single PRNG key.*shape \(3,\)"
    with pytest.raises(ValueError, match=expected):
        flow.sample(jax.random.split(jax.random.key(0), 3), C[:3])


def test_classify_and_manipulate_arguments(flow):
    z = np.zeros((5, 4), np.float32)
    expected = r"classify: argument `log_prior` must hold log-probabilities.*log_prior\[1\] = nan"
    with pytest.raises(ValueError, match=expected):
        classify(flow, z, log_prior=np.array([0.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match=r"every class prior 0"):
        classify(flow, z, log_prior=np.full(3, -np.inf))
    pred, log_post = classify(flow, z, log_prior=np.array([0.0, -np.inf, -np.inf]))
    assert (np.asarray(pred) == 0).all() and np.allclose(np.exp(log_post).sum(1), 1)
    with pytest.raises(ValueError, match=r"class_log_likelihoods: `batch_size` must be an integer >= 1; got 0"):
        classify(flow, z, batch_size=0)
    # The error names `new_context`, not the `context` of the from_noise call inside.
    with pytest.raises(ValueError, match=r"manipulate: argument `new_context` must have shape \(N, 3\)"):
        fpn_jax.manipulate(flow, z, C, jnp.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"manipulate: arguments must have the same number of rows N"):
        fpn_jax.manipulate(flow, z, C, C[:4])


def test_fit_refuses_empty_data_and_single_row_batch_norm():
    key = jax.random.key(0)
    plain = ConditionalMAF(2, 3, hidden_features=4, num_layers=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"fit: argument `z` has no rows"):
        fpn_jax.fit(plain, np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32), key=key, progress=False)
    with pytest.raises(TypeError, match=r"fit: argument `config` must be a fpn_jax.TrainConfig"):
        fpn_jax.fit(plain, np.zeros((4, 2), np.float32), C[:4], key=key, config={"max_epochs": 1}, progress=False)
    with pytest.raises(ValueError, match=r"fit: argument `validation` must be a pair"):
        fpn_jax.fit(plain, np.zeros((4, 2), np.float32), C[:4], key=key, validation=np.zeros((4, 2)), progress=False)
    with_bn = ConditionalMAF(2, 3, hidden_features=4, num_layers=1, batch_norm_between=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"batch norm, which needs batches of at least 2 rows; got batch_size=1"):
        fpn_jax.fit(with_bn, np.zeros((4, 2), np.float32), C[:4], key=key, config=TrainConfig(batch_size=1),
                    progress=False)
