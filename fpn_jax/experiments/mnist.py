"""The paper's MNIST experiments (section 5): one ``Config``, one ``train_and_evaluate``.

The same pipeline runs on Fashion-MNIST (``Config(dataset="fashion_mnist")``, the command
line's ``--dataset fashion_mnist``): its own run folder and its own model cache, no paper numbers.

For every base model (ConvVAE, ConvAE) and plugin (C-MAF, C-RealNVP)::

    images ──E──▶ latents ──fit──▶ p(z | y) ──▶ Bayes-rule accuracy, test NLL
                                          └──▶ samples ──D──▶ images ──judge CNN──▶ generation accuracy

``train_and_evaluate(config, workdir)`` does it all with the shared stages
(``fpn_jax.experiments.stages``) and writes ``metrics.json``, ``report.md`` and PNG figures
to ``workdir``; ``experiments/mnist.py`` (the command line), the tests and the notebooks
call it. ``Config()`` holds the paper's settings and ``quick(config)`` the named overlay for
a one-minute check of the whole pipeline (the command line's ``--quick``). Base models and
the judge CNN are trained once and cached (``Config.model_cache``), so a second run only
trains the plugins. The validation split (carved from the training images) drives every
early stopping; the test set is evaluated once, at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from fpn_jax import autoencoders, latents
from fpn_jax.data import Dataset, load_idx_dataset, subset
from fpn_jax.evaluation import judge, plots, report
from fpn_jax.evaluation.report import BASE_NAMES, PLUGIN_NAMES
from fpn_jax.experiments import stages
from fpn_jax.flows import ConditionalMAF, ConditionalRealNVP
from fpn_jax.train import History, TrainConfig

__all__ = [
    "BASES", "DATASETS", "PAPER", "PAPER_PATIENCE", "PLUGINS", "Config", "base_model", "encode", "evaluate_plugin",
    "fit_plugin", "judge_model", "load_data", "make_plugin", "parse_patience", "plugin_fingerprint",
    "plugin_settings", "plugin_train_config", "quick", "sample_grid", "train_and_evaluate",
]

BASES = ("conv_vae", "conv_ae")
PLUGINS = ("maf", "rnvp")
DATASETS = ("mnist", "fashion_mnist")
"""The data sets the experiment runs on (``Config.dataset``); both are read by ``load_idx_dataset``."""
PAPER = {"maf": 0.9677, "rnvp": 0.9616, "rbf_svm": 0.9603}
"""The paper's MNIST test accuracies (C-MAF and C-RealNVP on the VAE's latents, RBF SVM)."""
PAPER_PATIENCE = {("conv_vae", "maf"): 50, ("conv_vae", "rnvp"): 50, ("conv_ae", "maf"): 50, ("conv_ae", "rnvp"): 100}
"""Early-stopping patience (epochs) of the original code's four MNIST plugin configs
(``configs/mnist/flow/conv-{vae,ae}-{maf,rnvp}.yaml``; they stopped on test accuracy within
5,000 epochs, fpn-jax on the validation split's NLL within ``Config.plugin_epochs``)."""
GRID_COLUMNS = 10
"""Samples per class shown in each ``samples_*.png``."""
_OUT, _QUICK_OUT = "runs/mnist", "runs/mnist-quick"  # the default run folders (MNIST's)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on; the defaults are the paper's settings (the full run).

    ``quick(config)`` overlays the settings of a quick check; the command line fills the rest.

    Attributes:
      data_dir: folder with the four IDX files of ``dataset``; None: the files cached in
        ``$FPN_JAX_HOME/data/<dataset>``, downloaded there on first use (``load_idx_dataset``).
      dataset: ``"mnist"`` or ``"fashion_mnist"``.
      out: the run folder for metrics.json, report.md and figures (``train_and_evaluate``'s
        default ``workdir``). The default names (``runs/mnist``, and ``runs/mnist-quick`` of
        ``quick``) become ``runs/<dataset>`` and ``runs/<dataset>-quick`` for another dataset.
      bases, plugins: which combinations to run.
      seed: one seed for the data split, training and sampling.
      subset: (train, validation, test) sizes of class-balanced subsets drawn with ``seed``;
        None: all of MNIST (50,000 / 10,000 / 10,000).
      cache_dir: where trained base models and the judge are kept; None: the shared model
        cache (``fpn_jax.autoencoders.cache_dir()``), or ``out/cache`` with ``cache_in_out``.
        Models of a dataset other than MNIST go to a subfolder named after it
        (``model_cache``), so they never stand in for the MNIST models (kept by name).
      cache_in_out: keep the trained models in ``out/cache`` (for short runs, whose models
        must not stand in the shared cache for the paper's).
      base_epochs: at most this many epochs per base model (early stopping on validation).
      base_batch_size: images per base-model training step.
      base_learning_rates: Adam step size per base model (the original code's: 1e-3 VAE, 5e-3 AE).
      judge_epochs: training epochs of the judge CNN.
      plugin_epochs: at most this many epochs per plugin (the original code's cap was 5,000).
      plugin_patience: early-stopping patience on the validation NLL: ``"paper"`` (the
        original code's per-combination patience, ``PAPER_PATIENCE``: 50 epochs, 100 for
        ConvAE + C-RealNVP), an integer for every plugin, or None (train all ``plugin_epochs``).
      plugin_batch_size: latents per flow training step.
      vae_sample_latents: encode with z ~ q(z | x) as the original code did, not the mean.
      grid_search: the paper's 5-fold grid search for the baselines (slow).
      samples_per_class: conditional samples per class judged by the CNN.
      embedding_max_points: points per panel of the t-SNE figure.
    """

    data_dir: str | None = None
    dataset: str = "mnist"
    out: str = _OUT
    bases: tuple[str, ...] = BASES
    plugins: tuple[str, ...] = PLUGINS
    seed: int = 0
    subset: tuple[int, int, int] | None = None
    cache_dir: str | None = None
    cache_in_out: bool = False
    base_epochs: int = 10
    base_batch_size: int = 1024
    base_learning_rates: tuple[tuple[str, float], ...] = (("conv_vae", 1e-3), ("conv_ae", 5e-3))
    judge_epochs: int = 3
    plugin_epochs: int = 500
    plugin_patience: int | str | None = "paper"
    plugin_batch_size: int = 1024
    vae_sample_latents: bool = False
    grid_search: bool = False
    samples_per_class: int = 1000
    embedding_max_points: int = 1000

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"Config: `dataset` must be one of {DATASETS}; got {self.dataset!r}.")
        if self.dataset != "mnist" and self.out in (_OUT, _QUICK_OUT):  # the defaults name the dataset
            object.__setattr__(self, "out", self.out.replace("mnist", self.dataset, 1))
        for name, chosen, allowed in (("bases", self.bases, BASES), ("plugins", self.plugins, PLUGINS)):
            if not isinstance(chosen, tuple) or not chosen or set(chosen) - set(allowed):
                raise ValueError(f"Config: `{name}` must be a non-empty tuple of names from {allowed}; got {chosen!r}.")
        if self.subset is not None and (
            not isinstance(self.subset, tuple) or len(self.subset) != 3 or not all(_is_int(n, 1) for n in self.subset)
        ):
            raise ValueError(
                f"Config: `subset` must be None or (train, validation, test) sizes >= 1; got {self.subset!r}."
            )
        for name in ("base_epochs", "base_batch_size", "judge_epochs", "plugin_epochs", "plugin_batch_size",
                     "samples_per_class", "embedding_max_points"):
            if not _is_int(getattr(self, name), 1):
                raise ValueError(f"Config: `{name}` must be an integer >= 1; got {getattr(self, name)!r}.")
        if self.plugin_patience not in (None, "paper") and not _is_int(self.plugin_patience, 1):
            raise ValueError(
                f"Config: `plugin_patience` must be 'paper', None or an integer >= 1; got {self.plugin_patience!r}."
            )
        missing = sorted(set(self.bases) - set(dict(self.base_learning_rates)))
        if missing:
            raise ValueError(f"Config: `base_learning_rates` has no step size for {missing}.")

    @property
    def model_cache(self) -> Path:
        """The folder of the trained base models and judge (see ``cache_dir``).

        MNIST's models sit directly in it (``<cache>/conv_vae``, ``<cache>/judge``: the names
        ``fpn_jax.autoencoders.load`` looks up); another dataset's in ``<cache>/<dataset>/``.
        """
        if self.cache_dir is not None:
            root = Path(self.cache_dir)
        else:
            root = Path(self.out) / "cache" if self.cache_in_out else autoencoders.cache_dir()
        return root if self.dataset == "mnist" else root / self.dataset


def quick(config: Config | None = None) -> Config:
    """The quick overlay: ``config`` (default ``Config()``) with the settings of a quick check.

    A balanced 3000 / 1000 / 2000 subset, 3 base epochs in batches of 128, 1 judge epoch,
    15 plugin epochs in batches of 256, 100 samples per class, 500 t-SNE points, the run
    folder ``runs/mnist-quick`` (``runs/<dataset>-quick`` for another dataset) and the trained
    models kept in it (``out/cache``): the whole pipeline in about a minute on a CPU, with
    numbers that only show it works.
    ``experiments/mnist.py --quick`` is this overlay, then the other flags.
    """
    return dataclasses.replace(
        Config() if config is None else config,
        out=_QUICK_OUT, subset=(3000, 1000, 2000), cache_in_out=True, base_epochs=3, base_batch_size=128,
        judge_epochs=1, plugin_epochs=15, plugin_batch_size=256, samples_per_class=100, embedding_max_points=500,
    )


def plugin_settings(base: str) -> dict[str, Any]:
    """The paper's plugin hyper-parameters (C-MAF and C-RealNVP alike).

    5 layers × 2 blocks; hidden 40 on the VAE, hidden 100 with batch norm (within the
    conditioner and between layers) on the AE.
    """
    if base == "conv_vae":
        return dict(hidden_features=40, num_layers=5, num_blocks=2)
    return dict(hidden_features=100, num_layers=5, num_blocks=2, batch_norm_within=True, batch_norm_between=True)


def plugin_train_config(config: Config, base: str, plugin: str) -> TrainConfig:
    """The optimisation settings of ``plugin`` on ``base``: Adam 1e-3, ``plugin_*`` epochs, patience and batch.

    ``plugin_patience="paper"`` resolves to ``PAPER_PATIENCE[(base, plugin)]``.
    """
    patience = PAPER_PATIENCE[(base, plugin)] if config.plugin_patience == "paper" else config.plugin_patience
    return TrainConfig(max_epochs=config.plugin_epochs, patience=patience, batch_size=config.plugin_batch_size)


def parse_patience(text: str) -> int | str | None:
    """A command line's ``--plugin-patience``: ``"paper"``, ``"none"`` (None: no early stopping) or N >= 1.

    Raises:
      argparse.ArgumentTypeError: anything else, with what was expected and what was given (as
        an argparse ``type=`` it becomes the command line's error message).
    """
    if text == "paper":
        return text
    if text == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'paper', 'none' or an integer >= 1; got {text!r}")
    return value


def load_data(config: Config) -> Dataset:
    """``config.dataset`` with a validation split of 10k carved from the training images (or ``config.subset``)."""
    data = load_idx_dataset(config.dataset, config.data_dir, seed=config.seed)
    if config.subset is None:
        return data
    sizes = dict(zip(stages.SPLITS, config.subset, strict=True))
    return dataclasses.replace(data, **{s: subset(getattr(data, s), n, seed=config.seed) for s, n in sizes.items()})


def base_model(name: str, data: Dataset, config: Config) -> tuple[autoencoders.Autoencoder, dict[str, Any]]:
    """The frozen base model ``name`` from ``config.model_cache``, trained there (resumably) if absent."""
    rate = dict(config.base_learning_rates)[name]
    settings = dict(learning_rate=rate, max_epochs=config.base_epochs, batch_size=config.base_batch_size)
    return stages.cached_base_model(
        config.model_cache / name, lambda: autoencoders.create(name, seed=config.seed), data,
        key=jax.random.key(config.seed), train_settings=settings,
    )


def judge_model(data: Dataset, config: Config) -> tuple[judge.DigitCNN, dict[str, Any]]:
    """The independent CNN that judges generated digits (cached like the base models)."""
    return stages.cached_judge(
        config.model_cache / "judge", data, key=jax.random.key(config.seed + 1),
        config=judge.default_config(max_epochs=config.judge_epochs),
    )


def encode(model: autoencoders.Autoencoder, data: Dataset, config: Config) -> dict[str, np.ndarray]:
    """Latents of every split (the VAE: its posterior mean, or a sample with ``vae_sample_latents``)."""
    sample = config.vae_sample_latents and isinstance(model, autoencoders.ConvVAE)
    return stages.encode_splits(model, data, key=jax.random.key(config.seed + 2) if sample else None)


def make_plugin(
    base: str, plugin: str, latent_features: int, context_features: int, seed: int
) -> ConditionalMAF | ConditionalRealNVP:
    """A fresh C-MAF (``"maf"``) or C-RealNVP (``"rnvp"``) with the paper's settings for ``base``."""
    cls = ConditionalMAF if plugin == "maf" else ConditionalRealNVP
    return cls(latent_features, context_features, **plugin_settings(base), rngs=nnx.Rngs(seed))


def plugin_fingerprint(base: str, plugin: str, data: Dataset, config: Config, base_info: dict[str, Any]
                       ) -> dict[str, Any]:
    """What a trained plugin depends on: architecture, optimisation, seed, data and the base it was fitted on.

    The base model enters through its training record (``base_info``'s best epoch and
    validation loss, as ``base_model`` returns it, cached or not), so a plugin is not reused on
    a base model trained again.
    """
    return {"base": base, "plugin": plugin, "settings": plugin_settings(base),
            "train": dataclasses.asdict(plugin_train_config(config, base, plugin)), "seed": config.seed,
            "dataset": config.dataset, "data": {s: len(getattr(data, s)) for s in stages.SPLITS},
            "base_model": {"best_epoch": base_info.get("best_epoch"), "val_loss": base_info.get("val_loss")}}


def fit_plugin(
    base: str, plugin: str, model: autoencoders.Autoencoder, z: dict[str, np.ndarray], data: Dataset,
    config: Config, folder: str | os.PathLike, base_info: dict[str, Any],
) -> tuple[ConditionalMAF | ConditionalRealNVP, History, bool]:
    """The plugin ``plugin`` fitted on ``base``'s latents, trained into ``folder`` or loaded from it.

    ``stages.cached_fit`` under ``plugin_fingerprint``: a finished training with the same
    settings, data and base model is loaded (``cached`` True), an interrupted one resumed.

    Returns:
      ``(flow, history, cached)``: the flow at its best epoch (eval mode) and its history.
    """
    def train(where: Path) -> tuple[ConditionalMAF | ConditionalRealNVP, History]:
        flow = make_plugin(base, plugin, model.latent_features, data.context_features, config.seed)
        history = stages.fit_plugin(flow, z, data, key=jax.random.key(config.seed + 4),
                                    config=plugin_train_config(config, base, plugin), checkpoint_dir=where)
        return flow, history

    return stages.cached_fit(folder, train, fingerprint=plugin_fingerprint(base, plugin, data, config, base_info),
                             expect=ConditionalMAF if plugin == "maf" else ConditionalRealNVP)


def evaluate_plugin(
    flow: ConditionalMAF | ConditionalRealNVP, z: dict[str, np.ndarray], data: Dataset,
    base: autoencoders.Autoencoder, judge_: judge.DigitCNN, config: Config, out: Path, tag: str,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Bayes-rule accuracies, test NLL, samples and their judged accuracy; ``samples_<tag>.png`` into ``out``.

    Returns:
      ``(result, extra)``: the metrics, and the finite ``"samples"`` (F, D) with their
      ``"labels"`` (F,) and the judge's ``"per_class"`` accuracy (K,).
    """
    result = stages.evaluate_classification(flow, z, data)
    samples, labels = stages.sample_per_class(flow, data, config.samples_per_class, key=jax.random.key(config.seed + 3))
    generation, images, finite = stages.generation_accuracy(samples, labels, base, judge_, data.num_classes)
    result.update(generation)
    grid = sample_grid(images, labels[finite], data.num_classes, columns=min(GRID_COLUMNS, config.samples_per_class))
    plots.image_grid(grid, out / f"samples_{tag}.png", row_labels=[str(k) for k in range(data.num_classes)],
                     title=f"{_display(tag)}: conditional samples (row = class)")
    extra = {"samples": samples[finite], "labels": labels[finite],
             "per_class": np.asarray(generation["generation_accuracy_per_class"])}
    return result, extra


def sample_grid(images: np.ndarray, labels: np.ndarray, num_classes: int, *, columns: int) -> np.ndarray:
    """The first ``columns`` images of each class as a (K, columns, *image_shape) grid.

    A class with fewer images (overflowed samples are not decoded) is padded with blank
    (all-ones) images.

    Args:
      images: (N, *image_shape) decoded samples.
      labels: (N,) the class each was drawn for.
      num_classes: K, the rows.
      columns: images per row.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if labels.shape != images.shape[:1]:
        raise ValueError(
            f"sample_grid: `images` and `labels` must have the same rows; got {images.shape} and {labels.shape}."
        )
    grid = np.ones((num_classes, columns, *images.shape[1:]), np.float32)
    for k in range(num_classes):
        chosen = images[labels == k][:columns]
        grid[k, : len(chosen)] = chosen
    return grid


def train_and_evaluate(config: Config, workdir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Runs the whole experiment; writes (and returns) the metrics, the report and the figures.

    Args:
      config: the settings (``Config()``, ``quick(Config())``, or either with changes).
      workdir: the run folder (default ``config.out``; it becomes the recorded ``out``).

    Returns:
      What ``workdir/metrics.json`` holds: the config, environment, data sizes, judge, base
      models, baselines, per-plugin results and timings.
    """
    config, out = stages.run_folder(config, workdir)
    timer = stages.Timer()
    record: dict[str, Any] = {
        "config": _config_record(config), "environment": stages.environment(),
        "paper": PAPER if config.dataset == "mnist" else {},
        "base_models": {}, "baselines": {}, "results": {}, "timings": timer.seconds,
    }
    with timer("data"):
        data = load_data(config)
    record["data"] = {split: len(getattr(data, split)) for split in stages.SPLITS} | {"num_classes": data.num_classes}
    with timer("judge"):
        judge_, record["judge"] = judge_model(data, config)
    figures: dict[str, dict[str, Any]] = {"curves": {}, "per_class": {}}
    for base in config.bases:
        _run_base(base, data, judge_, config, out, timer, record, figures)
    plots.training_curves(figures["curves"], out / "training_curves.png", title="Plugin training (NLL per latent)")
    plots.per_class_bars(figures["per_class"], out / "generation_accuracy.png", ylabel="judge accuracy",
                         title="Does a sample for class k look like a k? (independent CNN)")
    record["timings"]["total"] = timer.total()
    stages.write_metrics(out, record)
    report.write_mnist_report(out, record)
    return record


def run(config: Config) -> dict[str, Any]:
    """Deprecated name of ``train_and_evaluate(config)`` (kept for one release)."""
    return train_and_evaluate(config)


def _run_base(
    base: str, data: Dataset, judge_: judge.DigitCNN, config: Config, out: Path, timer: stages.Timer,
    record: dict[str, Any], figures: dict[str, dict[str, Any]],
) -> None:
    """One base model: train or load it, encode, baselines, then every plugin; fills ``record``."""
    with timer(f"{base}/base_model"):
        model, record["base_models"][base] = base_model(base, data, config)
    with timer(f"{base}/encode"):
        z = encode(model, data, config)
        _base_figures(model, z, data, config, out, base)
    with timer(f"{base}/baselines"):
        record["baselines"][base] = stages.baselines(z, data, grid_search=config.grid_search, seed=config.seed)
    embedded = {"test latents": (z["test"], data.test.labels)}
    record["results"][base] = {}
    for plugin in config.plugins:
        tag, name = f"{base}_{plugin}", f"{BASE_NAMES[base]} {PLUGIN_NAMES[plugin]}"
        settings = plugin_train_config(config, base, plugin)
        with timer(f"{tag}/fit"):
            flow, history, _ = fit_plugin(base, plugin, model, z, data, config, out / "plugins" / tag,
                                          record["base_models"][base])
        figures["curves"][name] = {"train_nll": history.train_loss, "val_nll": history.val_loss}
        with timer(f"{tag}/evaluate"):
            result, extra = evaluate_plugin(flow, z, data, model, judge_, config, out, tag)
        record["results"][base][plugin] = result | stages.history_record(history) | {
            "patience": settings.patience, "max_epochs": settings.max_epochs}
        figures["per_class"][name] = extra["per_class"]
        embedded[f"{PLUGIN_NAMES[plugin]} samples"] = (extra["samples"], extra["labels"])
        stages.write_metrics(out, record)  # nothing lost if a later stage fails
    with timer(f"{base}/embedding"):
        plots.embedding_2d({k: v[0] for k, v in embedded.items()}, {k: v[1] for k, v in embedded.items()},
                           out / f"embedding_{base}.png", seed=config.seed, max_points=config.embedding_max_points,
                           title=f"{BASE_NAMES[base]} latents and plugin samples (t-SNE)")


def _base_figures(
    model: autoencoders.Autoencoder, z: dict[str, np.ndarray], data: Dataset, config: Config, out: Path, base: str
) -> None:
    """Reconstructions of test images and the base model's own unconditional samples."""
    originals = data.test.inputs[:20]
    plots.reconstructions(originals, latents.decode(model, z["test"][:20]), out / f"reconstructions_{base}.png",
                          title=f"{BASE_NAMES[base]}: test images (top) and reconstructions")
    key = jax.random.key(config.seed + 5)
    if isinstance(model, autoencoders.ConvVAE):
        prior = np.asarray(jax.random.normal(key, (100, model.latent_features)))
        what = "z ~ N(0, I)"
    else:  # an AE has no prior: a Gaussian fitted to its training latents
        mean, cov = z["train"].mean(0), np.cov(z["train"], rowvar=False)
        prior = np.asarray(jax.random.multivariate_normal(key, mean, cov, (100,)))
        what = "z ~ N(mean, cov of training latents)"
    plots.image_grid(latents.decode(model, prior.astype(np.float32)), out / f"unconditional_{base}.png", ncols=10,
                     title=f"{BASE_NAMES[base]}: unconditional samples, {what}")


def _config_record(config: Config) -> dict[str, Any]:
    """The config as JSON."""
    return stages.config_record(config)


def _display(tag: str) -> str:
    base, plugin = tag.rsplit("_", 1)
    return f"{BASE_NAMES[base]} + {PLUGIN_NAMES[plugin]}"


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low
