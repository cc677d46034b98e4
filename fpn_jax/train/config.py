"""Optimisation settings (``TrainConfig``) and what a run leaves behind (``History``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import optax
from flax import nnx

from fpn_jax import validation as checks


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
      schedule: the step size over the run: ``"constant"``, or ``"cosine"`` (decays from
        ``learning_rate`` to 0 along a cosine over all ``max_epochs`` epochs' steps).
      max_grad_norm: clip the gradient to this global norm before Adam (None: no clipping).
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
    schedule: str = "constant"
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig: `learning_rate` must be > 0; got {self.learning_rate!r}.")
        checks.positive_int(self.batch_size, name="batch_size", where="TrainConfig")
        checks.positive_int(self.max_epochs, name="max_epochs", where="TrainConfig")
        checks.positive_int(self.eval_batch_size, name="eval_batch_size", where="TrainConfig")
        if self.patience is not None:
            checks.positive_int(self.patience, name="patience", where="TrainConfig")
        if self.nonfinite not in ("stop", "skip"):
            raise ValueError(f"TrainConfig: `nonfinite` must be 'stop' or 'skip'; got {self.nonfinite!r}.")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"TrainConfig: `schedule` must be 'constant' or 'cosine'; got {self.schedule!r}.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"TrainConfig: `max_grad_norm` must be > 0 or None; got {self.max_grad_norm!r}.")

    def optimizer(self, steps_per_epoch: int) -> optax.GradientTransformation:
        """Adam with this config's step size schedule and gradient clipping.

        Args:
          steps_per_epoch: optimiser steps in one epoch (the cosine schedule spans
            ``max_epochs * steps_per_epoch`` of them).
        """
        rate: float | optax.Schedule = self.learning_rate
        if self.schedule == "cosine":
            rate = optax.cosine_decay_schedule(self.learning_rate, self.max_epochs * steps_per_epoch)
        adam = optax.adam(rate)
        if self.max_grad_norm is None:
            return adam
        return optax.chain(optax.clip_by_global_norm(self.max_grad_norm), adam)


@dataclasses.dataclass
class History:
    """The record of a training run: losses, the epoch kept, how it ended, timings, skipped steps.

    Per-epoch mean losses, the epoch whose state was kept (-1: none), and whether early
    stopping ended the run (a resumed run that reached ``max_epochs`` may go on with a larger one).
    ``seconds`` is the wall time of the whole run, ``epoch_seconds`` that of each training
    epoch alone (the first includes compilation); ``skipped_steps`` the steps per epoch that
    ``TrainConfig(nonfinite="skip")`` skipped.
    """

    train_loss: list[float]
    val_loss: list[float]
    best_epoch: int
    seconds: float
    finished: bool = False
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)
    skipped_steps: list[int] = dataclasses.field(default_factory=list)


def check_training_setup(model: nnx.Module, config: Any, rows: int, *, where: str, name: str) -> None:
    """Checks what ````fit_model```` needs before it compiles anything.

    ``config`` must be a ``TrainConfig``, there must be training rows, and a model with batch
    norm needs batches of at least two rows (the unbiased batch variance of one row is NaN).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"{where}: argument `config` must be a fpn_jax.TrainConfig; got {type(config).__name__}.")
    if rows == 0:
        raise ValueError(f"{where}: argument `{name}` has no rows (N = 0); there is nothing to train on.")
    has_batch_norm = any(hasattr(m, "use_running_average") for _, m in nnx.iter_modules(model))
    if has_batch_norm and min(config.batch_size, rows) < 2:
        raise ValueError(
            f"{where}: the model uses batch norm, which needs batches of at least 2 rows; got "
            f"batch_size={config.batch_size} and N={rows} rows of `{name}`."
        )
