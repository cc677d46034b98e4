"""Conditioner networks: MADE (for MAF) and a residual MLP (for RealNVP's couplings).

Both follow nflows 0.14 layer for layer, so that models trained there convert exactly:

* ``Linear``: ``y = x W + b`` with W of shape (in, out); PyTorch's default initialisation
  ``U(±1/sqrt(in))`` for W and b.
* ``MaskedLinear``: ``y = x (W ⊙ M) + b`` with the MADE mask M given by degrees.
* ``ResidualBlock``: pre-activation ``h + L₁(drop(act(BN(L₀(act(BN(h)))))))``, the context
  entering either additively after ``L₀`` (MADE's masked blocks) or as a GLU gate on the
  block's output (nflows' ``ResidualNet``). ``L₁`` starts near zero, so every block starts
  close to the identity.
* ``MADE``: masked initial layer (+ ``act(Linear(c))``), masked residual blocks, masked
  output layer with ``output_multiplier`` outputs per feature, interleaved as
  ``(N, D * m) -> (N, D, m)``.
* ``ResidualNet``: ``Linear([x, c])``, residual blocks gated by the context, ``Linear``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fpn_jax.flows.bijector import split_key

Array = jax.Array
Activation = Callable[[Array], Array]
# solve(x_i, params_i) -> (y_i, aux_i): inverts one autoregressive coordinate (see MADE.solve_by_degree).
SOLVE_TILE_ROWS = 1024  # rows per tile in MADE.solve_by_degree: its (H, rows) activations stay in cache
Solve = Callable[[Array, Array], tuple[Array, Array]]


def activation_name(activation: Activation) -> str | Activation:
    """The name of a ``jax.nn`` activation (what checkpoints store), else the callable itself."""
    name = getattr(activation, "__name__", None)
    return name if name and getattr(jax.nn, name, None) is activation else activation


def activation_from_name(activation: str | Activation) -> Activation:
    """Inverse of ``activation_name``: ``"relu"`` → ``jax.nn.relu``; callables pass through."""
    if callable(activation):
        return activation
    found = getattr(jax.nn, str(activation), None)
    if not callable(found):
        raise ValueError(f"`activation` must be a jax.nn function or its name; got {activation!r}.")
    return found


def _torch_uniform(scale: float) -> nnx.Initializer:
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


class Linear(nnx.Module):
    """Affine map ``y = x W + b``; W: (in_features, out_features).

    Args:
      in_features, out_features: sizes.
      init_scale: W and b start ``U(±init_scale)``; default ``1/sqrt(in_features)`` as in
        PyTorch's ``nn.Linear``.
      rngs: initialisation keys.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        init_scale: float | None = None,
        rngs: nnx.Rngs,
    ):
        scale = 1.0 / math.sqrt(in_features) if init_scale is None else init_scale
        init = _torch_uniform(scale)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features)))
        self.bias = nnx.Param(init(rngs.params(), (out_features,)))
        self.in_features = in_features
        self.out_features = out_features

    def weight(self) -> Array:
        return self.kernel[...]

    def __call__(self, x: Array) -> Array:
        return x @ self.weight() + self.bias[...]


def input_degrees(features: int) -> np.ndarray:
    """MADE degrees of the inputs: 1..D."""
    return np.arange(1, features + 1)


def hidden_degrees(units: int, features: int) -> np.ndarray:
    """MADE degrees of hidden units: cycling over 1..D-1 (all 0 when D = 1)."""
    return np.arange(units) % max(1, features - 1) + min(1, features - 1)


