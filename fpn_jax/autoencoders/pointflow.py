"""PointFlow's auto-encoder in Flax: a PointNet encoder and a conditional CNF point decoder.

The ShapeNet base model of Flow Plugin Networks (section 5.1.2): the all-category
auto-encoder of PointFlow (Yang, Huang, Hao, Liu, Belongie, Hariharan, "PointFlow: 3D Point
Cloud Generation with Continuous Normalizing Flows", ICCV 2019), whose decoder is a
continuous normalizing flow (Chen et al., 2018) trained with FFJORD's instantaneous
change of variables (Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud, "FFJORD: Free-form
Continuous Dynamics for Scalable Reversible Generative Models", ICLR 2019). Every layer copies
the original PyTorch code (stevenygd/PointFlow, ``models/``); ``fpn_jax.convert.pointflow``
reads its released weights. A cloud is x (P, d) with d = ``point_dims`` = 3, in normalised
coordinates ((p − mean) / std, the data set's statistics; not part of the model)::

    encoder  x (B, P, d)                                            (PointNetEncoder)
      [Dense d→128 → BN → ReLU] [128→128 → BN → ReLU] [128→256 → BN → ReLU] [256→512 → BN]
      max over the P points                                         (B, 512)
      Dense 512→256 → BN → ReLU → Dense 256→128 → BN → ReLU → Dense 128→L    z (B, L), L = 128

    decoder  the chain [MBN₀, CNF, MBN₂] maps a point x to y ~ N(0, I_d) given z    (PointCNF)
      MBN  (MovingBatchNorm)  y = (x − μ)(σ² + 1e-4)^(−1/2) e^w + b    (running μ, σ²)
      CNF  (ContinuousNormalizingFlow)  dx/dt = f(t, x, [t, z]) over t ∈ [0, T], T = s²
           f: ConcatSquash d→512→512→512→d, tanh between     (ODENet, ConcatSquashLinear)

The 1x1 convolutions are dense layers over the last axis; batch norm (eps 1e-5, torch
momentum 0.1 = Flax 0.9) normalises over clouds and points (torch's BatchNorm1d on (B, C, P)).
Each point moves independently given z, so the log-density of a cloud is the sum over its
points of the change of variables

    log p(x | z) = log N(y; 0, I) + log|det ∂y/∂x|,   log|det| = Σ_MBN Σ_k (w_k − ½ log(σ_k² + ε))
                                                                  + ∫_0^T tr(∂f/∂x)(t, x(t)) dt,

the CNF term FFJORD's instantaneous change of variables d log|det|/dt = tr ∂f/∂x. PointFlow
estimates the trace with Hutchinson's estimator; here the exact 3x3 trace (``jax.jacfwd`` per
point, three tangents) is cheap, so log-likelihoods are exact and deterministic.

Solves use diffrax: Dopri5 with a PID controller (rtol = atol = 1e-5, the original's
dopri5 settings at training and test time) by default, or classical fixed-step RK4
(``solver="rk4"``, ``rk4_steps`` steps) for exact comparisons and speed. Sampling integrates
backward in time (t from T to 0). The solver runs in normalised time s = t / T ∈ [0, 1]
(dx/ds = T f(sT, x)), the same RK4 steps, so that T is an argument of the field and every
adjoint differentiates it. Each cloud is solved separately (``jax.vmap``): its step
sizes are its own, so a result does not depend on the other clouds of the batch (torchdiffeq
shares one step-size sequence over the whole batch, so adaptive solves agree with the
original to about the tolerance, not bit for bit). Gradients go through the solver
(``adjoint="recursive"``: diffrax's ``RecursiveCheckpointAdjoint``, the default), or the
continuous adjoint of the original (``"backsolve"``), or ``"direct"``.

Training (``loss``) is PointFlow's auto-encoder objective (``prior_weight = entropy_weight =
0``): the negative log-likelihood of a cloud's points given its own code, summed over the
points, ``−log p(x | E(x))``; ``fpn_jax.autoencoders.fit`` averages it over the batch as the
original does. In training mode the moving batch norms normalise with their running statistics
as they were before the step (the original with ``bn_lag = 0``) and then update them with the
batch's, which the original computes over a channel-mixing reshape (see ``MovingBatchNorm``).

Deviations from the original, on purpose: the exact divergence instead of Hutchinson's
estimate; per-cloud adaptive step sizes; log-densities with the correct Gaussian constant
(PointFlow's ``standard_normal_logprob`` adds −(d/2) log 2π per *coordinate*, d = 3 times too
much; a constant that changes no gradient); Flax batch norm updates its running variance with
the biased batch variance (torch: unbiased). Point counts: ``data_shape`` is
(``num_points``, d), the nominal cloud size and the default of ``decode``; ``encode``,
``loss`` and ``log_likelihood`` accept clouds of any number P ≥ 1 of points.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fpn_jax import checkpoint
from fpn_jax import validation as checks
from fpn_jax.autoencoders.base import TrainableAutoencoder, check_data
from fpn_jax.data.base import Normalization
from fpn_jax.typing import Array, ArrayLike, Key

BN_MOMENTUM = 0.9  # torch's momentum=0.1
BN_EPSILON = 1e-5
MBN_EPSILON = 1e-4  # MovingBatchNorm1d's eps
MBN_DECAY = 0.1  # MovingBatchNorm1d's decay of the running statistics
SOLVERS = ("dopri5", "rk4")
ADJOINTS = ("recursive", "backsolve", "direct")
MBN_STATISTICS = ("pointflow", "per_axis")


# -- layers -----------------------------------------------------------------------------------
def _torch_linear(in_features: int, out_features: int, *, use_bias: bool = True, rngs: nnx.Rngs) -> nnx.Linear:
    """``nnx.Linear`` initialised as torch's ``nn.Linear``/``Conv1d``: weights and bias U(±1/√in)."""
    bound = 1.0 / math.sqrt(in_features)

    def uniform(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nnx.Linear(in_features, out_features, use_bias=use_bias, kernel_init=uniform, bias_init=uniform,
                      rngs=rngs)


def _batch_norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)


