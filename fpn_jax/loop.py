"""The one training loop: Adam on ``nnx.Param`` leaves, epochs as jitted scans, early
stopping, and orbax checkpoints to resume from.

Both the plugin (``fpn_jax.train.fit``) and the base models
(``fpn_jax.autoencoders.training.train``) are trained with ``run``; they differ only in the
loss. Per epoch ``e`` (counted from 0):

* the batches are ``ceil(N / B)`` rows of a fresh permutation (wrapping around to fill the last
  one), drawn from ``fold_in(key, e)``, so epoch ``e`` sees the same batches and dropout keys
  whether or not the run was interrupted before it;
* one ``jax.jit`` call runs the whole epoch as a ``lax.scan`` with the data on the device;
  the model is split once into parameters, batch statistics and the rest, and merged (with
  ``copy=True``, so batch norm can update its statistics under ``jax.grad``) in the step;
* every batch is split over all devices and the parameters replicated (``fpn_jax.parallel``),
  so ``batch_size`` must be a multiple of the device count;
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

import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from fpn_jax import _checks, _compiler, checkpoint, parallel
from fpn_jax._batching import map_in_chunks

Array = jax.Array
# loss(model, batch, key) -> scalar mean loss of the batch; batch is a tuple of row-aligned arrays.
BatchLoss = Callable[[nnx.Module, tuple[Array, ...], Array], Array]
# row_loss(model, batch) -> (rows,) per-row losses in eval mode, for validation.
RowLoss = Callable[[nnx.Module, tuple[Array, ...]], Array]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the paper's defaults: Adam 1e-3, batch 1024, early stopping).

    Attributes:
      learning_rate: Adam step size.
      batch_size: rows per step. Each epoch visits ``ceil(N / batch_size)`` batches of a fresh
        permutation, wrapping around to fill the last one.
      max_epochs: upper bound on epochs.
      patience: stop after this many epochs without a better validation loss (None: never).
      eval_batch_size: rows per call when evaluating the validation loss.
      nonfinite: what a step whose loss or gradient is NaN or infinite does. ``"stop"``: the
        run stops with ``FloatingPointError`` (the model keeps its best state, the checkpoint
        its last good epoch). ``"skip"``: that step leaves parameters, statistics and
        optimiser state unchanged, and the run goes on; ``History.skipped_steps`` counts
        them, and an epoch whose steps were all skipped still stops the run.
    """

    learning_rate: float = 1e-3
    batch_size: int = 1024
    max_epochs: int = 100
    patience: int | None = 10
    eval_batch_size: int = 4096
    nonfinite: str = "stop"

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig: `learning_rate` must be > 0; got {self.learning_rate!r}.")
        _checks.positive_int(self.batch_size, name="batch_size", where="TrainConfig")
        _checks.positive_int(self.max_epochs, name="max_epochs", where="TrainConfig")
        _checks.positive_int(self.eval_batch_size, name="eval_batch_size", where="TrainConfig")
        if self.patience is not None:
            _checks.positive_int(self.patience, name="patience", where="TrainConfig")
        if self.nonfinite not in ("stop", "skip"):
            raise ValueError(f"TrainConfig: `nonfinite` must be 'stop' or 'skip'; got {self.nonfinite!r}.")


@dataclasses.dataclass
class History:
    """Per-epoch mean losses, the epoch whose state was kept (-1: none), and whether early
    stopping ended the run (a resumed run that reached ``max_epochs`` may go on with a larger one).
    ``seconds`` is the wall time of the whole run, ``epoch_seconds`` that of each training
    epoch alone (the first includes compilation); ``skipped_steps`` the steps per epoch that
    ``TrainConfig(nonfinite="skip")`` skipped."""

    train_loss: list[float]
    val_loss: list[float]
    best_epoch: int
    seconds: float
    finished: bool = False
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)
    skipped_steps: list[int] = dataclasses.field(default_factory=list)


