"""Inverting a MADE-parametrised autoregressive map degree by degree (MAF's sampling).

An autoregressive layer ``x_i = g(y_i; MADE(y | c)_i)`` is inverted for ``y`` one
coordinate at a time. nflows runs D full MADE passes; ``solve_by_degree`` computes every
hidden unit once instead, in the order of its degree (see its docstring), about one density
pass of work spread over D small sequential steps (a ``lax.fori_loop``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fpn_jax.nn.linear import Linear
from fpn_jax.nn.masks import hidden_degrees
from fpn_jax.nn.residual import batch_norm_affine
from fpn_jax.typing import Array

SOLVE_TILE_ROWS = 1024  # rows per tile: the (H, rows) activations stay in cache
# solve(x_i, params_i) -> (y_i, aux_i): inverts one autoregressive coordinate.
Solve = Callable[[Array, Array], tuple[Array, Array]]


def solve_by_degree(made: nnx.Module, x: Array, context: Array | None, solve: Solve) -> tuple[Array, Array]:
    """Inverts an autoregressive map ``x_i = g(y_i; MADE(y | c)_i)`` for y, degree by degree.

    ``made`` is a ``fpn_jax.nn.MADE`` (not imported here: ``made.py`` imports this module).
    ``solve(x_i, p_i) -> (y_i, aux_i)`` inverts one coordinate given its MADE outputs
    ``p_i`` (shape (m, N) for m = ``output_multiplier``; ``x_i``, ``y_i``, ``aux_i``: (N,)).
    Output i depends only on hidden units of degree ≤ i, and a hidden unit of degree d
    only on ``y_<d+1`` (0-based ``y_0..y_{d-1}``) and on units of degree ≤ d of the layer
    before. So for i = 0..D-1 in turn:

    1. compute, in every hidden layer, the units of degree i (their inputs are final);
    2. compute ``p_i`` from the last hidden layer and ``y_i, aux_i = solve(x_i, p_i)``.

    Every hidden unit is computed once (in a window of ``g`` units, g the largest number
    of units sharing a degree), instead of once per coordinate as in D full MADE passes:
    about ``g·D/H`` density passes of work instead of D. Activations are kept
    feature-major, (units, N), so each step reads and writes contiguous rows; units are
    sorted by degree so that a degree's units are adjacent. Units of a higher degree that
    fall into a window are stored as 0 until their own step (their weights into lower
    degrees are masked anyway). Only valid for ``can_solve_by_degree()``.

    Returns ``(y, aux)``, each (N, D).
    """
    d, m = made.features, made.output_multiplier
    width = made.initial_layer.out_features
    degree = hidden_degrees(width, d)
    order = np.argsort(degree, kind="stable")
    sorted_degree = degree[order]
    g = int(np.bincount(sorted_degree).max())
    start = np.minimum(np.searchsorted(sorted_degree, np.arange(d)), width - g)
    window_degree = sorted_degree[start[:, None] + np.arange(g)]  # (D, g)

    def rows(linear: Linear, cols=slice(None)) -> Array:  # weight as (sorted units out, in)
        return linear.weight()[cols][:, order].T

    def units(v: Array) -> Array:  # (N, H) or (H,) in model order -> (H, N) / (H, 1) sorted
        return (v[..., order].T if v.ndim == 2 else v[order][:, None])

    w_in = rows(made.initial_layer)  # (H, D)
    b_in = units(made.initial_layer.bias[...])
    blocks = []
    for block in made.blocks:
        norms = [None, None] if block.batch_norms is None else [
            tuple(units(a) for a in batch_norm_affine(bn)) for bn in block.batch_norms
        ]
        blocks.append(dict(
            block=block, norms=norms, w0=rows(block.linear_0, order), b0=units(block.linear_0.bias[...]),
            w1=rows(block.linear_1, order), b1=units(block.linear_1.bias[...]),
        ))
    w_out = made.final_layer.weight()[order].reshape(width, d, m).transpose(1, 2, 0)  # (D, m, H)
    b_out = made.final_layer.bias[...].reshape(d, m, 1)
    valid_table = jnp.asarray(window_degree)
    start_table = jnp.asarray(start, jnp.int32)

    def pre_activation(norm, h):
        return made.activation(h if norm is None else norm[0] * h + norm[1])

    def window(a: Array, w: Array) -> Array:
        return jax.lax.dynamic_slice_in_dim(a, w, g, axis=0)

    def solve_rows(x: Array, context: Array | None) -> tuple[Array, Array]:
        n = x.shape[0]
        c_in = b_in
        if made.context_layer is not None:
            c_in = c_in + units(made.activation(made.context_layer(context)))
        c_in = jnp.broadcast_to(c_in, (width, n))
        c_mid = []
        for blk in blocks:
            c = blk["b0"]
            if blk["block"].context_layer is not None:
                c = c + units(blk["block"].context_layer(context))
            c_mid.append(jnp.broadcast_to(c, (width, n)))

        def step(i, carry):
            y, aux, stored, final = carry
            w = start_table[i]
            valid = (valid_table[i] <= i)[:, None]
            h = window(w_in, w) @ y + window(c_in, w)
            new_stored = []
            for blk, c, (a_in, a_mid) in zip(blocks, c_mid, stored, strict=True):
                norm_0 = None if blk["norms"][0] is None else tuple(window(v, w) for v in blk["norms"][0])
                norm_1 = None if blk["norms"][1] is None else tuple(window(v, w) for v in blk["norms"][1])
                a_in = jax.lax.dynamic_update_slice_in_dim(a_in, jnp.where(valid, pre_activation(norm_0, h), 0.0), w, 0)
                t = window(blk["w0"], w) @ a_in + window(c, w)
                a_mid = jax.lax.dynamic_update_slice_in_dim(
                    a_mid, jnp.where(valid, pre_activation(norm_1, t), 0.0), w, 0
                )
                h = h + window(blk["w1"], w) @ a_mid + window(blk["b1"], w)
                new_stored.append((a_in, a_mid))
            final = jax.lax.dynamic_update_slice_in_dim(final, jnp.where(valid, h, 0.0), w, 0)
            params = w_out[i] @ final + b_out[i]  # (m, N)
            y_i, aux_i = solve(x[:, i], params)
            return y.at[i].set(y_i), aux.at[i].set(aux_i), new_stored, final

        zeros = jnp.zeros((width, n), x.dtype)
        init = (jnp.zeros((d, n), x.dtype), jnp.zeros((d, n), x.dtype), [(zeros, zeros) for _ in blocks], zeros)
        y, aux, _, _ = jax.lax.fori_loop(0, d, step, init)
        return y.T, aux.T

    n = x.shape[0]
    tile = min(n, SOLVE_TILE_ROWS)
    if tile == n:
        return solve_rows(x, context)
    tiles = -(-n // tile)
    pad = tiles * tile - n

    def tiled(a):
        a = jnp.concatenate([a, jnp.zeros((pad, a.shape[1]), a.dtype)]) if pad else a
        return a.reshape(tiles, tile, a.shape[1])

    y, aux = jax.lax.map(lambda xc: solve_rows(*xc), (tiled(x), None if context is None else tiled(context)))
    return y.reshape(-1, d)[:n], aux.reshape(-1, d)[:n]