class PointNetEncoder(nnx.Module):
    """PointFlow's deterministic PointNet encoder: x (B, P, d) → z (B, L), invariant to point order.

    ``h = BN_K(W_K ⋯ ReLU(BN_1(W_1 x_p)))`` per point p (a 1x1 convolution is a dense layer on
    the last axis; no ReLU after the last), ``g = max_p h_p``, then
    ``z = W_out ReLU(BN(W g)) ⋯`` through the fully connected head.

    Attributes:
      convs, conv_norms: the per-point layers (torch ``conv{i}``, ``bn{i}``), widths ``conv_dims``.
      fcs, fc_norms: the head (torch ``fc{j}``, ``fc_bn{j}``), widths ``(*fc_dims, L)``.
    """

    def __init__(
        self, point_dims: int, latent_features: int, conv_dims: tuple[int, ...], fc_dims: tuple[int, ...],
        *, rngs: nnx.Rngs,
    ):
        widths = (point_dims, *conv_dims)
        self.convs = nnx.List([_torch_linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)])
        self.conv_norms = nnx.List([_batch_norm(b, rngs) for b in conv_dims])
        widths = (conv_dims[-1], *fc_dims, latent_features)
        self.fcs = nnx.List([_torch_linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)])
        self.fc_norms = nnx.List([_batch_norm(b, rngs) for b in fc_dims])

    def __call__(self, x: Array) -> Array:
        """Maps clouds x (B, P, d) → codes z (B, L)."""
        h = x
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.conv_norms, strict=True)):
            h = norm(conv(h))
            if i < last:
                h = jax.nn.relu(h)
        h = _max_over_points(h)
        for fc, norm in zip(self.fcs[:-1], self.fc_norms, strict=True):
            h = jax.nn.relu(norm(fc(h)))
        return self.fcs[-1](h)


def _max_over_points(h: Array) -> Array:
    """Max-pooling over the points, h (B, P, C) → (B, C), as ``torch.max(h, dim)[0]``.

    Taken at the argmax, so that the gradient goes to one point per channel (torch's rule)
    instead of ``jnp.max``'s ``(h == max) / count``: that mask is recomputed in the backward
    pass, and where XLA computes ``h`` there with other rounding than in the forward pass
    (seen with ``jax_disable_most_optimizations``) no entry equals the max, and the count
    of 0 turns the encoder's gradient into NaN.
    """
    return jnp.take_along_axis(h, jnp.argmax(h, axis=-2, keepdims=True), axis=-2)[..., 0, :]


class ConcatSquashLinear(nnx.Module):
    """FFJORD's context-modulated dense layer: ``(x Wᵀ + b) ⊙ σ(c W_gᵀ + b_g) + c W_bᵀ``.

    ``x`` (..., in) and the context ``c`` (..., C) broadcast against each other (one context
    for all the points of a cloud: c (C,) with x (P, in), or c (B, 1, C) with x (B, P, in)).

    Attributes:
      layer: W, b (torch ``_layer``). hyper_gate: W_g, b_g (``_hyper_gate``).
      hyper_bias: W_b, no bias (``_hyper_bias``).
    """

    def __init__(self, in_features: int, out_features: int, context_features: int, *, rngs: nnx.Rngs):
        self.layer = _torch_linear(in_features, out_features, rngs=rngs)
        self.hyper_gate = _torch_linear(context_features, out_features, rngs=rngs)
        self.hyper_bias = _torch_linear(context_features, out_features, use_bias=False, rngs=rngs)

    def __call__(self, x: Array, context: Array) -> Array:
        """(..., in), (..., C) → (..., out)."""
        return self.layer(x) * jax.nn.sigmoid(self.hyper_gate(context)) + self.hyper_bias(context)


