"""Evaluation: metrics and baselines, the judge CNN, figures and reports.

Classification metrics and the paper's baselines (``metrics``), the judge CNN that scores
generated images (``judge``), figures (``plots``) and reports (``report``).

``plots`` needs matplotlib and ``metrics``' baselines scikit-learn (the ``experiments``
extra); both are imported lazily, so this package imports without them.
"""

from fpn_jax.evaluation import judge, metrics, plots, point_clouds, report

__all__ = ["judge", "metrics", "plots", "point_clouds", "report"]
