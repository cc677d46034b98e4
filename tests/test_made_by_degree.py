"""MAF sampling degree by degree (``MADE.solve_by_degree``) against the D-pass reference.

The fast path must give the same noise → data map as D full MADE passes, to float
tolerance, for every shape of degree groups (H < D-1, H a multiple of D-1 or not, D = 1, 2),
with and without batch norm, across row tiles, and invert the density direction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturb
from flax import nnx

from fpn_jax.flows import MaskedAffineAutoregressive
from fpn_jax.nn import by_degree

C = 3
CASES = {  # (D, H, batch norm within, blocks)
    "d5_h12": (5, 12, False, 2),
    "d5_h12_bn": (5, 12, True, 2),
    "d1": (1, 8, False, 2),
    "d2": (2, 7, False, 1),
    "h_below_degrees": (7, 3, False, 2),
    "h_multiple": (9, 16, False, 2),
    "no_blocks": (6, 10, False, 0),
    "mnist_like_bn": (40, 100, True, 2),
}


def _layer(d, h, bn, blocks, scale=0.1):
    layer = MaskedAffineAutoregressive(d, C, h, num_blocks=blocks, batch_norm=bn, rngs=nnx.Rngs(0))
    return perturb(layer, jax.random.key(7), scale=scale)


def _inputs(n, d):
    x = jax.random.normal(jax.random.key(3), (n, d))
    c = jax.nn.one_hot(jnp.arange(n) % C, C)
    return x, c


@pytest.mark.parametrize("case", list(CASES))
def test_by_degree_equals_d_passes_and_inverts(case):
    d, h, bn, blocks = CASES[case]
    layer = _layer(d, h, bn, blocks)
    assert layer.made.can_solve_by_degree()
    x, c = _inputs(11, d)
    y, log_det = layer.forward_and_log_det(x, c)
    y_ref, log_det_ref = layer.forward_and_log_det_by_passes(x, c)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_det, log_det_ref, rtol=1e-5, atol=1e-5)
    x_back, inv_log_det = layer.inverse_and_log_det(y, c)
    np.testing.assert_allclose(x_back, x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(inv_log_det, -log_det, rtol=1e-5, atol=1e-5)


def test_tiles_give_the_same_rows(monkeypatch):
    layer = _layer(6, 11, True, 2)
    x, c = _inputs(23, 6)  # 23 rows: 3 tiles of 8, the last one padded
    y_one, ld_one = jax.jit(layer.forward_and_log_det)(x, c)
    monkeypatch.setattr(by_degree, "SOLVE_TILE_ROWS", 8)
    y_tiled, ld_tiled = jax.jit(layer.forward_and_log_det)(x, c)
    np.testing.assert_allclose(y_tiled, y_one, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ld_tiled, ld_one, rtol=1e-6, atol=1e-6)


def test_training_mode_dropout_takes_the_pass_path():
    layer = MaskedAffineAutoregressive(4, C, 9, dropout=0.5, rngs=nnx.Rngs(0))
    assert layer.made.can_solve_by_degree()  # eval: dropout is the identity
    layer.train()
    assert not layer.made.can_solve_by_degree()
    x, c = _inputs(5, 4)
    key = jax.random.key(1)
    y, log_det = layer.forward_and_log_det(x, c, key=key)
    y_ref, log_det_ref = layer.forward_and_log_det_by_passes(x, c, key=key)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(log_det, log_det_ref)