class ODENet(nnx.Module):
    """The CNF's vector field f(x, c): ConcatSquash layers d → hidden... → d, tanh between them.

    The context is c = [t, z] (1 + L values, t first) as in PointFlow's ``ODEfunc``.
    """

    def __init__(self, point_dims: int, hidden_dims: tuple[int, ...], context_features: int, *, rngs: nnx.Rngs):
        widths = (point_dims, *hidden_dims, point_dims)
        self.layers = nnx.List([
            ConcatSquashLinear(a, b, context_features, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)
        ])

    def __call__(self, x: Array, context: Array) -> Array:
        """The field f for points x (..., d) given a broadcastable context (..., 1 + L) → (..., d)."""
        h = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h, context)
            if i < last:
                h = jnp.tanh(h)
        return h


class MovingBatchNorm(nnx.Module):
    """PointFlow's ``MovingBatchNorm1d`` (bn_lag 0): an affine bijection set by running statistics.

    Forward (data → prior), per coordinate k with running mean μ and variance σ²::

        y = (x − μ) (σ² + ε)^(−1/2) e^w + b,    log|det ∂y/∂x| = Σ_k (w_k − ½ log(σ_k² + ε))

    with ε = 1e-4 and the scale w kept in log space. Reverse: x = (y − b) e^(−w) (σ² + ε)^(1/2) + μ.
    Both always use the running statistics, as the original does with ``bn_lag = 0`` (in
    training mode too: there the statistics *before* this batch normalise it). In training
    mode (``use_running_average=False``) the forward pass then updates them,
    ``μ ← μ − 0.1 (μ − m)``, ``σ² ← σ² − 0.1 (σ² − v)``, with the batch's mean m and unbiased
    variance v. The original takes them over ``x.transpose(0, 1).reshape(d, -1)``, which for
    clouds (B, P, d) mixes coordinates (row k holds every coordinate of a third of the points);
    ``statistics="pointflow"`` (default) reproduces that, ``"per_axis"`` takes the per-coordinate
    statistics. No gradient flows through the statistics.

    Attributes:
      weight: w (d,), log scale.  bias: b (d,).  mean, var: running μ, σ² (d,) (``nnx.BatchStat``).
    """

    def __init__(self, features: int, *, statistics: str = "pointflow", use_running_average: bool = False):
        self.weight = nnx.Param(jnp.zeros(features))
        self.bias = nnx.Param(jnp.zeros(features))
        self.mean = nnx.BatchStat(jnp.zeros(features))
        self.var = nnx.BatchStat(jnp.ones(features))
        self.statistics = statistics
        self.use_running_average = use_running_average

    def _scale(self) -> tuple[Array, Array, Array]:
        # jnp.asarray: a checkpoint restores NumPy arrays, which an in-place update would change under us.
        mean = jax.lax.stop_gradient(jnp.asarray(self.mean[...]))
        var = jax.lax.stop_gradient(jnp.asarray(self.var[...]))
        return mean, var, -0.5 * jnp.log(var + MBN_EPSILON)

    def forward(self, x: Array) -> tuple[Array, Array]:
        """Data → prior: x (B, P, d) → (y (B, P, d), log|det ∂y/∂x| (B, P)); updates the statistics in training."""
        mean, var, log_inv_std = self._scale()
        if not self.use_running_average:
            self._update(x)
        y = (x - mean) * jnp.exp(log_inv_std)
        y = y * jnp.exp(self.weight[...]) + self.bias[...]
        logdet = jnp.broadcast_to(jnp.sum(self.weight[...] + log_inv_std), x.shape[:-1])
        return y, logdet

    def reverse(self, y: Array) -> Array:
        """Prior → data: y (..., d) → x (..., d), always with the running statistics."""
        mean, var, log_inv_std = self._scale()
        x = (y - self.bias[...]) * jnp.exp(-self.weight[...])
        return x * jnp.exp(-log_inv_std) + mean

    def _update(self, x: Array) -> None:
        d = x.shape[-1]
        x = jax.lax.stop_gradient(x)
        if self.statistics == "pointflow":
            rows = jnp.swapaxes(x, 0, 1).reshape(d, -1)  # torch: x.transpose(0, 1).reshape(d, -1)
        else:
            rows = x.reshape(-1, d).T
        batch_mean = jnp.mean(rows, axis=1)
        batch_var = jnp.var(rows, axis=1, ddof=1)
        mean, var = jnp.asarray(self.mean[...]), jnp.asarray(self.var[...])
        self.mean.set_value(mean - MBN_DECAY * (mean - batch_mean))  # a new array: no in-place write
        self.var.set_value(var - MBN_DECAY * (var - batch_var))


