"""The resumable state of a training run, in an orbax ``CheckpointManager``.

``Store(directory, config)`` keeps the latest epoch's state (parameters, batch-norm
statistics, optimiser state, the best state so far) and the history in
``directory/resume``, written atomically by orbax after every epoch; each new best model (of
a registered architecture) goes to ``directory/best``, loadable with
``fpn_jax.checkpoint.load``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from fpn_jax import checkpoint
from fpn_jax.train.config import History, TrainConfig


class Store:
    """Resumable training state in an orbax ``CheckpointManager`` (the latest epoch only)."""

    def __init__(self, directory: str | os.PathLike, config: TrainConfig):
        self.directory = Path(directory).absolute()
        # What fixes the random stream and the optimiser; max_epochs and patience may change on
        # resume, except under a cosine schedule, whose length is max_epochs' steps. (Settings at
        # their defaults are left out, so folders written before they existed still resume.)
        self.config: dict[str, Any] = {"learning_rate": config.learning_rate, "batch_size": config.batch_size}
        if config.schedule != "constant":
            self.config |= {"schedule": config.schedule, "max_epochs": config.max_epochs}
        if config.max_grad_norm is not None:
            self.config["max_grad_norm"] = config.max_grad_norm
        self.manager = ocp.CheckpointManager(
            self.directory / "resume",
            options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False),
            item_handlers={"arrays": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        )

    def save(self, epoch: int, trees: Any, history: History) -> None:
        """Writes the state ``trees`` and the history after ``epoch`` (the previous epoch's is dropped)."""
        meta = {"config": self.config, "history": dataclasses.asdict(history)}
        leaves = {str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(trees))}
        self.manager.save(
            epoch, args=ocp.args.Composite(arrays=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta))
        )

    def save_best(self, model: nnx.Module, history: History) -> None:
        """Writes ``model`` to ``directory/best`` (if its architecture is registered)."""
        if getattr(type(model), "architecture", None) is not None:
            extra = {"epoch": history.best_epoch, "val_loss": history.val_loss[history.best_epoch]}
            checkpoint.save(self.directory / "best", model, extra=extra, overwrite=True)

    def restore(self, trees: Any) -> tuple[Any, History] | None:
        """The saved state (in the structure of ``trees``) and history, or None when nothing is saved."""
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
        """Waits for pending writes and releases the manager."""
        self.manager.close()