def run(
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

    Raises:
      FloatingPointError: the training loss became NaN or infinite; the model keeps its best
        state so far and the checkpoint its last good epoch.
    """
    start = time.perf_counter()
    model.train()
    graph, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    model.eval()
    eval_graph = nnx.graphdef(model)
    optimizer = optax.adam(config.learning_rate)
    skip = config.nonfinite == "skip"
    opt_state = optimizer.init(params)

    n = data[0].shape[0]
    d = parallel.device_count()
    if config.batch_size < n:
        batch = config.batch_size
        parallel.check_divisible(batch, name="batch_size", where=name)
    elif n >= d:
        batch = n - n % d  # a small data set: one batch of (nearly) all rows
    else:
        raise ValueError(f"{name}: {n} training rows cannot be split over {d} devices; use fpn_jax.parallel.use_devices.")
    steps = math.ceil(n / batch)
    # Data parallel: parameters, optimiser state and the training set on every device; each
    # batch split over the devices (fpn_jax.parallel); XLA all-reduces the gradient.
    params, stats, rest, opt_state, data = parallel.replicate((params, stats, rest, opt_state, data))

    @_compiler.jit
    def train_epoch(params, stats, opt_state, data, key):
        perm_key, step_key = jax.random.split(key)
        order = jnp.resize(jax.random.permutation(perm_key, n), (steps, batch))

        def step(carry, xs):
            params, stats, opt_state = carry
            rows, k = xs

            def batch_loss(params):
                merged = nnx.merge(graph, params, stats, rest, copy=True)
                value = loss(merged, parallel.constrain_rows(tuple(a[rows] for a in data)), k)
                return value, nnx.state(merged, nnx.BatchStat)

            (value, new_stats), grads = jax.value_and_grad(batch_loss, has_aux=True)(params)
            updates, new_opt_state = optimizer.update(grads, opt_state, params)
            new = (optax.apply_updates(params, updates), new_stats, new_opt_state)
            finite = jnp.isfinite(value) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
            if skip:
                new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, (params, stats, opt_state))
            return new, (value, finite)

        carry, (values, finite) = jax.lax.scan(
            step, (params, stats, opt_state), (order, jax.random.split(step_key, steps))
        )
        kept = jnp.sum(finite)
        mean = jnp.sum(jnp.where(finite, values, 0.0)) / jnp.maximum(kept, 1) if skip else jnp.mean(values)
        first_bad = jnp.argmin(finite)  # the first step with a non-finite loss or gradient (if any)
        return carry, mean, steps - kept, first_bad

    if validation is not None:
        val_data, row_loss = validation

        @_compiler.jit
        def eval_rows(params, stats, *chunk):
            return row_loss(nnx.merge(eval_graph, params, stats, rest), chunk)

    def validate(params, stats) -> float:
        values = map_in_chunks(
            lambda *chunk: eval_rows(params, stats, *chunk), *val_data, batch_size=config.eval_batch_size
        )
        return float(jnp.mean(values))

    history = History(train_loss=[], val_loss=[], best_epoch=-1, seconds=0.0)
    best = (params, stats)
    store = _Store(checkpoint_dir, config) if checkpoint_dir is not None else None
    first_epoch = 0
    if store is not None and resume:
        restored = store.restore((params, stats, opt_state, best))
        if restored is not None:
            (params, stats, opt_state, best), history = parallel.replicate(restored)
            first_epoch = len(history.train_loss)
    best_val = min(history.val_loss, default=np.inf)

    epochs = tqdm(
        range(first_epoch, config.max_epochs), desc=name, disable=not progress or history.finished,
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
            (new_params, new_stats, new_opt_state), train_loss, skipped, first_bad = train_epoch(
                params, stats, opt_state, data, jax.random.fold_in(key, epoch)
            )
            train_loss, skipped = float(train_loss), int(skipped)
            history.epoch_seconds.append(time.perf_counter() - epoch_start)
            if skipped == steps or (skipped and not skip):
                what = "every step" if skipped == steps else f"step {int(first_bad) + 1} of {steps}"
                _stop(f"the training loss or its gradient became NaN or infinite in {what} of epoch {epoch + 1}")
            params, stats, opt_state = new_params, new_stats, new_opt_state
            history.train_loss.append(train_loss)
            history.skipped_steps.append(skipped)
            postfix = {"train": f"{train_loss:.4f}"} | ({"skipped": str(sum(history.skipped_steps))} if skip else {})
            if validation is None:
                best, history.best_epoch = (params, stats), epoch
            else:
                val_loss = validate(params, stats)
                if not math.isfinite(val_loss):
                    _stop(f"the validation loss became {val_loss} after epoch {epoch + 1} (the training loss is {train_loss:.4g})")
                history.val_loss.append(val_loss)
                if val_loss < best_val:
                    best, best_val, history.best_epoch = (params, stats), val_loss, epoch
                    if store is not None:
                        store.save_best(nnx.merge(eval_graph, params, stats, rest), history)
                postfix.update(val=f"{val_loss:.4f}", best=f"{best_val:.4f}")
            epochs.set_postfix(postfix)
            stop = config.patience is not None and epoch - history.best_epoch >= config.patience
            history.finished = stop
            if store is not None:
                store.save(epoch, (params, stats, opt_state, best), history)
            if stop:
                break
    finally:
        epochs.close()
        nnx.update(model, *best)
        model.eval()
        history.seconds += time.perf_counter() - start
        if store is not None:
            store.close()
    return history


class _Store:
    """Resumable training state in an orbax ``CheckpointManager`` (the latest epoch only)."""

    def __init__(self, directory: str | os.PathLike, config: TrainConfig):
        self.directory = Path(directory).absolute()
        # What fixes the random stream and the optimiser; max_epochs and patience may change on resume.
        self.config = {"learning_rate": config.learning_rate, "batch_size": config.batch_size}
        self.manager = ocp.CheckpointManager(
            self.directory / "resume",
            options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False),
            item_handlers={"arrays": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        )

    def save(self, epoch: int, trees: Any, history: History) -> None:
        meta = {"config": self.config, "history": dataclasses.asdict(history)}
        leaves = {str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(trees))}
        self.manager.save(
            epoch, args=ocp.args.Composite(arrays=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta))
        )

    def save_best(self, model: nnx.Module, history: History) -> None:
        if getattr(type(model), "architecture", None) is not None:
            extra = {"epoch": history.best_epoch, "val_loss": history.val_loss[history.best_epoch]}
            checkpoint.save(self.directory / "best", model, extra=extra, overwrite=True)

    def restore(self, trees: Any) -> tuple[Any, History] | None:
        step = self.manager.latest_step()
        if step is None:
            return None
        leaves, treedef = jax.tree.flatten(trees)
        target = {str(i): np.asarray(x) for i, x in enumerate(leaves)}
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
            )
        except Exception as error:
            raise ValueError(
                f"{self.directory}: cannot resume from the checkpoint of epoch {step + 1} "
                f"({type(error).__name__}: {error}). Delete the folder to start over."
            ) from None
        if restored["meta"]["config"] != self.config:
            raise ValueError(
                f"{self.directory}: holds a run with other settings {restored['meta']['config']}; "
                f"this run has {self.config}. Use another folder, or delete it to start over."
            )
        arrays = [jnp.asarray(restored["arrays"][str(i)]) for i in range(len(leaves))]
        return jax.tree.unflatten(treedef, arrays), History(**restored["meta"]["history"])

    def close(self) -> None:
        self.manager.close()