# -- the ODE solve ----------------------------------------------------------------------------
_rk4_tableau = diffrax.ButcherTableau(
    a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    b_error=np.array([1 / 6 - 1, 1 / 3, 1 / 3, 1 / 6]),  # vs Euler; unused with fixed steps
    c=np.array([0.5, 0.5, 1.0]),
)


class RK4(diffrax.AbstractERK):
    """The classical 4th-order Runge-Kutta method (fixed steps; diffrax has none built in)."""

    tableau: ClassVar[diffrax.ButcherTableau] = _rk4_tableau
    interpolation_cls: ClassVar[Callable[..., diffrax.ThirdOrderHermitePolynomialInterpolation]] = (
        diffrax.ThirdOrderHermitePolynomialInterpolation.from_k
    )

    def order(self, terms: Any) -> int:
        """The method's order of convergence, 4."""
        del terms
        return 4


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """How the CNF's ODEs are solved (hashable: part of the compiled program).

    Attributes:
      solver: ``"dopri5"`` (adaptive Dormand-Prince 5(4), a PID controller with ``rtol``,
        ``atol``) or ``"rk4"`` (classical RK4 with ``rk4_steps`` equal steps over [0, T]).
        Solves run in normalised time s = t / T (see ``_solve_clouds``).
      atol, rtol: the adaptive solver's tolerances (the original's 1e-5).
      rk4_steps: the number of RK4 steps.
      max_steps: the adaptive solver's step budget (diffrax raises when it is exhausted).
      adjoint: how gradients go through a solve: ``"recursive"`` (backpropagation through the
        solver with checkpointing), ``"backsolve"`` (the continuous adjoint, as the original's
        ``use_adjoint``) or ``"direct"``.
    """

    solver: str = "dopri5"
    atol: float = 1e-5
    rtol: float = 1e-5
    rk4_steps: int = 10
    max_steps: int = 4096
    adjoint: str = "recursive"

    def __post_init__(self) -> None:
        where = "PointFlow"
        if self.solver not in SOLVERS:
            raise ValueError(f"{where}: `solver` must be one of {SOLVERS}; got {self.solver!r}.")
        if self.adjoint not in ADJOINTS:
            raise ValueError(f"{where}: `adjoint` must be one of {ADJOINTS}; got {self.adjoint!r}.")
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"{where}: `{name}` must be a number in (0, 1); got {value!r}.")
            object.__setattr__(self, name, float(value))
        checks.positive_int(self.rk4_steps, name="rk4_steps", where=where)
        checks.positive_int(self.max_steps, name="max_steps", where=where)

    def solve(self, term: diffrax.ODETerm, y0: Any, args: Any, *, reverse: bool) -> Any:
        """Integrates ``term`` over s from 0 to 1 (from 1 to 0 with ``reverse``); the final state."""
        s0, s1 = (1.0, 0.0) if reverse else (0.0, 1.0)
        if self.solver == "rk4":
            solver, ds0 = RK4(), (s1 - s0) / self.rk4_steps
            controller, max_steps = diffrax.ConstantStepSize(), self.rk4_steps + 1
        else:
            solver, ds0 = diffrax.Dopri5(), None
            controller, max_steps = diffrax.PIDController(rtol=self.rtol, atol=self.atol), self.max_steps
        adjoint = {"recursive": diffrax.RecursiveCheckpointAdjoint, "backsolve": diffrax.BacksolveAdjoint,
                   "direct": diffrax.DirectAdjoint}[self.adjoint]()
        solution = diffrax.diffeqsolve(
            term, solver, s0, s1, ds0, y0, args=args, stepsize_controller=controller, adjoint=adjoint,
            max_steps=max_steps, saveat=diffrax.SaveAt(t1=True),
        )
        return jax.tree.map(lambda a: a[0], solution.ys)


def _context(t: Array, z: Array) -> Array:
    """The context c = [t, z] (1 + L,) for one cloud's code z (L,); t first as in the original."""
    return jnp.concatenate([jnp.reshape(t, (1,)).astype(z.dtype), z])


def _cloud_field(s: Array, x: Array, args: tuple) -> Array:
    """dx/ds = T f(sT, x, [sT, z]) for one cloud x (P, d), in normalised time s = t / T."""
    graphdef, params, z, end_time = args
    return end_time * nnx.merge(graphdef, params)(x, _context(s * end_time, z))


def _cloud_field_and_divergence(s: Array, state: tuple[Array, Array], args: tuple) -> tuple[Array, Array]:
    """(dx/ds, d log|det|/ds) = T (f, tr ∂f/∂x) at t = sT for one cloud: x (P, d) → ((P, d), (P,))."""
    graphdef, params, z, end_time = args
    f, divergence = _field_and_divergence(nnx.merge(graphdef, params), s * end_time, state[0], z)
    return end_time * f, end_time * divergence