def output_degrees(units: int, features: int) -> np.ndarray:
    """MADE degrees of outputs: each of 1..D repeated ``units // D`` times, interleaved."""
    return np.repeat(input_degrees(features), units // features)


def degrees(role: str, units: int, features: int) -> np.ndarray:
    """MADE degrees of a layer's units; ``role`` is "input", "hidden" or "output"."""
    if role == "input":
        return input_degrees(features)
    if role == "hidden":
        return hidden_degrees(units, features)
    return output_degrees(units, features)


@functools.lru_cache(maxsize=None)
def made_mask(in_role: str, in_units: int, out_role: str, out_units: int, features: int) -> np.ndarray:
    """The (in_units, out_units) 0/1 MADE mask between two layers of the given roles.

    A unit of degree d may feed a hidden unit of degree ≥ d and an output of degree > d, so
    output i depends only on inputs 1..i-1 (strictly autoregressive).
    """
    d_in = degrees(in_role, in_units, features)[:, None]
    d_out = degrees(out_role, out_units, features)[None, :]
    mask = d_out > d_in if out_role == "output" else d_out >= d_in
    return mask.astype(np.float32)


class MaskedLinear(Linear):
    """``y = x (W ⊙ M) + b`` with the MADE mask ``M = made_mask(in_role, out_role)``.

    The mask is a trace-time constant computed from static sizes, never stored.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        features: int,
        in_role: str,
        out_role: str,
        init_scale: float | None = None,
        rngs: nnx.Rngs,
    ):
        super().__init__(in_features, out_features, init_scale=init_scale, rngs=rngs)
        self.features = features
        self.in_role = in_role
        self.out_role = out_role

    def mask(self) -> np.ndarray:
        return made_mask(self.in_role, self.in_features, self.out_role, self.out_features, self.features)

    def weight(self) -> Array:
        return self.kernel[...] * self.mask()


def _batch_norm_affine(bn: nnx.BatchNorm) -> tuple[Array, Array]:
    """Eval-mode ``nnx.BatchNorm`` as ``x ↦ a ⊙ x + b``: ``a = γ / sqrt(σ² + ε)``, ``b = β - a μ``."""
    a = jax.lax.rsqrt(bn.var[...] + bn.epsilon)
    if bn.scale is not None:
        a = a * bn.scale[...]
    b = -a * bn.mean[...]
    if bn.bias is not None:
        b = b + bn.bias[...]
    return a, b


class Dropout(nnx.Module):
    """Inverted dropout with an explicit key; identity when ``deterministic`` (eval mode)."""

    def __init__(self, rate: float):
        self.rate = float(rate)
        self.deterministic = True

    def __call__(self, x: Array, key: Array | None) -> Array:
        if self.deterministic or self.rate == 0.0:
            return x
        if key is None:
            raise ValueError(
                f"dropout (rate {self.rate}) is active in training mode and needs a PRNG key: "
                "pass key=... to the call, or call model.eval()."
            )
        keep = jax.random.bernoulli(key, 1.0 - self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), 0.0)


class ResidualBlock(nnx.Module):
    """Pre-activation residual block, optionally masked (MADE) and conditioned.

    ``h' = h + L₁(drop(act(BN₁(L₀(act(BN₀(h))) [+ C(c)]))))`` with ``context_mode="add"``, or
    ``h' = h + L₁(…) ⊙ σ(C(c))`` with ``context_mode="glu"``.

    Args:
      features: width of h.
      context_features: width of c (0 for none).
      context_mode: ``"add"`` (nflows' MaskedResidualBlock) or ``"glu"`` (nflows' ResidualBlock).
      autoregressive_features: D for masked blocks (hidden → hidden MADE masks), or None.
      activation, dropout, batch_norm: as named; batch norm uses eps 1e-3 as nflows.
      rngs: initialisation keys.
    """

    def __init__(
        self,
        features: int,
        context_features: int,
        *,
        context_mode: str,
        autoregressive_features: int | None = None,
        activation: Activation = jax.nn.relu,
        dropout: float = 0.0,
        batch_norm: bool = False,
        rngs: nnx.Rngs,
    ):
        def linear(init_scale=None):
            if autoregressive_features is None:
                return Linear(features, features, init_scale=init_scale, rngs=rngs)
            return MaskedLinear(
                features,
                features,
                features=autoregressive_features,
                in_role="hidden",
                out_role="hidden",
                init_scale=init_scale,
                rngs=rngs,
            )

        self.context_mode = context_mode
        self.context_layer = (
            Linear(context_features, features, rngs=rngs) if context_features else None
        )
        self.batch_norms = (
            nnx.List(
                [
                    nnx.BatchNorm(features, epsilon=1e-3, momentum=0.9, use_running_average=True, rngs=rngs)
                    for _ in range(2)
                ]
            )
            if batch_norm
            else None
        )
        self.linear_0 = linear()
        self.linear_1 = linear(init_scale=1e-3)  # near zero: the block starts as identity
        self.activation = activation
        self.dropout = Dropout(dropout)

    def __call__(self, h: Array, context: Array | None, key: Array | None = None) -> Array:
        t = self.batch_norms[0](h) if self.batch_norms is not None else h
        t = self.linear_0(self.activation(t))
        if self.context_layer is not None and self.context_mode == "add":
            t = t + self.context_layer(context)
        if self.batch_norms is not None:
            t = self.batch_norms[1](t)
        t = self.linear_1(self.dropout(self.activation(t), key))
        if self.context_layer is not None and self.context_mode == "glu":
            t = t * jax.nn.sigmoid(self.context_layer(context))
        return h + t


class MADE(nnx.Module):
    """Conditional MADE with residual blocks: outputs (N, D, output_multiplier).

    ``out[:, i, :]`` depends on ``x[:, :i]`` and on the context only (strictly
    autoregressive in the natural order). Hidden degrees cycle over 1..D-1.

    Args:
      features: D.
      hidden_features: width of the hidden layers.
      context_features: C (0 for an unconditional MADE).
      num_blocks: residual blocks.
      output_multiplier: parameters per feature (2 for affine: raw scale, shift).
      activation, dropout, batch_norm: of the residual blocks.
      rngs: initialisation keys.
    """

    def __init__(
        self,
        features: int,
        hidden_features: int,
        context_features: int,
        *,
        num_blocks: int = 2,
        output_multiplier: int = 2,
        activation: Activation = jax.nn.relu,
        dropout: float = 0.0,
        batch_norm: bool = False,
        rngs: nnx.Rngs,
    ):
        self.features = features
        self.output_multiplier = output_multiplier
        self.initial_layer = MaskedLinear(
            features, hidden_features, features=features, in_role="input", out_role="hidden", rngs=rngs
        )
        self.context_layer = (
            Linear(context_features, hidden_features, rngs=rngs) if context_features else None
        )
        self.blocks = nnx.List(
            [
                ResidualBlock(
                    hidden_features,
                    context_features,
                    context_mode="add",
                    autoregressive_features=features,
                    activation=activation,
                    dropout=dropout,
                    batch_norm=batch_norm,
                    rngs=rngs,
                )
                for _ in range(num_blocks)
            ]
        )
        self.final_layer = MaskedLinear(
            hidden_features,
            features * output_multiplier,
            features=features,
            in_role="hidden",
            out_role="output",
            rngs=rngs,
        )
        self.activation = activation

    def __call__(self, x: Array, context: Array | None, key: Array | None = None) -> Array:
        h = self.initial_layer(x)
        if self.context_layer is not None:
            h = h + self.activation(self.context_layer(context))
        for block, k in zip(self.blocks, split_key(key, len(self.blocks))):
            h = block(h, context, k)
        out = self.final_layer(h)
        return out.reshape(*out.shape[:-1], self.features, self.output_multiplier)

    def can_solve_by_degree(self) -> bool:
        """True when ``solve_by_degree`` applies: eval mode (a fixed map), no active dropout."""
        return all(
            (b.batch_norms is None or b.batch_norms[0].use_running_average)
            and (b.dropout.deterministic or b.dropout.rate == 0.0)
            for b in self.blocks
        )

    def solve_by_degree(self, x: Array, context: Array | None, solve: Solve) -> tuple[Array, Array]:
        """Inverts an autoregressive map ``x_i = g(y_i; MADE(y | c)_i)`` for y, degree by degree.

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
        d, m = self.features, self.output_multiplier
        width = self.initial_layer.out_features
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

        w_in = rows(self.initial_layer)  # (H, D)
        b_in = units(self.initial_layer.bias[...])
        blocks = []
        for block in self.blocks:
            norms = [None, None] if block.batch_norms is None else [
                tuple(units(a) for a in _batch_norm_affine(bn)) for bn in block.batch_norms
            ]
            blocks.append(dict(
                block=block, norms=norms, w0=rows(block.linear_0, order), b0=units(block.linear_0.bias[...]),
                w1=rows(block.linear_1, order), b1=units(block.linear_1.bias[...]),
            ))
        w_out = self.final_layer.weight()[order].reshape(width, d, m).transpose(1, 2, 0)  # (D, m, H)
        b_out = self.final_layer.bias[...].reshape(d, m, 1)
        valid_table = jnp.asarray(window_degree)
        start_table = jnp.asarray(start, jnp.int32)

        def pre_activation(norm, h):
            return self.activation(h if norm is None else norm[0] * h + norm[1])

        def window(a: Array, w: Array) -> Array:
            return jax.lax.dynamic_slice_in_dim(a, w, g, axis=0)

        def solve_rows(x: Array, context: Array | None) -> tuple[Array, Array]:
            n = x.shape[0]
            c_in = b_in
            if self.context_layer is not None:
                c_in = c_in + units(self.activation(self.context_layer(context)))
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
                for blk, c, (a_in, a_mid) in zip(blocks, c_mid, stored):
                    norm_0 = None if blk["norms"][0] is None else tuple(window(v, w) for v in blk["norms"][0])
                    norm_1 = None if blk["norms"][1] is None else tuple(window(v, w) for v in blk["norms"][1])
                    a_in = jax.lax.dynamic_update_slice_in_dim(a_in, jnp.where(valid, pre_activation(norm_0, h), 0.0), w, 0)
                    t = window(blk["w0"], w) @ a_in + window(c, w)
                    a_mid = jax.lax.dynamic_update_slice_in_dim(a_mid, jnp.where(valid, pre_activation(norm_1, t), 0.0), w, 0)
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


class ResidualNet(nnx.Module):
    """Residual MLP ``[x, c] -> out``, the context also gating every block (GLU).

    The context enters only through linear maps, so it may be a single row (1, C) shared by
    all rows of x (classification evaluates every class this way).

    Args:
      in_features, out_features, hidden_features, context_features: sizes (C may be 0).
      num_blocks, activation, dropout, batch_norm: of the residual blocks.
      rngs: initialisation keys.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int,
        context_features: int,
        *,
        num_blocks: int = 2,
        activation: Activation = jax.nn.relu,
        dropout: float = 0.0,
        batch_norm: bool = False,
        rngs: nnx.Rngs,
    ):
        self.initial_layer = Linear(in_features + context_features, hidden_features, rngs=rngs)
        self.blocks = nnx.List(
            [
                ResidualBlock(
                    hidden_features,
                    context_features,
                    context_mode="glu",
                    activation=activation,
                    dropout=dropout,
                    batch_norm=batch_norm,
                    rngs=rngs,
                )
                for _ in range(num_blocks)
            ]
        )
        self.final_layer = Linear(hidden_features, out_features, rngs=rngs)

    def __call__(self, x: Array, context: Array | None, key: Array | None = None) -> Array:
        if context is None:
            h = self.initial_layer(x)
        else:  # Linear([x, c]) = x W_x + c W_c + b: c may be one row broadcast over x's rows
            kernel, d = self.initial_layer.weight(), x.shape[-1]
            h = x @ kernel[:d] + (context @ kernel[d:] + self.initial_layer.bias[...])
        for block, k in zip(self.blocks, split_key(key, len(self.blocks))):
            h = block(h, context, k)
        return self.final_layer(h)
