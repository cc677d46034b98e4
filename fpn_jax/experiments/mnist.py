"""The paper's MNIST experiments (section 5), end to end, as importable steps.

For every base model (ConvVAE, ConvAE) and plugin (C-MAF, C-RealNVP)::

    images ──E──▶ latents ──fit──▶ p(z | y) ──▶ Bayes-rule accuracy, test NLL
                                          └──▶ samples ──D──▶ images ──judge CNN──▶ generation accuracy

``run(config)`` does it all and writes ``metrics.json``, ``report.md`` and PNG figures to
``config.out``; ``experiments/mnist.py`` is a thin command line over it. Base models and the
judge CNN are trained once and cached (``config.cache_dir``), so a second run only trains
the plugins. The validation split (carved from the training images) drives every early
stopping; the test set is evaluated once, at the end.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fpn_jax import autoencoders, checkpoint, judge, latents, metrics
from fpn_jax.autoencoders import training
from fpn_jax.context import one_hot
from fpn_jax.data import Dataset, load_mnist, subset
from fpn_jax.experiments import report
from fpn_jax.experiments.report import BASE_NAMES, PLUGIN_NAMES
from fpn_jax.flows import ConditionalMAF, ConditionalRealNVP
from fpn_jax.inference import class_log_likelihoods
from fpn_jax.loop import TrainConfig
from fpn_jax.train import fit

BASES = ("conv_vae", "conv_ae")
PLUGINS = ("maf", "rnvp")
PAPER = {"maf": 0.9677, "rnvp": 0.9616, "rbf_svm": 0.9603}
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on (the command line fills it).

    Attributes:
      data_dir: folder with the four MNIST IDX files; None: tensorflow-datasets.
      out: run folder for metrics.json, report.md and figures.
      bases, plugins: which combinations to run.
      seed: one seed for data split, training and sampling.
      quick: a small subset (3000 / 1000 / 2000 images), batches of 128 for the base models and
        256 for the plugins, 3 base epochs: checks the whole pipeline in about a minute.
      cache_dir: where trained base models and the judge are kept (default: the model cache).
      base_epochs: at most this many epochs per base model (early stopping on validation).
      base_learning_rates: Adam step size per base model (the original code's: 1e-3 VAE, 5e-3 AE).
      plugin_epochs, plugin_patience: flow training length and early-stopping patience.
      vae_sample_latents: encode with z ~ q(z | x) as the original code did, not the mean.
      grid_search: the paper's 5-fold grid search for the baselines (slow).
      samples_per_class: conditional samples per class judged by the CNN.
    """

    data_dir: str | None = None
    out: str = "runs/mnist"
    bases: tuple[str, ...] = BASES
    plugins: tuple[str, ...] = PLUGINS
    seed: int = 0
    quick: bool = False
    cache_dir: str | None = None
    base_epochs: int = 10
    base_learning_rates: tuple[tuple[str, float], ...] = (("conv_vae", 1e-3), ("conv_ae", 5e-3))
    plugin_epochs: int = 100
    plugin_patience: int = 10
    vae_sample_latents: bool = False
    grid_search: bool = False
    samples_per_class: int = 1000

    def __post_init__(self):
        for name, chosen, allowed in (("bases", self.bases, BASES), ("plugins", self.plugins, PLUGINS)):
            unknown = sorted(set(chosen) - set(allowed))
            if unknown or not chosen:
                raise ValueError(f"Config: `{name}` must be a non-empty subset of {allowed}; got {chosen}.")

    @property
    def model_cache(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        return Path(self.out) / "cache" if self.quick else autoencoders.cache_dir()


def plugin_settings(base: str) -> dict[str, Any]:
    """The paper's plugin hyper-parameters (C-MAF and C-RealNVP alike): 5 layers × 2 blocks;
    hidden 40 on the VAE, hidden 100 with batch norm (within the conditioner and between
    layers) on the AE."""
    if base == "conv_vae":
        return dict(hidden_features=40, num_layers=5, num_blocks=2)
    return dict(hidden_features=100, num_layers=5, num_blocks=2, batch_norm_within=True, batch_norm_between=True)


class Timer:
    """Wall time of named stages, in seconds."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 2)
            print(f"[{name}] {self.seconds[name]:.1f} s", flush=True)


def load_data(config: Config) -> Dataset:
    """MNIST with a validation split of 10k (quick: a balanced 3000/1000/2000 subset)."""
    data = load_mnist(config.data_dir, seed=config.seed)
    if config.quick:
        data = dataclasses.replace(
            data,
            train=subset(data.train, 3000, seed=config.seed),
            validation=subset(data.validation, 1000, seed=config.seed),
            test=subset(data.test, 2000, seed=config.seed),
        )
    return data


def base_model(name: str, data: Dataset, config: Config) -> tuple[autoencoders.Autoencoder, dict[str, Any]]:
    """The frozen base model, trained (and cached; resumed if interrupted) unless cached."""
    folder = config.model_cache / name
    if (folder / "best").exists() and not (folder / "resume").exists():
        model = autoencoders.load(folder)
        extra = checkpoint.read_meta(folder / "best")["extra"]
        return model, {"cached": True, "best_epoch": extra["epoch"], "val_loss": extra["val_loss"]}
    rate = dict(config.base_learning_rates)[name]
    model = autoencoders.create(name, seed=config.seed)
    quick = dict(max_epochs=3, batch_size=128) if config.quick else dict(max_epochs=config.base_epochs)
    settings = training.default_config(model, learning_rate=rate, **quick)
    history = training.train(
        model, data.train.images, key=jax.random.key(config.seed), config=settings,
        validation=data.validation.images, checkpoint_dir=folder,
    )
    _drop_resume_state(folder)
    return model, {"cached": False, "epochs": len(history.train_loss), "best_epoch": history.best_epoch,
                   "val_loss": history.val_loss[history.best_epoch], "train_seconds": round(history.seconds, 1),
                   "learning_rate": rate}


def judge_model(data: Dataset, config: Config) -> tuple[judge.DigitCNN, dict[str, Any]]:
    """The independent CNN that judges generated digits (cached like the base models)."""
    folder = config.model_cache / "judge"
    if folder.exists():
        model = checkpoint.load(folder, expect=judge.DigitCNN)
        return model, checkpoint.read_meta(folder)["extra"]
    model, info = judge.train_judge(
        data.train.images, data.train.labels, key=jax.random.key(config.seed + 1),
        epochs=1 if config.quick else 3, validation=(data.validation.images, data.validation.labels),
    )
    test_accuracy = metrics.accuracy(np.asarray(judge.predict(model, data.test.images)), data.test.labels)
    extra = {"test_accuracy": test_accuracy, "epochs": len(info.train_loss), "train_seconds": round(info.seconds, 1)}
    checkpoint.save(folder, model, extra=extra, overwrite=True)
    return model, extra


def encode_splits(model: autoencoders.Autoencoder, data: Dataset, config: Config) -> dict[str, np.ndarray]:
    """Latents of train / validation / test, computed once (VAE: the posterior mean by default)."""
    keys = jax.random.split(jax.random.key(config.seed + 2), 3)
    sample = config.vae_sample_latents and isinstance(model, autoencoders.ConvVAE)
    return {
        split: latents.encode(model, getattr(data, split).images, key=k if sample else None)
        for split, k in zip(("train", "validation", "test"), keys, strict=True)
    }


def make_plugin(base: str, plugin: str, latent_features: int, seed: int) -> ConditionalMAF | ConditionalRealNVP:
    cls = ConditionalMAF if plugin == "maf" else ConditionalRealNVP
    return cls(latent_features, NUM_CLASSES, **plugin_settings(base), rngs=nnx.Rngs(seed))


def evaluate_plugin(
    flow, z: dict[str, np.ndarray], data: Dataset, base_model_: autoencoders.Autoencoder,
    judge_: judge.DigitCNN, config: Config, out: Path, tag: str,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Bayes-rule accuracies, test NLL, samples and their judged accuracy; figures into ``out``."""
    prior = np.bincount(data.train.labels, minlength=NUM_CLASSES) / len(data.train.labels)
    log_prior = np.log(prior)
    ll_test = np.asarray(class_log_likelihoods(flow, z["test"]))
    ll_train = np.asarray(class_log_likelihoods(flow, z["train"]))
    y_test, y_train = data.test.labels, data.train.labels
    result = {
        "test_accuracy": metrics.accuracy(ll_test.argmax(1), y_test),
        "test_accuracy_prior": metrics.accuracy((ll_test + log_prior).argmax(1), y_test),
        "train_accuracy": metrics.accuracy(ll_train.argmax(1), y_train),
        "test_nll": float(-np.mean(ll_test[np.arange(len(y_test)), y_test])),
        "test_nll_per_dim": float(-np.mean(ll_test[np.arange(len(y_test)), y_test]) / flow.features),
    }
    labels = np.repeat(np.arange(NUM_CLASSES), config.samples_per_class)
    # A sample that overflowed (the sampling direction divides by the learned scales) is
    # counted, reported, and judged wrong; it is not decoded.
    samples = np.asarray(flow.sample(
        jax.random.key(config.seed + 3), one_hot(jnp.asarray(labels), NUM_CLASSES), allow_overflow=True
    ))
    finite = np.isfinite(samples).all(axis=1)
    judged = np.full(len(labels), -1)
    images = latents.decode(base_model_, samples[finite])
    judged[finite] = np.asarray(judge.predict(judge_, images))
    per_class = metrics.per_class_accuracy(judged, labels, NUM_CLASSES)
    result["generation_accuracy"] = metrics.accuracy(judged, labels)
    result["generation_accuracy_per_class"] = [round(float(a), 4) for a in per_class]
    result["non_finite_samples"] = int((~finite).sum())
    first = np.concatenate([np.flatnonzero(finite & (labels == k))[:10] for k in range(NUM_CLASSES)])
    row_in_images = np.cumsum(finite) - 1  # images holds the finite samples only, in order
    grid = images[row_in_images[first]].reshape(NUM_CLASSES, 10, *images.shape[1:])
    from fpn_jax import plots

    plots.image_grid(grid, out / f"samples_{tag}.png", row_labels=[str(k) for k in range(NUM_CLASSES)],
                     title=f"{_display(tag)}: conditional samples (row = class)")
    return result, {"samples": samples[finite], "labels": labels[finite], "per_class": per_class}


def run(config: Config) -> dict[str, Any]:
    """Runs the whole experiment; returns (and writes) the metrics."""
    from fpn_jax import plots

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    metrics_json: dict[str, Any] = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()},
        "environment": {"jax": jax.__version__, "backend": jax.default_backend(),
                        "devices": [str(d) for d in jax.devices()], "python": platform.python_version()},
        "paper": PAPER, "base_models": {}, "baselines": {}, "results": {}, "timings": timer.seconds,
    }
    with timer("data"):
        data = load_data(config)
    metrics_json["data"] = {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)}
    with timer("judge"):
        judge_, judge_info = judge_model(data, config)
    metrics_json["judge"] = judge_info
    histories, per_class_generation = {}, {}
    for base in config.bases:
        with timer(f"{base}/base_model"):
            model, info = base_model(base, data, config)
        metrics_json["base_models"][base] = info
        with timer(f"{base}/encode"):
            z = encode_splits(model, data, config)
            _base_figures(model, z, data, config, out, base)
        with timer(f"{base}/baselines"):
            metrics_json["baselines"][base] = metrics.baseline_accuracies(
                z["train"], data.train.labels, z["test"], data.test.labels,
                grid_search=config.grid_search, seed=config.seed,
            )
        embed_sets = {"test latents": z["test"]}
        embed_labels = {"test latents": data.test.labels}
        metrics_json["results"][base] = {}
        for plugin in config.plugins:
            tag = f"{base}_{plugin}"
            flow = make_plugin(base, plugin, model.latent_features, config.seed)
            contexts = {s: one_hot(jnp.asarray(getattr(data, s).labels), NUM_CLASSES) for s in ("train", "validation")}
            train_config = TrainConfig(max_epochs=config.plugin_epochs, patience=config.plugin_patience,
                                       batch_size=256 if config.quick else 1024)
            with timer(f"{tag}/fit"):
                history = fit(flow, z["train"], contexts["train"], key=jax.random.key(config.seed + 4),
                              config=train_config, validation=(z["validation"], contexts["validation"]),
                              checkpoint_dir=out / "plugins" / tag)
            histories[f"{BASE_NAMES[base]} {PLUGIN_NAMES[plugin]}"] = {"train_nll": history.train_loss, "val_nll": history.val_loss}
            with timer(f"{tag}/evaluate"):
                result, extra = evaluate_plugin(flow, z, data, model, judge_, config, out, tag)
            result.update(epochs=len(history.train_loss), best_epoch=history.best_epoch,
                          train_seconds=round(history.seconds, 1))
            metrics_json["results"][base][plugin] = result
            per_class_generation[f"{BASE_NAMES[base]} {PLUGIN_NAMES[plugin]}"] = extra["per_class"]
            embed_sets[f"{PLUGIN_NAMES[plugin]} samples"] = extra["samples"]
            embed_labels[f"{PLUGIN_NAMES[plugin]} samples"] = extra["labels"]
            _write(out, metrics_json)  # nothing lost if a later stage fails
        with timer(f"{base}/embedding"):
            plots.embedding_2d(embed_sets, embed_labels, out / f"embedding_{base}.png", seed=config.seed,
                               max_points=500 if config.quick else 1000,
                               title=f"{BASE_NAMES[base]} latents and plugin samples (t-SNE)")
    plots.training_curves(histories, out / "training_curves.png", title="Plugin training (NLL per latent)")
    plots.per_class_bars(per_class_generation, out / "generation_accuracy.png", ylabel="judge accuracy",
                         title="Does a sample for class k look like a k? (independent CNN)")
    metrics_json["timings"]["total"] = round(sum(v for k, v in timer.seconds.items() if k != "total"), 2)
    _write(out, metrics_json)
    report.write_mnist_report(out, metrics_json)
    return metrics_json


def _base_figures(model, z, data: Dataset, config: Config, out: Path, base: str) -> None:
    """Reconstructions of test images and the base model's own unconditional samples."""
    from fpn_jax import plots

    originals = data.test.images[:20]
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


def _display(tag: str) -> str:
    base, plugin = tag.rsplit("_", 1)
    return f"{BASE_NAMES[base]} + {PLUGIN_NAMES[plugin]}"


def _drop_resume_state(folder: Path) -> None:
    shutil.rmtree(folder / "resume", ignore_errors=True)


def _write(out: Path, metrics_json: dict[str, Any]) -> None:
    temporary = out / ".metrics.json.tmp"
    temporary.write_text(json.dumps(metrics_json, indent=2, default=_jsonable))
    temporary.replace(out / "metrics.json")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-able: {type(value).__name__}")