def _field_and_divergence(net: ODENet, t: Array, x: Array, z: Array) -> tuple[Array, Array]:
    """The field f (P, d) and its exact divergence tr(∂f/∂x_p) (P,) per point (d x d Jacobians by jacfwd)."""
    context = _context(t, z)

    def one(point: Array) -> tuple[Array, Array]:
        out = net(point, context)
        return out, out

    jacobian, f = jax.vmap(jax.jacfwd(one, has_aux=True))(x)
    return f, jnp.trace(jacobian, axis1=-2, axis2=-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "options", "reverse", "with_logdet"))
def _solve_clouds(
    graphdef: nnx.GraphDef, params: nnx.State, x: Array, z: Array, end_time: Array, *,
    options: SolverOptions, reverse: bool, with_logdet: bool,
) -> tuple[Array, Array | None]:
    """Solves every cloud of x (B, P, d) given z (B, L) over t ∈ [0, T] (or T → 0); vmapped over clouds.

    The solve runs in normalised time s = t / T ∈ [0, 1], dx/ds = T f(sT, x): T is then an
    argument of the vector field, not an end point, so every adjoint differentiates it, and
    RK4 takes the same steps as in t (h_s T = h_t).
    """

    def one(xi: Array, zi: Array) -> tuple[Array, Array | None]:
        args = (graphdef, params, zi, end_time)
        if with_logdet:
            y0 = (xi, jnp.zeros(xi.shape[:-1], xi.dtype))
            return options.solve(diffrax.ODETerm(_cloud_field_and_divergence), y0, args, reverse=reverse)
        return options.solve(diffrax.ODETerm(_cloud_field), xi, args, reverse=reverse), None

    return jax.vmap(one)(x, z)


class ContinuousNormalizingFlow(nnx.Module):
    """A conditional CNF over points: dx/dt = f(t, x, [t, z]) on [0, T], T = s² (s trained).

    Forward (data → prior) solves from 0 to T with the log-determinant
    ``d log|det|/dt = tr ∂f/∂x`` (FFJORD; exact here); reverse solves from T back to 0.
    PointFlow's ``CNF`` with ``train_T=True`` keeps ``sqrt_end_time`` s (initialised at
    √time_length); with ``train_T=False``, T = ``time_length`` is fixed.

    Attributes:
      odenet: f.  sqrt_end_time: s (a scalar ``nnx.Param``), when ``train_T``.
      options: the ``SolverOptions``.
    """

    def __init__(
        self, point_dims: int, latent_features: int, hidden_dims: tuple[int, ...], *, time_length: float,
        train_T: bool, options: SolverOptions, rngs: nnx.Rngs,  # noqa: N803 (the original's name)
    ):
        self.odenet = ODENet(point_dims, hidden_dims, 1 + latent_features, rngs=rngs)
        self.train_T = bool(train_T)
        self.time_length = float(time_length)
        if self.train_T:
            self.sqrt_end_time = nnx.Param(jnp.sqrt(jnp.asarray(self.time_length, jnp.float32)))
        self.options = options

    @property
    def end_time(self) -> Array:
        """T = s² (or the fixed ``time_length``), a scalar."""
        if self.train_T:
            return self.sqrt_end_time[...] ** 2
        return jnp.asarray(self.time_length, jnp.float32)

    def field(self, t: ArrayLike, x: Array, z: Array) -> Array:
        """The vector field f(t, x, [t, z]): x (B, P, d), z (B, L) at time t → (B, P, d)."""
        t = jnp.asarray(t, z.dtype)
        context = jnp.concatenate([jnp.broadcast_to(t, (z.shape[0], 1)), z], axis=-1)
        return self.odenet(x, context[:, None, :])

    def field_and_divergence(self, t: ArrayLike, x: Array, z: Array) -> tuple[Array, Array]:
        """The field f (B, P, d) and its exact divergence tr ∂f/∂x per point (B, P) at time t."""
        t = jnp.asarray(t, z.dtype)
        return jax.vmap(lambda xi, zi: _field_and_divergence(self.odenet, t, xi, zi))(x, z)

    def forward(self, x: Array, z: Array) -> tuple[Array, Array]:
        """Data → prior: x (B, P, d) at t = 0 → (y at t = T, ∫ tr ∂f/∂x dt (B, P))."""
        graphdef, params = nnx.split(self.odenet)
        y, logdet = _solve_clouds(graphdef, params, x, z, self.end_time.astype(x.dtype), options=self.options,
                                  reverse=False, with_logdet=True)
        return y, logdet

    def reverse(self, y: Array, z: Array) -> Array:
        """Prior → data: y (B, P, d) at t = T → x at t = 0 (backward in time)."""
        graphdef, params = nnx.split(self.odenet)
        return _solve_clouds(graphdef, params, y, z, self.end_time.astype(y.dtype), options=self.options,
                             reverse=True, with_logdet=False)[0]


