"""Training: one step (``step``), one loop (``fit_model``), and maximum likelihood for flows (``fit``).

Everything fpn-jax trains goes through ``fit_model``: the plugin flows (``fit``), the base
models (``fpn_jax.autoencoders.fit``) and the judge CNN (``fpn_jax.evaluation.judge.fit_judge``);
the benchmark times the same ``make_train_step``.
"""

from fpn_jax.train.config import History, TrainConfig
from fpn_jax.train.loop import fit_model
from fpn_jax.train.maximum_likelihood import fit
from fpn_jax.train.step import TrainState, make_train_step

__all__ = ["History", "TrainConfig", "TrainState", "fit", "fit_model", "make_train_step"]
