"""The one training loop, ``fit_model``: jitted epochs, early stopping and checkpoints.

Epochs of the one training step (``fpn_jax.train.step``) run as jitted scans, with early
stopping and orbax checkpoints to resume from.

The plugins (``fpn_jax.fit``), the base models (``fpn_jax.autoencoders.fit``) and the judge
CNN (``fpn_jax.evaluation.judge.fit_judge``) are all trained with it; they differ only in
the loss and the settings (``TrainConfig``). Per epoch ``e`` (counted from 0):

* the batches are ``ceil(N / B)`` rows of a fresh permutation (wrapping around to fill the last
  one), drawn from ``fold_in(key, e)``, so epoch ``e`` sees the same batches and dropout keys
  whether or not the run was interrupted before it;
* one ``jax.jit`` call runs the whole epoch as a ``lax.scan`` with the data on the device
  (or, for models with XLA convolutions on CPU, which XLA:CPU runs about 10x slower inside a
  loop than outside, one jitted call per step: ``runtime.compiler.prefers_stepping``); the
  model is split once into parameters, batch statistics and the rest, and merged (with
  ``copy=True``, so batch norm can update its statistics under ``jax.grad``) in the step;
* every batch is split over all devices and the parameters replicated (``fpn_jax.runtime.mesh``),
  so ``batch_size`` must be a multiple of the device count;
* on several processes (``fpn_jax.runtime.distributed``), the devices are all processes'
  devices, and the training (and validation) set is assembled from every process's arrays
  (each its share of the rows, or all the same: ``distributed.gather_rows``) and gathered onto
  every device, so the batches, losses, history and parameters are those of one process with
  the whole data set, in every process; checkpoints are written once (orbax) and the progress
  bar shows in process 0 only;
* the validation loss (eval mode) picks the best epoch; ``patience`` epochs without a
  better one stop the run; the model ends with the best epoch's state, in eval mode.

With ``checkpoint_dir``, after every epoch an orbax ``CheckpointManager`` writes (atomically)
everything needed to continue into ``checkpoint_dir/resume``: parameters, statistics,
optimizer state, the best state so far and the history; and each new best model (of a
registered architecture) goes to ``checkpoint_dir/best``, loadable with
``fpn_jax.checkpoint.load``. ``resume=True`` continues from there: the same epochs, optimizer state and
random stream as an uninterrupted run. A run that early stopping ended is only restored; one
that reached ``max_epochs`` continues if ``max_epochs`` is now larger.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from fpn_jax.runtime import compiler, distributed, mesh
from fpn_jax.runtime.chunks import map_in_chunks
from fpn_jax.train import step as step_lib
from fpn_jax.train.config import History, TrainConfig
from fpn_jax.train.resume import Store
from fpn_jax.train.step import BatchLoss, TrainState
from fpn_jax.typing import Array

# row_loss(model, batch) -> (rows,) per-row losses in eval mode, for validation.
RowLoss = Callable[[nnx.Module, tuple[Array, ...]], Array]


def fit_model(
    model: nnx.Module,
    loss: BatchLoss,
    data: tuple[Array, ...],
    *,
    key: Array,
    config: TrainConfig,
    validation: tuple[tuple[Array, ...], RowLoss] | None = None,
    name: str = "train",
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    per_step: bool | None = None,
) -> History:
    """Trains ``model`` in place; see the module docstring.

    Args:
      model: the module to train (only its ``nnx.Param`` leaves move).
      loss: ``loss(model, batch, key)``, the mean loss of a batch, in training mode.
      data: row-aligned training arrays (checked by the caller).
      key: PRNG key; epoch ``e`` uses ``fold_in(key, e)``.
      config: optimisation settings.
      validation: ``(arrays, row_loss)`` for early stopping; without it the last epoch is kept.
      name: shown on the progress bar and in error messages.
      progress: show a progress bar.
      checkpoint_dir: folder for the resumable training state (None: keep nothing on disk).
      resume: continue from the state in ``checkpoint_dir`` if there is one.
      per_step: run an epoch as one jitted call per step (True) or as one jitted ``lax.scan``
        over its steps (False); None: ``runtime.compiler.prefers_stepping(model)`` decides
        (steps for models with XLA convolutions on CPU). Both give the same batches, keys
        and updates.

    Raises:
      FloatingPointError: the training loss became NaN or infinite; the model keeps its best
        state so far and the checkpoint its last good epoch.
    """
    start = time.perf_counter()
    several = distributed.is_multiprocess()
    if several:  # one data set from every process's arrays; the same key and model in each
        data = distributed.gather_rows(data, where=name)
        distributed.check_same((key, nnx.state(model)), what="the key or the model's initial state", where=name)
        key = mesh.replicate(key, commit=True)  # one global key (a key committed to a local device would clash)
    n = data[0].shape[0]
    d = mesh.device_count()
    if config.batch_size < n:
        batch = config.batch_size
        mesh.check_divisible(batch, name="batch_size", where=name)
    elif n >= d:
        batch = n - n % d  # a small data set: one batch of (nearly) all rows
    else:
        raise ValueError(
            f"{name}: {n} training rows cannot be split over {d} devices; use fpn_jax.parallel.use_devices."
        )
    steps = math.ceil(n / batch)
    optimizer = config.optimizer(steps)
    skip = config.nonfinite == "skip"
    parts, state = step_lib.split(model, optimizer)
    # Data parallel: parameters, optimiser state and the training set on every device; each
    # batch split over the devices (fpn_jax.runtime.mesh); XLA all-reduces the gradient.
    parts, state, data = mesh.replicate((parts, state, data), commit=True)  # one compilation per epoch function
    step = step_lib.make_train_step(parts, loss, optimizer, skip_nonfinite=skip)

    def epoch_plan(key: Array) -> tuple[Array, Array]:
        """The epoch's batches (steps, batch) of row indices and its (steps,) step keys."""
        perm_key, step_key = jax.random.split(key)
        order = jnp.resize(jax.random.permutation(perm_key, n), (steps, batch))
        return order, jax.random.split(step_key, steps)

    def step_at(state: TrainState, data: tuple[Array, ...], rows: Array, k: Array):
        return step(state, mesh.constrain_rows(tuple(a[rows] for a in data)), k)

    def summary(values: Array, finite: Array) -> tuple[Array, Array, Array]:
        kept = jnp.sum(finite)
        mean = jnp.sum(jnp.where(finite, values, 0.0)) / jnp.maximum(kept, 1) if skip else jnp.mean(values)
        first_bad = jnp.argmin(finite)  # the first step with a non-finite loss or gradient (if any)
        return mean, steps - kept, first_bad

    @compiler.jit
    def scanned_epoch(state: TrainState, data: tuple[Array, ...], key: Array):
        def scan_step(state: TrainState, xs: tuple[Array, Array]):
            return step_at(state, data, *xs)

        state, (values, finite) = jax.lax.scan(scan_step, state, epoch_plan(key))
        return state, *summary(values, finite)

    jit_plan, jit_step, jit_summary = compiler.jit(epoch_plan), compiler.jit(step_at), compiler.jit(summary)

    def stepped_epoch(state: TrainState, data: tuple[Array, ...], key: Array):
        order, keys = jit_plan(key)
        values, finite = [], []
        for i in range(steps):
            state, (value, ok) = jit_step(state, data, order[i], keys[i])
            values.append(value)
            finite.append(ok)
        return state, *jit_summary(jnp.stack(values), jnp.stack(finite))

    if per_step is None:
        per_step = compiler.prefers_stepping(model)
    train_epoch = stepped_epoch if per_step else scanned_epoch

    if validation is not None:
        val_data, row_loss = validation
        if several:
            val_data = distributed.gather_rows(val_data, where=f"{name} (validation)")

        @compiler.jit
        def eval_rows(state: TrainState, *chunk: Array) -> Array:
            return row_loss(step_lib.evaluate(parts, state), chunk)

    def validate(state: TrainState) -> float:
        values = map_in_chunks(lambda *chunk: eval_rows(state, *chunk), *val_data, batch_size=config.eval_batch_size)
        return float(jnp.mean(values))

    history = History(train_loss=[], val_loss=[], best_epoch=-1, seconds=0.0)
    best = (state.params, state.stats)
    store = Store(checkpoint_dir, config) if checkpoint_dir is not None else None
    first_epoch = 0
    if store is not None and resume:
        restored = store.restore((*state, best))
        if restored is not None:
            trees, history = restored  # History is not a pytree: only the arrays go to the devices
            *restored_state, best = mesh.replicate(trees, commit=True)
            state = TrainState(*restored_state)
            first_epoch = len(history.train_loss)
    best_val = min(history.val_loss, default=np.inf)
    earlier = history.seconds  # a resumed run's wall time so far: kept, not restarted

    epochs = tqdm(
        range(first_epoch, config.max_epochs), desc=name,
        disable=not progress or history.finished or jax.process_index() != 0,
        unit="epoch", initial=first_epoch, total=config.max_epochs,
    )

    def _stop(what: str) -> None:
        kept = f"epoch {history.best_epoch + 1}" if history.best_epoch >= 0 else "initialisation"
        raise FloatingPointError(
            f"{name}: {what}; stopped. The model keeps its state from {kept}"
            + (f" and {store.directory} its last good epoch ({len(history.train_loss)})" if store is not None else "")
            + ". Lower the learning rate, check the data for NaN or extreme values, or pass "
            "TrainConfig(nonfinite='skip') to skip such steps."
        )

    try:
        for epoch in [] if history.finished else epochs:
            epoch_start = time.perf_counter()
            new_state, train_loss, skipped, first_bad = train_epoch(state, data, jax.random.fold_in(key, epoch))
            train_loss, skipped = float(train_loss), int(skipped)
            history.epoch_seconds.append(time.perf_counter() - epoch_start)
            if skipped == steps or (skipped and not skip):
                what = "every step" if skipped == steps else f"step {int(first_bad) + 1} of {steps}"
                _stop(f"the training loss or its gradient became NaN or infinite in {what} of epoch {epoch + 1}")
            state = new_state
            history.train_loss.append(train_loss)
            history.skipped_steps.append(skipped)
            postfix = {"train": f"{train_loss:.4f}"} | ({"skipped": str(sum(history.skipped_steps))} if skip else {})
            if validation is None:
                best, history.best_epoch = (state.params, state.stats), epoch
            else:
                val_loss = validate(state)
                if not math.isfinite(val_loss):
                    _stop(
                        f"the validation loss became {val_loss} after epoch {epoch + 1} "
                        f"(the training loss is {train_loss:.4g})"
                    )
                history.val_loss.append(val_loss)
                if val_loss < best_val:
                    best, best_val, history.best_epoch = (state.params, state.stats), val_loss, epoch
                    if store is not None:
                        store.save_best(step_lib.evaluate(parts, state), history)
                postfix.update(val=f"{val_loss:.4f}", best=f"{best_val:.4f}")
            epochs.set_postfix(postfix)
            stop = config.patience is not None and epoch - history.best_epoch >= config.patience
            history.finished = stop
            history.seconds = earlier + time.perf_counter() - start  # what a crash after this epoch keeps
            if store is not None:
                store.save(epoch, (*state, best), history)
            if stop:
                break
    finally:
        epochs.close()
        nnx.update(model, *best)
        model.eval()
        history.seconds = earlier + time.perf_counter() - start
        if store is not None:
            store.close()
    return history