class PointCNF(nnx.Module):
    """PointFlow's point decoder flow, the chain [MBN₀, CNF, MBN₂] (``point_cnf.chain.{0,1,2}``).

    ``forward`` maps points x to y ~ N(0, I) given z, summing the log-determinants; ``reverse``
    runs the chain backwards. Without batch norm the chain is the CNF alone.

    Attributes:
      norm_in, norm_out: the ``MovingBatchNorm`` layers (None without batch norm).
      cnf: the ``ContinuousNormalizingFlow``.
    """

    def __init__(
        self, point_dims: int, latent_features: int, hidden_dims: tuple[int, ...], *, time_length: float,
        train_T: bool, batch_norm: bool, statistics: str, options: SolverOptions, rngs: nnx.Rngs,  # noqa: N803
    ):
        self.norm_in = MovingBatchNorm(point_dims, statistics=statistics) if batch_norm else None
        self.cnf = ContinuousNormalizingFlow(point_dims, latent_features, hidden_dims, time_length=time_length,
                                             train_T=train_T, options=options, rngs=rngs)
        self.norm_out = MovingBatchNorm(point_dims, statistics=statistics) if batch_norm else None

    def forward(self, x: Array, z: Array) -> tuple[Array, Array]:
        """Data → prior: x (B, P, d), z (B, L) → (y (B, P, d), log|det ∂y/∂x| (B, P)).

        PointFlow's ``point_cnf(x, z, 0)`` returns ``(y, −log|det|)`` (its Δ log p).
        """
        logdet = jnp.zeros(x.shape[:-1], x.dtype)
        if self.norm_in is not None:
            x, step = self.norm_in.forward(x)
            logdet = logdet + step
        x, step = self.cnf.forward(x, z)
        logdet = logdet + step
        if self.norm_out is not None:
            x, step = self.norm_out.forward(x)
            logdet = logdet + step
        return x, logdet

    def reverse(self, y: Array, z: Array) -> Array:
        """Prior → data: y (B, P, d), z (B, L) → x (B, P, d): MBN₂⁻¹, the CNF from T to 0, MBN₀⁻¹."""
        if self.norm_out is not None:
            y = self.norm_out.reverse(y)
        y = self.cnf.reverse(y, z)
        if self.norm_in is not None:
            y = self.norm_in.reverse(y)
        return y


