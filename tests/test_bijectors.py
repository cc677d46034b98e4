"""Every bijector, checked against the contract: inverse ∘ forward = id, and both log-dets
equal ``log|det J|`` of the autodiff Jacobian of the map they describe."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturb
from flax import nnx

from fpn_jax.flows import (
    AffineCoupling,
    BatchNormBijector,
    Chain,
    MaskedAffineAutoregressive,
    Repeat,
    Reverse,
)
from fpn_jax.flows.scale import softplus

D, C = 5, 3


def _maf_layer(rngs, bn=False):
    return MaskedAffineAutoregressive(D, C, 12, num_blocks=2, batch_norm=bn, rngs=rngs)


BIJECTORS = {
    "reverse": lambda rngs: Reverse(),
    "made_affine": _maf_layer,
    "made_affine_bn_within": lambda rngs: _maf_layer(rngs, bn=True),
    "coupling_odd": lambda rngs: AffineCoupling(D, C, 12, parity=0, rngs=rngs),
    "coupling_even_bn": lambda rngs: AffineCoupling(D, C, 12, parity=1, batch_norm=True, rngs=rngs),
    "coupling_sigmoid": lambda rngs: AffineCoupling(D, C, 12, parity=0, scale_function="sigmoid", rngs=rngs),
    "batch_norm": lambda rngs: BatchNormBijector(D),
    "chain": lambda rngs: Chain([Reverse(), _maf_layer(rngs), BatchNormBijector(D)]),
    "repeat": lambda rngs: Repeat(lambda i, r: AffineCoupling(D, C, 12, parity=i, rngs=r), 3, rngs=rngs),
}


@pytest.fixture(params=list(BIJECTORS), ids=list(BIJECTORS))
def bijector(request):
    b = BIJECTORS[request.param](nnx.Rngs(0))
    return perturb(b, jax.random.key(7), scale=0.2)


def _inputs(n=6):
    x = jax.random.normal(jax.random.key(3), (n, D)) * 1.5
    c = jax.nn.one_hot(jnp.arange(n) % C, C)
    return x, c


def test_inverse_of_forward_is_identity(bijector):
    x, c = _inputs()
    y, _ = bijector.forward_and_log_det(x, c)
    x_back, _ = bijector.inverse_and_log_det(y, c)
    np.testing.assert_allclose(x_back, x, atol=2e-5, rtol=1e-5)


def jacobians(fn, x, c):
    """Per-row Jacobians (N, D, D) of a row-wise map ``fn(x, c) -> (y, log_det)``."""
    def single(v, ci):
        return fn(v[None], ci[None])[0][0]

    return jax.jit(jax.vmap(jax.jacfwd(single)))(x, c)


def test_log_dets_match_autodiff_jacobian(bijector):
    x, c = _inputs()
    y, fwd_ld = bijector.forward_and_log_det(x, c)
    _, inv_ld = bijector.inverse_and_log_det(y, c)
    jac_f = jacobians(bijector.forward_and_log_det, x, c)
    jac_i = jacobians(bijector.inverse_and_log_det, y, c)
    np.testing.assert_allclose(fwd_ld, jnp.linalg.slogdet(jac_f)[1], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(inv_ld, jnp.linalg.slogdet(jac_i)[1], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(inv_ld, -fwd_ld, atol=1e-4, rtol=1e-4)
    assert fwd_ld.shape == (x.shape[0],)


def test_non_trivial(bijector):
    """Guards the tests above against a bijector that silently became the identity."""
    x, c = _inputs()
    y, _ = bijector.forward_and_log_det(x, c)
    assert float(jnp.abs(y - x).max()) > 1e-2


def test_batch_norm_sampling_direction_needs_eval_mode():
    bn = BatchNormBijector(D)
    bn.train()
    x, _ = _inputs()
    u, _ = bn.inverse_and_log_det(x)  # data -> noise uses batch statistics
    np.testing.assert_allclose(u.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(u.var(0, ddof=1), 1.0, atol=1e-3)
    assert float(jnp.abs(bn.running_mean[...]).max()) > 0  # the running average moved
    with pytest.raises(RuntimeError, match="eval"):
        bn.forward_and_log_det(x)
    bn.eval()
    bn.forward_and_log_det(x)


def test_repeat_stacks_parameters_and_alternates_parity():
    r = Repeat(lambda i, rngs: AffineCoupling(D, C, 8, parity=i, rngs=rngs), 4, rngs=nnx.Rngs(0))
    assert r.layers.parity[...].tolist() == [0, 1, 0, 1]
    kernel = r.layers.net.initial_layer.kernel[...]
    assert kernel.shape == (4, (D + 1) // 2 + C, 8)  # only the identity half and the context
    assert not np.allclose(kernel[0], kernel[1])  # each layer has its own parameters


def test_softplus_matches_jax_to_a_few_ulp():
    """The scale's softplus against float64, both its plain primal and the one its derivative rule
    computes (Goldberg's log1p), and its derivative against sigmoid. XLA simplifying
    ``(1 + e) - 1`` to ``e`` would make small-e values off by millions of ulp."""
    a = np.concatenate([np.linspace(-80, 80, 200_001), np.random.default_rng(0).standard_normal(100_000) * 5])
    a = a.astype(np.float32)
    a64 = a.astype(np.float64)
    exact = np.logaddexp(a64, 0.0)
    ulp = np.finfo(np.float32).eps
    goldberg = jax.jit(lambda x: jax.jvp(softplus, (x,), (jnp.ones_like(x),))[0])
    for fn in (softplus, jax.jit(softplus), goldberg):
        ours = np.asarray(fn(jnp.asarray(a)), np.float64)
        assert np.max(np.abs(ours - exact) / exact) < 4 * ulp
    slope = np.asarray(jax.jit(jax.vmap(jax.grad(softplus)))(jnp.asarray(a)), np.float64)
    sigmoid = 1.0 / (1.0 + np.exp(-a64))
    kept = sigmoid > 1e-30  # below, float32 flushes to zero
    assert np.max(np.abs(slope - sigmoid)[kept] / sigmoid[kept]) < 4 * ulp
    np.testing.assert_array_equal(
        np.asarray(softplus(jnp.asarray([-200.0, 0.0, 200.0]))), [0.0, np.log(2.0).astype(np.float32), 200.0]
    )
