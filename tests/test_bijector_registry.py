"""Every bijector of ``fpn_jax.flows`` x {no context, context} x {eager, jax.jit}, against the contract.

For each entry of the registry below (every bijector class, the scale functions and parities
of the coupling, batch norm in eval mode with non-trivial running statistics, composition by
``Chain`` and ``Repeat``, and the two full flows' ``.transform``), built with its parameters
(and statistics) perturbed away from the identity initialisation:

* ``inverse(forward(x)) = x`` and ``forward(inverse(y)) = y``;
* both log-dets equal ``log|det J|`` of the autodiff Jacobian (``jax.jacfwd`` per row) of
  the map they describe, and the inverse log-det at ``y = f(x)`` is minus the forward one at x;
* under ``jax.jit`` the results equal the eager ones;
* a conditional bijector's output changes with the context; an unconditional one given a
  context ignores it.

"no context" means ``context=None`` with a bijector built for ``context_features=0`` where
the class supports that (the full flows need a context, so they only run with one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturb_with_numpy
from flax import nnx

from fpn_jax.flows import (
    AffineCoupling,
    BatchNormBijector,
    Bijector,
    Chain,
    ConditionalMAF,
    ConditionalRealNVP,
    MaskedAffineAutoregressive,
    Repeat,
    Reverse,
)

D, C, H, N = 4, 3, 8, 5


@dataclasses.dataclass(frozen=True)
class Entry:
    """How to build one bijector for ``context_features`` (0: unconditional)."""

    build: Callable[[int, nnx.Rngs], Bijector]
    conditional: bool = True  # its output depends on the context (when built with one)
    unconditional: bool = True  # it can be built with context_features=0 and run with context=None


def _maf(c, rngs):
    return MaskedAffineAutoregressive(D, c, H, num_blocks=1, rngs=rngs)


def _coupling(parity, scale_function="softplus"):
    return lambda c, rngs: AffineCoupling(
        D, c, H, parity=parity, num_blocks=1, scale_function=scale_function, rngs=rngs
    )


REGISTRY: dict[str, Entry] = {
    "reverse": Entry(lambda c, rngs: Reverse(), conditional=False),
    "maf": Entry(_maf),
    "coupling_parity0_softplus": Entry(_coupling(0)),
    "coupling_parity1_softplus": Entry(_coupling(1)),
    "coupling_parity0_sigmoid": Entry(_coupling(0, "sigmoid")),
    "coupling_parity1_sigmoid": Entry(_coupling(1, "sigmoid")),
    "batch_norm": Entry(lambda c, rngs: BatchNormBijector(D), conditional=False),
    "chain": Entry(lambda c, rngs: Chain([Reverse(), _maf(c, rngs), BatchNormBijector(D)])),
    "repeat_maf": Entry(lambda c, rngs: Repeat(lambda i, r: _maf(c, r), 2, rngs=rngs)),
    "repeat_coupling": Entry(lambda c, rngs: Repeat(lambda i, r: _coupling(i)(c, r), 3, rngs=rngs)),
    "conditional_maf_transform": Entry(
        lambda c, rngs: ConditionalMAF(
            D, c, hidden_features=H, num_layers=2, num_blocks=1, batch_norm_within=True, batch_norm_between=True,
            rngs=rngs,
        ).transform,
        unconditional=False,
    ),
    "conditional_realnvp_transform": Entry(
        lambda c, rngs: ConditionalRealNVP(
            D, c, hidden_features=H, num_layers=2, num_blocks=1, batch_norm_within=True, batch_norm_between=True,
            rngs=rngs,
        ).transform,
        unconditional=False,
    ),
}

CASES = [
    (name, ctx)
    for name, entry in REGISTRY.items()
    for ctx in (("none", "context") if entry.unconditional else ("context",))
]
MODES = ["eager", "jit"]


def _ids(case):
    return f"{case[0]}-{case[1]}"


class Case:
    """One registry entry built for one context kind, with its maps eager and jitted (compiled once)."""

    def __init__(self, name: str, ctx: str):
        self.name, self.ctx = name, ctx
        self.bijector = REGISTRY[name].build(C if ctx == "context" else 0, nnx.Rngs(0))
        perturb_with_numpy(self.bijector, seed=11)  # every nnx.Param and batch statistic
        self.bijector.eval()
        graphdef, state = nnx.split(self.bijector)
        self._state = state
        self._jitted = {
            method: jax.jit(lambda state, x, c, method=method: getattr(nnx.merge(graphdef, state), method)(x, c))
            for method in ("forward_and_log_det", "inverse_and_log_det")
        }
        self._jacobians = {}
        self._results = {}

    def apply(self, method: str, mode: str) -> Callable:
        """``bijector.method(x, context)``, eagerly or as a ``jax.jit`` of the split module.

        Results are remembered per input (the tests ask for the same few maps many times).
        """

        def run(x, c):
            key = (method, mode, np.asarray(x).tobytes(), None if c is None else np.asarray(c).tobytes())
            if key not in self._results:
                if mode == "eager":
                    self._results[key] = getattr(self.bijector, method)(x, c)
                else:
                    self._results[key] = self._jitted[method](self._state, x, c)
            return self._results[key]

        return run

    def maps(self, mode: str) -> tuple[Callable, Callable]:
        return self.apply("forward_and_log_det", mode), self.apply("inverse_and_log_det", mode)

    def jacobian_log_dets(self, method: str, x: jax.Array, c: jax.Array | None) -> np.ndarray:
        """``log|det ∂y/∂x|`` per row of the map ``method``, from each row's (D, D) autodiff Jacobian.

        The reference is traced either way (``jacfwd``), so it is compiled once per map and
        serves both the eager and the jitted results.
        """
        if method not in self._jacobians:
            def row(v, ci):
                return getattr(self.bijector, method)(v[None], None if ci is None else ci[None])[0][0]

            self._jacobians[method] = jax.jit(jax.vmap(jax.jacfwd(row), in_axes=(0, None if c is None else 0)))
        jac = self._jacobians[method](x, c)
        assert jac.shape == (x.shape[0], D, D)
        sign, log_abs = np.linalg.slogdet(np.asarray(jac, np.float64))
        assert np.all(sign != 0)
        return log_abs


@pytest.fixture(scope="module", params=CASES, ids=_ids)
def case(request) -> Case:
    return Case(*request.param)


def _inputs(ctx, seed=3):
    kx, kc = jax.random.split(jax.random.key(seed))
    x = 1.2 * jax.random.normal(kx, (N, D))
    c = jax.nn.one_hot(jax.random.randint(kc, (N,), 0, C), C) if ctx == "context" else None
    return x, c


@pytest.mark.parametrize("mode", MODES)
def test_inverse_and_forward_undo_each_other(case, mode):
    ctx = case.ctx
    forward, inverse = case.maps(mode)
    x, c = _inputs(ctx)
    y, _ = forward(x, c)
    assert y.shape == x.shape and np.all(np.isfinite(y))
    np.testing.assert_allclose(inverse(y, c)[0], x, rtol=1e-5, atol=1e-5)
    data, _ = _inputs(ctx, seed=4)  # the other way round, from the data side
    u, _ = inverse(data, c)
    np.testing.assert_allclose(forward(u, c)[0], data, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_log_dets_are_the_autodiff_jacobians_and_opposite(case, mode):
    ctx = case.ctx
    forward, inverse = case.maps(mode)
    x, c = _inputs(ctx)
    y, forward_ld = forward(x, c)
    x_back, inverse_ld = inverse(y, c)
    assert forward_ld.shape == inverse_ld.shape == (N,)
    autodiff_forward = case.jacobian_log_dets("forward_and_log_det", x, c)
    autodiff_inverse = case.jacobian_log_dets("inverse_and_log_det", y, c)
    np.testing.assert_allclose(forward_ld, autodiff_forward, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(inverse_ld, autodiff_inverse, rtol=1e-4, atol=1e-4)
    # At corresponding points y = f(x): log|det ∂f⁻¹/∂y|(y) = -log|det ∂f/∂x|(x).
    np.testing.assert_allclose(inverse_ld, -forward_ld, rtol=1e-4, atol=1e-4)


def test_jit_gives_the_eager_results(case):
    x, c = _inputs(case.ctx)
    for method in ("forward_and_log_det", "inverse_and_log_det"):
        eager = case.apply(method, "eager")(x, c)
        jitted = case.apply(method, "jit")(x, c)
        for a, b in zip(eager, jitted, strict=True):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-6, err_msg=method)


@pytest.mark.parametrize("mode", MODES)
def test_the_context_matters_exactly_when_the_bijector_is_conditional(case, mode):
    name, ctx = case.name, case.ctx
    forward, inverse = case.maps(mode)
    x, c = _inputs(ctx)
    y, forward_ld = forward(x, c)
    u, inverse_ld = inverse(x, c)
    # Not the identity: the perturbation moved every layer away from its initialisation.
    assert float(jnp.abs(y - x).max()) > 1e-2 and float(jnp.abs(u - x).max()) > 1e-2
    if name != "reverse":
        assert float(jnp.abs(forward_ld).max()) > 1e-2
    if ctx == "none":
        return
    other = jnp.roll(c, 1, axis=1)  # every row gets another class
    y_other, forward_ld_other = forward(x, other)
    u_other, inverse_ld_other = inverse(x, other)
    if REGISTRY[name].conditional:
        assert float(jnp.abs(y_other - y).max(axis=1).min()) > 1e-4  # in every row
        assert float(jnp.abs(u_other - u).max(axis=1).min()) > 1e-4
        assert float(jnp.abs(inverse_ld_other - inverse_ld).max()) > 1e-4
    else:
        np.testing.assert_array_equal(np.asarray(y_other), np.asarray(y))
        np.testing.assert_array_equal(np.asarray(u_other), np.asarray(u))
        np.testing.assert_array_equal(np.asarray(forward_ld_other), np.asarray(forward_ld))
        np.testing.assert_array_equal(np.asarray(inverse_ld_other), np.asarray(inverse_ld))


def test_the_registry_covers_every_bijector_class():
    import fpn_jax.flows as flows

    classes = {
        cls for cls in vars(flows).values()
        if isinstance(cls, type) and issubclass(cls, Bijector) and cls is not Bijector
    }
    built = {type(REGISTRY[name].build(C, nnx.Rngs(0))) for name in REGISTRY}
    assert classes <= built, f"bijectors without a registry entry: {sorted(c.__name__ for c in classes - built)}"
    # Both scale functions and both parities of the coupling are in.
    couplings = [REGISTRY[name].build(C, nnx.Rngs(0)) for name in REGISTRY if name.startswith("coupling")]
    assert {(int(b.parity[...]), b.scale_function) for b in couplings} == {
        (p, s) for p in (0, 1) for s in ("softplus", "sigmoid")
    }


def test_batch_norm_runs_on_non_trivial_running_statistics():
    bijector = BatchNormBijector(D)
    perturb_with_numpy(bijector, seed=11)
    bijector.eval()
    mean, var = np.asarray(bijector.running_mean[...]), np.asarray(bijector.running_var[...])
    assert np.abs(mean).min() > 1e-3 and np.abs(var - 1.0).min() > 1e-3
    x, _ = _inputs("none")
    u, ld = bijector.inverse_and_log_det(x)
    w = np.asarray(bijector.weight())
    np.testing.assert_allclose(u, w * (np.asarray(x) - mean) / np.sqrt(var + 1e-5) + np.asarray(bijector.bias[...]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ld, np.full(N, np.sum(np.log(w) - 0.5 * np.log(var + 1e-5))), rtol=1e-5, atol=1e-5)