# -- the auto-encoder -------------------------------------------------------------------------
class PointFlow(TrainableAutoencoder):
    """PointFlow's deterministic auto-encoder (``--use_deterministic_encoder``, no latent flow).

    ``encode``: clouds x (N, P, d) → z (N, L) (``PointNetEncoder``). ``decode(z, key=...,
    num_points=P)``: y ~ N(0, I) of shape (N, P, d) pushed through the inverse of the point
    flow given z (``PointCNF.reverse``); ``truncate_std=b`` draws y as the original's truncated
    normal (``truncated_normal``). The original's ``decode`` returns ``(y, x)``; this returns x
    (``noise_to_points`` maps a given y, ``points_to_noise`` back, with the log-determinant;
    ``configure_solver`` changes the solver). ``log_likelihood(x, z)``: log p(x | z) per
    cloud, summed over its points. ``loss``: −log p(x | E(x)) per cloud (the original's AE
    objective). Point clouds may have any number of points (see ``check_data``).

    The defaults are the released all-category model: L = 128, encoder widths
    (128, 128, 256, 512) and head (256, 128), ODE net 3 → 512 → 512 → 512 → 3, T = 0.5 trained,
    moving batch norm, Dopri5 with rtol = atol = 1e-5.

    Args:
      latent_features: L, the width of z.
      point_dims: d, coordinates per point.
      num_points: the nominal cloud size: ``data_shape = (num_points, d)`` and the default
        ``num_points`` of ``decode``.
      encoder_conv_dims: widths of the per-point layers.
      encoder_fc_dims: widths of the head's hidden layers.
      hidden_dims: the ODE net's hidden widths.
      time_length: the initial (or, without ``train_T``, fixed) integration time T.
      train_T: learn T = s² (PointFlow's ``sqrt_end_time``).
      batch_norm: the moving batch norms around the CNF.
      mbn_statistics: how the moving batch norms compute a batch's statistics in training
        (``"pointflow"``: as the original, see ``MovingBatchNorm``; ``"per_axis"``).
      solver, atol, rtol, rk4_steps, max_steps, adjoint: see ``SolverOptions``.
      rngs: parameter initialisation (torch's uniform ±1/√fan_in for the dense layers).
    """

    def __init__(
        self,
        latent_features: int = 128,
        *,
        point_dims: int = 3,
        num_points: int = 2048,
        encoder_conv_dims: tuple[int, ...] = (128, 128, 256, 512),
        encoder_fc_dims: tuple[int, ...] = (256, 128),
        hidden_dims: tuple[int, ...] = (512, 512, 512),
        time_length: float = 0.5,
        train_T: bool = True,  # noqa: N803 (the original's name)
        batch_norm: bool = True,
        mbn_statistics: str = "pointflow",
        solver: str = "dopri5",
        atol: float = 1e-5,
        rtol: float = 1e-5,
        rk4_steps: int = 10,
        max_steps: int = 4096,
        adjoint: str = "recursive",
        rngs: nnx.Rngs,
    ):
        where = "PointFlow"
        point_dims = checks.positive_int(point_dims, name="point_dims", where=where)
        num_points = checks.positive_int(num_points, name="num_points", where=where)
        super().__init__(latent_features, data_shape=(num_points, point_dims), data_range=None)
        conv_dims = _widths(encoder_conv_dims, "encoder_conv_dims", minimum=1)
        fc_dims = _widths(encoder_fc_dims, "encoder_fc_dims", minimum=0)
        hidden = _widths(hidden_dims, "hidden_dims", minimum=0)
        if isinstance(time_length, bool) or not isinstance(time_length, (int, float)) or not time_length > 0:
            raise ValueError(f"{where}: `time_length` must be a number > 0; got {time_length!r}.")
        for name, flag in (("train_T", train_T), ("batch_norm", batch_norm)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ValueError(f"{where}: `{name}` must be True or False; got {flag!r}.")
        if mbn_statistics not in MBN_STATISTICS:
            raise ValueError(f"{where}: `mbn_statistics` must be one of {MBN_STATISTICS}; got {mbn_statistics!r}.")
        options = SolverOptions(solver, atol, rtol, rk4_steps, max_steps, adjoint)
        self.point_dims = point_dims
        self.num_points = num_points
        self.hyperparameters = checks.frozen({
            "latent_features": self.latent_features, "point_dims": point_dims, "num_points": num_points,
            "encoder_conv_dims": conv_dims, "encoder_fc_dims": fc_dims, "hidden_dims": hidden,
            "time_length": float(time_length), "train_T": bool(train_T), "batch_norm": bool(batch_norm),
            "mbn_statistics": mbn_statistics, **dataclasses.asdict(options),
        })
        self.encoder = PointNetEncoder(point_dims, self.latent_features, conv_dims, fc_dims, rngs=rngs)
        self.point_cnf = PointCNF(point_dims, self.latent_features, hidden, time_length=float(time_length),
                                  train_T=bool(train_T), batch_norm=bool(batch_norm), statistics=mbn_statistics,
                                  options=options, rngs=rngs)

    # -- solver ----------------------------------------------------------------------------
    @property
    def solver_options(self) -> SolverOptions:
        """How the point flow's ODEs are solved."""
        return self.point_cnf.cnf.options

    def configure_solver(self, **options: Any) -> PointFlow:
        """Changes solver settings in place (e.g. ``solver="rk4", rk4_steps=8`` for fast decoding).

        Args:
          **options: any of ``solver``, ``atol``, ``rtol``, ``rk4_steps``, ``max_steps``, ``adjoint``.

        Returns:
          The model itself (its ``config`` records the new settings).
        """
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(SolverOptions)})
        if unknown:
            raise TypeError(f"PointFlow.configure_solver: unknown option(s) {unknown}; "
                            f"known: {[f.name for f in dataclasses.fields(SolverOptions)]}.")
        new = dataclasses.replace(self.solver_options, **options)
        self.point_cnf.cnf.options = new
        self.hyperparameters = checks.frozen(self.config | dataclasses.asdict(new))
        return self

    # -- checks ----------------------------------------------------------------------------
    def check_data(self, x: ArrayLike, *, name: str, where: str) -> Array:
        """``x`` checked to be point clouds (N, P, d) of finite floats, any P ≥ 1, as float32."""
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            x = np.asarray(x)
        shape = tuple(x.shape)
        if len(shape) != 3 or shape[2] != self.point_dims or shape[1] < 1:
            raise ValueError(
                f"{where}: argument `{name}` must be point clouds of shape (N, P, {self.point_dims}) (N clouds "
                f"of any P >= 1 points, normalised coordinates); got shape {shape}."
            )
        return check_data(x, shape[1:], name=name, where=where, data_range=None)

    def _check_pair(self, x: ArrayLike, z: ArrayLike, where: str) -> tuple[Array, Array]:
        x = self.check_data(x, name="x", where=where)
        z = checks.as_float_matrix(z, name="z", width=self.latent_features, where=where,
                                   width_name="latent_features")
        if x.shape[0] != z.shape[0]:
            raise ValueError(f"{where}: arguments `x` and `z` must have the same number of rows (clouds); "
                             f"got {x.shape[0]} and {z.shape[0]}.")
        return x, z

    # -- the maps --------------------------------------------------------------------------
    def _encode(self, x: Array, key: Key | None) -> Array:
        return self.encoder(x)

    def _decode(self, z: Array, key: Key | None, **options: Any) -> Array:
        where = "PointFlow.decode"
        unknown = sorted(set(options) - {"num_points", "truncate_std"})
        if unknown:
            raise TypeError(f"{where}: unknown option(s) {unknown}; it takes `num_points` and `truncate_std`.")
        if key is None:
            raise ValueError(f"{where}: argument `key` is required: the points are drawn y ~ N(0, I) and "
                             "mapped through the flow (pass key=jax.random.key(seed)).")
        num_points = options.get("num_points")
        num_points = self.num_points if num_points is None else checks.positive_int(
            num_points, name="num_points", where=where)
        truncate_std = options.get("truncate_std")
        shape = (z.shape[0], num_points, self.point_dims)
        if truncate_std is None:
            y = jax.random.normal(key, shape, z.dtype)
        else:
            if isinstance(truncate_std, bool) or not isinstance(truncate_std, (int, float)) or not truncate_std > 0:
                raise ValueError(f"{where}: `truncate_std` must be a number > 0 or None; got {truncate_std!r}.")
            y = truncated_normal(key, shape, float(truncate_std), z.dtype)
        return self.point_cnf.reverse(y, z)

    def noise_to_points(self, y: ArrayLike, z: ArrayLike) -> Array:
        """The decoder's map: prior points y (N, P, d) given z (N, L) → points x (N, P, d)."""
        y, z = self._check_pair(y, z, "PointFlow.noise_to_points")
        return self.point_cnf.reverse(y, z)

    def points_to_noise(self, x: ArrayLike, z: ArrayLike) -> tuple[Array, Array]:
        """The flow's forward map: x (N, P, d) given z → (y (N, P, d), log|det ∂y/∂x| (N, P))."""
        x, z = self._check_pair(x, z, "PointFlow.points_to_noise")
        return self.point_cnf.forward(x, z)

    def _point_log_likelihood(self, x: Array, z: Array) -> Array:
        y, logdet = self.point_cnf.forward(x, z)
        log_normal = -0.5 * jnp.sum(y**2, axis=-1) - 0.5 * self.point_dims * math.log(2 * math.pi)
        return log_normal + logdet

    def point_log_likelihood(self, x: ArrayLike, z: ArrayLike) -> Array:
        """The log-density log p(x_p | z) of every point (N, P): log N(y_p; 0, I) + log|det ∂y_p/∂x_p|."""
        x, z = self._check_pair(x, z, "PointFlow.point_log_likelihood")
        return self._point_log_likelihood(x, z)

    def log_likelihood(self, x: ArrayLike, z: ArrayLike) -> Array:
        """The log-likelihood log p(x | z) = Σ_p log p(x_p | z) per cloud (N,); / (P·d): nats per coordinate."""
        x, z = self._check_pair(x, z, "PointFlow.log_likelihood")
        return jnp.sum(self._point_log_likelihood(x, z), axis=-1)

    def _loss(self, x: Array, key: Key) -> tuple[Array, dict[str, Array]]:
        """−log p(x | E(x)) per cloud (N,), and it per coordinate (``nats``, PointFlow's ``recon_nats``)."""
        del key  # deterministic: exact divergence, deterministic encoder
        nll = -jnp.sum(self._point_log_likelihood(x, self.encoder(x)), axis=-1)
        return nll, {"nll": nll, "nats": nll / (x.shape[1] * x.shape[2])}


