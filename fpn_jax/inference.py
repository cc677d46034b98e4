"""Inference with a trained conditional flow: Bayes-rule classification and manipulation.

* classification: ``ŷ = argmax_k log p(z | e_k) + log p(k)`` over one-hot contexts ``e_k``;
* manipulation: ``z' = T(T⁻¹(z | y) | y')``, the same noise decoded under a new context;
* attribute prediction (multi-hot contexts): ``log p(z | y) − log p(z | y ⊕ e_a)`` per attribute.

(Sampling is ``flow.sample(key, context)``.) The flow must be in eval mode: with batch
statistics the density of a latent would depend on the rest of the batch.

Inputs are checked as in ``ConditionalFlow``: shapes and dtypes always, values (NaN,
infinities) on concrete arrays, naming the first bad row; N = 0 latents give empty results.
A log-likelihood that overflows float32 for a finite latent raises ``FloatingPointError``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Float

from fpn_jax import validation as checks
from fpn_jax.flows.flow import ConditionalFlow
from fpn_jax.nn.mode import is_training
from fpn_jax.runtime import compiler, mesh
from fpn_jax.runtime.chunks import map_in_chunks
from fpn_jax.typing import Array, ClassLogLikelihoods, Context, Contexts, Labels, Latents


def _check_flow(flow: ConditionalFlow, where: str) -> None:
    if not isinstance(flow, ConditionalFlow):
        raise TypeError(
            f"{where}: argument `flow` must be a ConditionalFlow (ConditionalMAF, ConditionalRealNVP...); "
            f"got {type(flow).__name__}."
        )


def _require_eval(flow: ConditionalFlow, where: str) -> None:
    if is_training(flow):
        raise RuntimeError(f"{where}: the flow is in training mode (batch statistics); call flow.eval() first.")


def _log_likelihoods(graphdef: nnx.GraphDef, state: nnx.State, z: Array, contexts: Array) -> Array:
    flow = nnx.merge(graphdef, state)

    def under(context: Array) -> Array:
        # The context enters every layer linearly (c W + b), so one (1, C) row broadcast over
        # the N latents gives the same densities as N copies, with each layer's context
        # projection computed once per class instead of once per latent and class.
        return flow._log_prob(z, context[None, :], None)

    return jax.vmap(under, out_axes=1)(contexts)


@functools.cache
def _log_likelihoods_jit():
    """``_log_likelihoods`` jit-compiled (created at first use, see ``fpn_jax.runtime.compiler``)."""
    return compiler.jit(_log_likelihoods, static_argnums=0)


@checks.overflow_checked(
    what="log p(z | contexts_k)", where="class_log_likelihoods",
    hint="The latents probably lie far outside the data the flow was trained on.",
)
def class_log_likelihoods(
    flow: ConditionalFlow, z: Latents, contexts: Contexts | None = None, *, batch_size: int = 2048
) -> ClassLogLikelihoods:
    """``log p(z_n | contexts_k)`` for every latent and every candidate context, (N, K).

    Args:
      flow: a conditional flow in eval mode.
      z: (N, D) latents.
      contexts: (K, C) candidate contexts; default the C one-hot rows ``I_C``.
      batch_size: latents per compiled call (bounds memory: batch_size × K rows at once).

    Raises:
      ValueError: bad shapes, dtypes, non-finite rows or ``batch_size``, naming the argument.
      RuntimeError: the flow is in training mode.
      FloatingPointError: a log-likelihood overflowed float32 (names the rows of ``z``).
    """
    where = "class_log_likelihoods"
    _check_flow(flow, where)
    batch_size = checks.positive_int(batch_size, name="batch_size", where=where)
    _require_eval(flow, where)
    z = checks.as_float_matrix(z, name="z", width=flow.features, where=where, width_name="flow.features")
    if contexts is None:
        contexts = jnp.eye(flow.context_features)
    contexts = checks.as_float_matrix(
        contexts, name="contexts", width=flow.context_features, where=where, width_name="flow.context_features"
    )
    graphdef, state = nnx.split(flow)
    state, contexts = mesh.replicate((state, contexts))
    return map_in_chunks(
        lambda chunk: _log_likelihoods_jit()(graphdef, state, chunk, contexts), z, batch_size=batch_size
    )


def classify(
    flow: ConditionalFlow,
    z: Latents,
    *,
    log_prior: Float[Array, " C"] | None = None,
    batch_size: int = 2048,
) -> tuple[Labels, ClassLogLikelihoods]:
    """Bayes' rule over the C one-hot classes: ``p(k | z) ∝ p(z | k) p(k)``.

    Args:
      flow: a conditional flow in eval mode, trained on one-hot class contexts.
      z: (N, D) latents.
      log_prior: (C,) log class probabilities; default uniform.
      batch_size: latents per compiled call.

    Returns:
      ``(predictions, log_posterior)``: (N,) int32 class indices and (N, C) normalised
      log posteriors (``exp`` sums to 1 over each row; -inf where the prior is 0).

    Raises:
      ValueError: bad ``z`` (shape, dtype, non-finite row), ``log_prior`` (shape, NaN,
        +inf, or no class with prior > 0) or ``batch_size``.
      RuntimeError: the flow is in training mode.
      FloatingPointError: a log-likelihood overflowed float32 (see ``class_log_likelihoods``).
    """
    _check_flow(flow, "classify")
    if log_prior is not None:
        log_prior = _check_log_prior(flow, log_prior)
    log_lik = class_log_likelihoods(flow, z, batch_size=batch_size)
    if log_prior is not None:
        log_lik = log_lik + log_prior
    # log_softmax shifts by the row's maximum first: with log-likelihoods ~ -1e38 (extreme
    # latents) ``log_lik - logsumexp(log_lik)`` loses the log K and the posterior sums to K.
    log_posterior = jax.nn.log_softmax(log_lik, axis=1)
    return jnp.argmax(log_posterior, axis=1).astype(jnp.int32), log_posterior


def _check_log_prior(flow: ConditionalFlow, log_prior: Array) -> Array:
    if not hasattr(log_prior, "dtype"):
        log_prior = np.asarray(log_prior)
    if not jnp.issubdtype(log_prior.dtype, jnp.floating):
        raise ValueError(f"classify: argument `log_prior` must be a floating-point array; got dtype {log_prior.dtype}.")
    if tuple(log_prior.shape) != (flow.context_features,):
        raise ValueError(
            f"classify: argument `log_prior` must have shape ({flow.context_features},); "
            f"got {tuple(log_prior.shape)}."
        )
    if not checks.is_traced(log_prior):
        host = np.asarray(log_prior, np.float64)
        bad = np.flatnonzero(np.isnan(host) | (host == np.inf))
        if bad.size:
            raise ValueError(
                f"classify: argument `log_prior` must hold log-probabilities (finite, or -inf for a "
                f"class of prior 0); log_prior[{bad[0]}] = {host[bad[0]]}."
            )
        if not np.isfinite(host).any():
            raise ValueError("classify: argument `log_prior` gives every class prior 0 (all -inf).")
    return jnp.asarray(log_prior, jnp.float32)


def manipulate(flow: ConditionalFlow, z: Latents, context: Context, new_context: Context) -> Latents:
    """``z' = T(T⁻¹(z | context) | new_context)``: keep the noise, change the condition.

    Args:
      flow: a conditional flow in eval mode.
      z: (N, D) latents.
      context: (N, C) the latents' contexts.
      new_context: (N, C) the target contexts.

    Raises:
      ValueError: bad shapes, dtypes or non-finite rows, naming the argument.
      RuntimeError: the flow is in training mode.
      FloatingPointError: ``to_noise`` or ``from_noise`` overflowed float32, naming the rows.
    """
    where = "manipulate"
    _check_flow(flow, where)
    _require_eval(flow, where)
    arrays = {
        "z": checks.as_float_matrix(z, name="z", width=flow.features, where=where, width_name="flow.features"),
        **{
            name: checks.as_float_matrix(
                c, name=name, width=flow.context_features, where=where, width_name="flow.context_features"
            )
            for name, c in (("context", context), ("new_context", new_context))
        },
    }
    checks.same_rows(where, **arrays)
    return flow.from_noise(flow.to_noise(z, context), new_context)


def attribute_log_ratios(
    flow: ConditionalFlow, z: Latents, context: np.ndarray, *, batch_size: int = 256
) -> np.ndarray:
    """Bayes' rule for each binary attribute given the others: ``log p(z | y) − log p(z | y ⊕ e_a)``.

    For a latent z with its multi-hot context y ∈ {0, 1}^A and y ⊕ e_a, y with bit a flipped,

        r_a(z) = log p(z | y) − log p(z | y ⊕ e_a),    (N, A),

    is the log posterior odds of the true value of attribute a against the other one under a
    uniform prior on it, the other A − 1 attributes fixed at their true values: r_a > 0 means
    Bayes' rule predicts y_a correctly. Adding the prior log-odds ``log p(y_a) − log p(1 −
    y_a)`` gives the rule with that prior. Each chunk scores its rows under all A + 1 contexts
    at once (``batch_size · (A + 1)`` rows through the flow).

    Args:
      flow: the fitted plugin, in eval mode, with A = ``flow.context_features``.
      z: (N, D) latents.
      context: (N, A) their {0, 1} attribute rows.
      batch_size: latents per compiled call.

    Returns:
      (N, A) float32 log ratios (non-finite where a log-density overflowed).

    Raises:
      ValueError: shapes or values that do not fit the flow; RuntimeError: a flow in training mode.
    """
    where = "attribute_log_ratios"
    _check_flow(flow, where)
    z, context = flow._check_pair(where, "z", z, context)
    if not bool(np.all((np.asarray(context) == 0) | (np.asarray(context) == 1))):
        raise ValueError(f"{where}: argument `context` must hold 0 / 1 attribute rows.")
    _require_eval(flow, where)
    graphdef, state = nnx.split(flow)
    state = mesh.replicate(state)
    flips = np.concatenate([np.zeros((1, flow.context_features), np.float32),
                            np.eye(flow.context_features, dtype=np.float32)])
    compiled = _log_ratios_jit()
    return np.asarray(map_in_chunks(lambda zc, yc: compiled(graphdef, state, zc, yc, flips), z, context,
                                    batch_size=batch_size))


@functools.cache
def _log_ratios_jit() -> Callable[..., Any]:
    """``_log_ratios`` compiled with the flow programs' options (``fpn_jax.runtime.compiler``), made at first use."""
    return compiler.jit(_log_ratios, static_argnums=0)


def _log_ratios(graphdef: nnx.GraphDef, state: nnx.State, z: Any, y: Any, flips: Any) -> Any:
    flow = nnx.merge(graphdef, state)
    contexts = jnp.abs(y[None, :, :] - flips[:, None, :])  # (A + 1, B, A): y, then y with bit a flipped
    b = z.shape[0]
    log_p = flow._log_prob(jnp.tile(z, (flips.shape[0], 1)), contexts.reshape(-1, y.shape[1]), None)
    log_p = log_p.reshape(flips.shape[0], b)
    return (log_p[0][None, :] - log_p[1:]).T
