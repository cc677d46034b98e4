"""Inference with a trained conditional flow: Bayes-rule classification and manipulation.

* classification: ``ŷ = argmax_k log p(z | e_k) + log p(k)`` over one-hot contexts ``e_k``;
* manipulation: ``z' = T(T⁻¹(z | y) | y')``, the same noise decoded under a new context.

(Sampling is ``flow.sample(key, context)``.) The flow must be in eval mode: with batch
statistics the density of a latent would depend on the rest of the batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from fpn_jax import _checks
from fpn_jax._batching import map_in_chunks
from fpn_jax.flows.flow import ConditionalFlow
from fpn_jax.flows.stack import is_training

Array = jax.Array


def _require_eval(flow: ConditionalFlow, where: str) -> None:
    if is_training(flow):
        raise RuntimeError(f"{where}: the flow is in training mode (batch statistics); call flow.eval() first.")


@functools.partial(jax.jit, static_argnums=0)
def _log_likelihoods(graphdef: nnx.GraphDef, state: nnx.State, z: Array, contexts: Array) -> Array:
    flow = nnx.merge(graphdef, state)

    def under(context: Array) -> Array:
        # The context enters every layer linearly (c W + b), so one (1, C) row broadcast over
        # the N latents gives the same densities as N copies, with each layer's context
        # projection computed once per class instead of once per latent and class.
        return flow._log_prob(z, context[None, :], None)

    return jax.vmap(under, out_axes=1)(contexts)


def class_log_likelihoods(
    flow: ConditionalFlow, z: Array, contexts: Array | None = None, *, batch_size: int = 2048
) -> Array:
    """``log p(z_n | contexts_k)`` for every latent and every candidate context, (N, K).

    Args:
      flow: a conditional flow in eval mode.
      z: (N, D) latents.
      contexts: (K, C) candidate contexts; default the C one-hot rows ``I_C``.
      batch_size: latents per compiled call (bounds memory: batch_size × K rows at once).
    """
    where = "class_log_likelihoods"
    _require_eval(flow, where)
    z = _checks.as_float_matrix(z, name="z", width=flow.features, where=where, width_name="flow.features")
    if contexts is None:
        contexts = jnp.eye(flow.context_features)
    contexts = _checks.as_float_matrix(
        contexts, name="contexts", width=flow.context_features, where=where, width_name="flow.context_features"
    )
    graphdef, state = nnx.split(flow)
    return map_in_chunks(
        lambda chunk: _log_likelihoods(graphdef, state, chunk, contexts), z, batch_size=batch_size
    )


def classify(
    flow: ConditionalFlow,
    z: Array,
    *,
    log_prior: Array | None = None,
    batch_size: int = 2048,
) -> tuple[Array, Array]:
    """Bayes' rule over the C one-hot classes: ``p(k | z) ∝ p(z | k) p(k)``.

    Args:
      flow: a conditional flow in eval mode, trained on one-hot class contexts.
      z: (N, D) latents.
      log_prior: (C,) log class probabilities; default uniform.
      batch_size: latents per compiled call.

    Returns:
      ``(predictions, log_posterior)``: (N,) int32 class indices and (N, C) normalised
      log posteriors.
    """
    log_lik = class_log_likelihoods(flow, z, batch_size=batch_size)
    if log_prior is not None:
        log_prior = jnp.asarray(log_prior, jnp.float32)
        if log_prior.shape != (flow.context_features,):
            raise ValueError(
                f"classify: argument `log_prior` must have shape ({flow.context_features},); "
                f"got {tuple(log_prior.shape)}."
            )
        log_lik = log_lik + log_prior
    log_posterior = log_lik - jax.nn.logsumexp(log_lik, axis=1, keepdims=True)
    return jnp.argmax(log_posterior, axis=1).astype(jnp.int32), log_posterior


def manipulate(flow: ConditionalFlow, z: Array, context: Array, new_context: Array) -> Array:
    """``z' = T(T⁻¹(z | context) | new_context)``: keep the noise, change the condition.

    Args:
      flow: a conditional flow in eval mode.
      z: (N, D) latents, ``context`` (N, C) their contexts, ``new_context`` (N, C) the targets.
    """
    _require_eval(flow, "manipulate")
    return flow.from_noise(flow.to_noise(z, context), new_context)