def truncated_normal(key: Key, shape: tuple[int, ...], bound: float, dtype: Any = jnp.float32) -> Array:
    """Normal draws kept within (−bound, bound) as PointFlow's ``truncated_normal`` does.

    Four draws per element; the first inside the bounds is kept, else the first draw.
    """
    draws = jax.random.normal(key, (*shape, 4), dtype)
    first = jnp.argmax(jnp.abs(draws) < bound, axis=-1)
    return jnp.take_along_axis(draws, first[..., None], axis=-1)[..., 0]


def read_normalization(path: str | os.PathLike) -> Normalization | None:
    """The data normalisation stored with a PointFlow checkpoint (``extra["normalization"]``), or None.

    ``python -m fpn_jax.convert pointflow ... --mean --std`` stores PointFlow's
    ``train_set_mean.npy`` / ``train_set_std.npy`` there: the model works on ``(p − mean) / std``.
    """
    stored = checkpoint.read_meta(path)["extra"].get("normalization")
    if stored is None:
        return None
    mean = np.asarray(stored["mean"], np.float32).reshape(1, -1)
    std = np.asarray(stored["std"], np.float32).reshape(1, -1)
    return Normalization(mean=mean, std=std)


def _widths(value: Any, name: str, *, minimum: int) -> tuple[int, ...]:
    try:
        widths = tuple(value)
    except TypeError:
        widths = None
    if widths is None or len(widths) < minimum:
        raise ValueError(f"PointFlow: `{name}` must be a sequence of at least {minimum} positive integers; "
                         f"got {value!r}.")
    return tuple(checks.positive_int(w, name=name, where="PointFlow") for w in widths)
