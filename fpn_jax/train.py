"""Maximum-likelihood training of a conditional flow on (latent, context) pairs.

Minimises the mean negative log-likelihood ``-1/B Σ_n log p(z_n | y_n)`` over the flow's
``nnx.Param`` leaves with Adam. Only the flow moves: the latents are fixed data (a frozen
encoder's outputs), so nothing upstream can be updated.

The hot loop is pure: the model is split once (``nnx.split``) into its graph and its
parameter / batch-statistic / constant states, one jit-compiled function runs a whole epoch
as a ``lax.scan`` over shuffled mini-batches with the data kept on the device, and the model
is merged back at the end. Early stopping watches the validation NLL (eval mode) and restores
the best epoch's parameters.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from fpn_jax import _checks
from fpn_jax._batching import map_in_chunks
from fpn_jax.flows.flow import ConditionalFlow

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of ``fit`` (the paper's defaults: Adam 1e-3, batch 1024, early stopping).

    Attributes:
      learning_rate: Adam step size.
      batch_size: rows per step. Each epoch visits ``ceil(N / batch_size)`` batches of a fresh
        permutation, wrapping around to fill the last one.
      max_epochs: upper bound on epochs.
      patience: stop after this many epochs without a better validation NLL (None: never).
      eval_batch_size: rows per call when evaluating the validation NLL.
    """

    learning_rate: float = 1e-3
    batch_size: int = 1024
    max_epochs: int = 100
    patience: int | None = 10
    eval_batch_size: int = 4096

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig: `learning_rate` must be > 0; got {self.learning_rate!r}.")
        _checks.positive_int(self.batch_size, name="batch_size", where="TrainConfig")
        _checks.positive_int(self.max_epochs, name="max_epochs", where="TrainConfig")
        _checks.positive_int(self.eval_batch_size, name="eval_batch_size", where="TrainConfig")
        if self.patience is not None:
            _checks.positive_int(self.patience, name="patience", where="TrainConfig")


@dataclasses.dataclass
class History:
    """Per-epoch mean NLLs (nats per latent) and the epoch whose parameters were kept."""

    train_nll: list[float]
    val_nll: list[float]
    best_epoch: int
    seconds: float


def fit(
    flow: ConditionalFlow,
    z: Array,
    context: Array,
    *,
    key: Array,
    config: TrainConfig = TrainConfig(),
    validation: tuple[Array, Array] | None = None,
    progress: bool = True,
) -> History:
    """Trains ``flow`` in place by maximum likelihood; leaves it in eval mode.

    Args:
      flow: the conditional flow (its parameters are updated).
      z: (N, D) training latents.
      context: (N, C) float contexts of the latents.
      key: PRNG key for shuffling and dropout.
      config: optimisation settings.
      validation: optional ``(z_val, context_val)`` for early stopping and model selection;
        without it the last epoch is kept.
      progress: show a progress bar with the running NLLs.

    Returns:
      The training history.

    Raises:
      ValueError: bad shapes (see ``ConditionalFlow.log_prob``).
      FloatingPointError: the training NLL became NaN or infinite; the flow keeps the
        parameters of its best epoch so far.
    """
    start = time.perf_counter()
    z, context = flow._check_pair("fit", "z", z, context)
    key = _checks.check_key(key, where="fit")
    if validation is not None:
        z_val, c_val = flow._check_pair("fit (validation)", "z_val", *validation)

    flow.train()
    train_graph, params, stats, consts = nnx.split(flow, nnx.Param, nnx.BatchStat, ...)
    flow.eval()
    eval_graph = nnx.graphdef(flow)
    optimizer = optax.adam(config.learning_rate)
    opt_state = optimizer.init(params)

    n = z.shape[0]
    batch = min(config.batch_size, n)
    steps = math.ceil(n / batch)

    @jax.jit
    def train_epoch(params, stats, opt_state, z, context, key):
        perm_key, step_key = jax.random.split(key)
        order = jnp.resize(jax.random.permutation(perm_key, n), (steps, batch))

        def step(carry, xs):
            params, stats, opt_state = carry
            rows, k = xs

            def loss(params):
                model = nnx.merge(train_graph, params, stats, consts, copy=True)
                nll = -jnp.mean(model.log_prob(z[rows], context[rows], key=k))
                return nll, nnx.state(model, nnx.BatchStat)

            (nll, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), stats, opt_state), nll

        carry, nlls = jax.lax.scan(step, (params, stats, opt_state), (order, jax.random.split(step_key, steps)))
        return carry, jnp.mean(nlls)

    @jax.jit
    def eval_nll(params, stats, z, context):
        return -nnx.merge(eval_graph, params, stats, consts).log_prob(z, context)

    def mean_val_nll(params, stats) -> float:
        nll = map_in_chunks(
            lambda zc, cc: eval_nll(params, stats, zc, cc), z_val, c_val, batch_size=config.eval_batch_size
        )
        return float(jnp.mean(nll))

    history = History(train_nll=[], val_nll=[], best_epoch=-1, seconds=0.0)
    best = (params, stats)
    best_val = np.inf
    epochs = tqdm(range(config.max_epochs), desc=f"fit {type(flow).__name__}", disable=not progress, unit="epoch")
    try:
        for epoch in epochs:
            key, epoch_key = jax.random.split(key)
            (params, stats, opt_state), train_nll = train_epoch(params, stats, opt_state, z, context, epoch_key)
            train_nll = float(train_nll)
            history.train_nll.append(train_nll)
            if not math.isfinite(train_nll):
                kept = f"epoch {history.best_epoch + 1}" if history.best_epoch >= 0 else "initialisation"
                raise FloatingPointError(
                    f"fit: the training NLL became {train_nll} in epoch {epoch + 1}; the flow keeps "
                    f"its parameters from {kept}. Lower the learning rate or check the latents "
                    "for NaN or extreme values."
                )
            if validation is None:
                best, history.best_epoch = (params, stats), epoch
                epochs.set_postfix(train_nll=f"{train_nll:.4f}")
                continue
            val_nll = mean_val_nll(params, stats)
            history.val_nll.append(val_nll)
            if val_nll < best_val:
                best, best_val, history.best_epoch = (params, stats), val_nll, epoch
            epochs.set_postfix(train_nll=f"{train_nll:.4f}", val_nll=f"{val_nll:.4f}", best=f"{best_val:.4f}")
            if config.patience is not None and epoch - history.best_epoch >= config.patience:
                break
    finally:
        epochs.close()
        nnx.update(flow, *best)
        flow.eval()
        history.seconds = time.perf_counter() - start
    return history
