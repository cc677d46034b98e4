"""Evaluation: metrics and baselines, the judge CNN, figures and reports.

Classification metrics and the paper's baselines (``metrics``), the judge CNN that scores
generated digits (``judge``), the attribute classifiers that score faces and latents
(``attributes``), point-cloud distances and PointFlow's generation metrics
(``point_clouds``), figures (``plots``) and reports (``report``, ``report_celeba``).

``plots`` needs matplotlib and ``metrics``' baselines scikit-learn (the ``experiments``
extra); both are imported lazily, so this package imports without them.
"""

from fpn_jax.evaluation import attributes, judge, metrics, plots, point_clouds, report, report_celeba

__all__ = ["attributes", "judge", "metrics", "plots", "point_clouds", "report", "report_celeba"]
