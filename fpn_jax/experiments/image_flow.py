"""The plugin idea against a class-conditional flow trained on pixels (issue 19).

One run compares, on the same MNIST (or Fashion-MNIST) splits::

    pixels x ──────────────▶ p(x | y)   a ConditionalImageFlow on 28×28×1 images (dequantised, logit)
    pixels x ──E──▶ z ─────▶ p(z | y)   FPN: a frozen ConvAE / ConvVAE and a C-MAF / C-RealNVP plugin

with the same measures for both: generation accuracy (the judge CNN reads the class of a
sample drawn for class y; overall and per class) at temperatures 1.0 and 0.7, Bayes-rule
classification ``argmax_k log p(· | y_k)`` of test images, and the compute each needed (wall
time of its training, parameters trained). The pixel flow also reports test bits per
dimension (the dequantisation bound, ``fpn_jax.flows.image.preprocess``).

A third model reproduces what the tutorial this project started from did: a
``ConditionalImageFlow`` whose condition is *the image itself*, ``p(x | x)``, trained with the
correct likelihood. Its bits/dim is very low because the density is conditioned on the answer;
it is a demonstration of that set-up, not a generator (its samples are near-copies of the
condition).

The base models and the judge come from the MNIST experiment's model cache
(``fpn_jax.experiments.mnist``: ``base_model``, ``judge_model``), the plugins and the pixel
flows are trained into the run folder (``stages.cached_fit``: a second run with the same
settings loads them). ``train_and_evaluate(config, workdir)`` writes ``metrics.json``,
``report.md`` and sample grids; ``experiments/image_flow.py`` is its command line, and
``quick(config)`` the overlay of a short end-to-end check on tiny subsets.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fpn_jax.data import Dataset, one_hot
from fpn_jax.evaluation import judge, metrics, plots
from fpn_jax.evaluation.report import BASE_NAMES, PLUGIN_NAMES
from fpn_jax.experiments import mnist, stages
from fpn_jax.flows import ConditionalMAF, ConditionalRealNVP
from fpn_jax.flows.image import ConditionalImageFlow, dequantize
from fpn_jax.inference import classify
from fpn_jax.train import History, TrainConfig
from fpn_jax.train.image_flow import fit_image_flow

__all__ = [
    "PIXEL_FLOW", "SELF_CONDITIONED", "Config", "bayes_accuracy_pixels", "evaluate_pixel_flow", "evaluate_plugin",
    "fit_pixel_flow", "fit_plugin", "mnist_config", "pixel_levels", "quick", "sample_latents",
    "pixel_bits_per_dim", "trained_parameters", "train_and_evaluate",
]

PIXEL_FLOW = "pixel_flow"
"""The tag of the class-conditional image flow on pixels."""
SELF_CONDITIONED = "self_conditioned"
"""The tag of the tutorial's image-conditioned flow ``p(x | x)``."""
GRID_COLUMNS = 10


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on; the defaults are sized for a CPU.

    The pixel flow's defaults follow the tutorial's training (5 epochs, Adam 1e-3, batch 64)
    with a CPU-sized network (32 hidden channels, one residual block per conditioner, 2 × 4
    steps): 26 minutes on 2 CPU cores with ``plugins_from`` (about an hour when the plugins
    are trained too). On a GPU, ``hidden_channels=64, num_blocks=2, flow_epochs=30`` is the
    larger flow.

    Attributes:
      data_dir: folder with the four IDX files (None: ``$FPN_JAX_HOME/data/<dataset>``).
      dataset: ``"mnist"`` or ``"fashion_mnist"``.
      out: the run folder; None: ``runs/image_flow/<dataset>`` (``…-quick`` with ``quick_mode``).
      quick_mode: set by ``quick``: the report says the numbers come from tiny subsets.
      seed: one seed for split, training and sampling.
      subset: (train, validation, test) sizes of class-balanced subsets; None: all the data.
      cache_dir, cache_in_out: where the base models and the judge are kept, as
        ``mnist.Config`` (default: the shared model cache, so the MNIST experiment's bases).
      bases, plugins: the FPN combinations compared (``mnist.BASES``, ``mnist.PLUGINS``).
      base_epochs, base_batch_size, judge_epochs: training of a base model / the judge when
        not cached (the MNIST experiment's defaults).
      plugin_epochs, plugin_patience, plugin_batch_size: the plugins' training (the MNIST
        experiment's: patience ``"paper"`` is ``mnist.PAPER_PATIENCE``).
      plugins_from: a MNIST run folder (``runs/mnist``) whose trained plugins are used instead
        of training them again; they must match these settings, data and base models. None:
        the plugins are trained into ``out/models``.
      flow_epochs, flow_patience, flow_batch_size, flow_learning_rate: the pixel flow's
        training (Adam, early stopping on the validation split's bits/dim).
      hidden_channels, num_scales, steps_per_scale, num_blocks: the pixel flow's architecture
        (``ConditionalImageFlow``; 28×28 allows at most 2 scales).
      self_conditioned_epochs: epochs of the tutorial's image-conditioned flow (same architecture).
      temperatures: the sampling temperatures τ (noise ``u ~ N(0, τ² I)``) of both approaches.
      samples_per_class: conditional samples per class and temperature judged by the CNN.
      bayes_test_size: test images classified by Bayes' rule in pixel space (K passes
        each); None: the whole test split. The plugins are scored on the same images.
      eval_batch_size: images per compiled evaluation call of the pixel flows.
    """

    data_dir: str | None = None
    dataset: str = "mnist"
    out: str | None = None
    quick_mode: bool = False
    seed: int = 0
    subset: tuple[int, int, int] | None = None
    cache_dir: str | None = None
    cache_in_out: bool = False
    bases: tuple[str, ...] = mnist.BASES
    plugins: tuple[str, ...] = mnist.PLUGINS
    base_epochs: int = 10
    base_batch_size: int = 1024
    judge_epochs: int = 3
    plugin_epochs: int = mnist.Config.plugin_epochs
    plugin_patience: int | str | None = mnist.Config.plugin_patience
    plugin_batch_size: int = 1024
    plugins_from: str | None = None
    flow_epochs: int = 5
    flow_patience: int | None = 5
    flow_batch_size: int = 64
    flow_learning_rate: float = 1e-3
    hidden_channels: int = 32
    num_scales: int = 2
    steps_per_scale: int = 4
    num_blocks: int = 1
    self_conditioned_epochs: int = 1
    temperatures: tuple[float, ...] = (1.0, 0.7)
    samples_per_class: int = 1000
    bayes_test_size: int | None = None
    eval_batch_size: int = 500

    def __post_init__(self) -> None:
        if self.out is None:
            object.__setattr__(self, "out", f"runs/image_flow/{self.dataset}{'-quick' if self.quick_mode else ''}")
        for name in ("flow_epochs", "flow_batch_size", "hidden_channels", "num_scales", "steps_per_scale",
                     "self_conditioned_epochs", "samples_per_class", "eval_batch_size"):
            if not _is_int(getattr(self, name), 1):
                raise ValueError(f"Config: `{name}` must be an integer >= 1; got {getattr(self, name)!r}.")
        if not _is_int(self.num_blocks, 0):
            raise ValueError(f"Config: `num_blocks` must be an integer >= 0; got {self.num_blocks!r}.")
        if self.flow_patience is not None and not _is_int(self.flow_patience, 1):
            raise ValueError(f"Config: `flow_patience` must be None or an integer >= 1; got {self.flow_patience!r}.")
        if self.bayes_test_size is not None and not _is_int(self.bayes_test_size, 1):
            raise ValueError(
                f"Config: `bayes_test_size` must be None or an integer >= 1; got {self.bayes_test_size!r}."
            )
        if not (isinstance(self.temperatures, tuple) and self.temperatures
                and all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < math.inf
                        for t in self.temperatures)):
            raise ValueError(f"Config: `temperatures` must be a non-empty tuple of numbers > 0; got "
                             f"{self.temperatures!r}.")
        if not (isinstance(self.flow_learning_rate, float) and self.flow_learning_rate > 0):
            raise ValueError(f"Config: `flow_learning_rate` must be a float > 0; got {self.flow_learning_rate!r}.")
        mnist_config(self)  # checks dataset, bases, plugins, subset and the shared settings

    @property
    def model_cache(self) -> Path:
        """The folder of the base models and the judge (that of the MNIST experiment's config)."""
        return mnist_config(self).model_cache


def quick(config: Config | None = None) -> Config:
    """The quick overlay: 1000 / 500 / 500 images, one epoch or two, a tiny flow, ConvAE + C-MAF only.

    Models are kept in the run folder (``out/cache``), never in the shared cache. The
    numbers only show that the pipeline works.
    """
    return dataclasses.replace(
        Config() if config is None else config,
        out=None, quick_mode=True, subset=(1000, 500, 500), cache_in_out=True, bases=("conv_ae",), plugins=("maf",),
        base_epochs=2, base_batch_size=64, judge_epochs=1, plugin_epochs=5, plugin_batch_size=100, flow_epochs=1,
        flow_batch_size=50, hidden_channels=8, steps_per_scale=2, num_blocks=1, self_conditioned_epochs=1,
        samples_per_class=10, bayes_test_size=100, eval_batch_size=100,
    )


def mnist_config(config: Config) -> mnist.Config:
    """The MNIST experiment's config for the shared parts (data, judge, bases, plugins)."""
    return mnist.Config(
        data_dir=config.data_dir, dataset=config.dataset, out=config.out, bases=config.bases, plugins=config.plugins,
        seed=config.seed, subset=config.subset, cache_dir=config.cache_dir, cache_in_out=config.cache_in_out,
        base_epochs=config.base_epochs, base_batch_size=config.base_batch_size, judge_epochs=config.judge_epochs,
        plugin_epochs=config.plugin_epochs, plugin_patience=config.plugin_patience,
        plugin_batch_size=config.plugin_batch_size, samples_per_class=config.samples_per_class,
    )


# ----------------------------------------------------------------------------- helpers on pixels
def pixel_levels(images: np.ndarray) -> np.ndarray:
    """8-bit levels ``round(255 x)`` (float32 in {0, …, 255}) of images in [0, 1] (``load_data``'s)."""
    return np.clip(np.rint(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.float32)


def trained_parameters(model: nnx.Module) -> int:
    """The number of trainable scalars (``nnx.Param``) of a model (batch statistics not counted)."""
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))))


def _batched(fn: Callable[..., Any], arrays: tuple[np.ndarray, ...], batch_size: int) -> np.ndarray:
    """``fn(*batch)`` over row chunks of equal size (the last padded by repetition, so one compilation)."""
    n = len(arrays[0])
    outputs = []
    for start in range(0, n, batch_size):
        chunk = [a[start:start + batch_size] for a in arrays]
        rows = len(chunk[0])
        if rows < batch_size and n > batch_size:
            chunk = [np.concatenate([c, np.repeat(c[-1:], batch_size - rows, axis=0)]) for c in chunk]
        outputs.append(np.asarray(fn(*chunk))[:rows])
    return np.concatenate(outputs)


def _make_flow(config: Config, context_shape: tuple[int, ...], seed: int) -> ConditionalImageFlow:
    """A fresh pixel flow; its initialisation compiled as one program (much faster than eagerly on a CPU)."""

    @nnx.jit
    def build(rngs: nnx.Rngs) -> ConditionalImageFlow:
        return ConditionalImageFlow(
            (28, 28, 1), context_shape, hidden_channels=config.hidden_channels, num_scales=config.num_scales,
            steps_per_scale=config.steps_per_scale, num_blocks=config.num_blocks, rngs=rngs,
        )

    return build(nnx.Rngs(seed))


def _conditions(data: Dataset, split: str, kind: str) -> np.ndarray:
    """The condition rows of a split: its one-hot classes, or (``"image"``) its own images."""
    part = getattr(data, split)
    return np.asarray(part.context if kind == "class" else part.inputs, np.float32)


def fit_pixel_flow(
    data: Dataset, config: Config, folder: Path, *, kind: str = "class", epochs: int | None = None
) -> tuple[ConditionalImageFlow, History, bool]:
    """Trains (or loads from ``folder``) a ``ConditionalImageFlow`` on the 8-bit training images.

    Adam with ``flow_learning_rate``, at most ``epochs`` (default ``flow_epochs``) epochs, early
    stopping on the validation split's bits/dim; the actnorms are initialised from a batch of
    training images first (Glow's data-dependent initialisation).

    Args:
      data: the data set (images in [0, 1], one-hot class contexts).
      config: the settings.
      folder: the training folder (``stages.cached_fit``: resumable, reused under equal settings).
      kind: ``"class"`` (condition = the one-hot class) or ``"image"`` (condition = the image itself).
      epochs: the epoch cap.

    Returns:
      ``(flow, history, cached)`` as ``stages.cached_fit``.
    """
    if kind not in ("class", "image"):
        raise ValueError(f"fit_pixel_flow: `kind` must be 'class' or 'image'; got {kind!r}.")
    epochs = config.flow_epochs if epochs is None else epochs
    context_shape = (data.context_features,) if kind == "class" else (28, 28, 1)
    train_config = TrainConfig(learning_rate=config.flow_learning_rate, batch_size=config.flow_batch_size,
                               max_epochs=epochs, patience=config.flow_patience)
    seed = config.seed + (10 if kind == "class" else 11)
    images = pixel_levels(data.train.inputs)
    context = _conditions(data, "train", kind)

    def train(where: Path) -> tuple[ConditionalImageFlow, History]:
        flow = _make_flow(config, context_shape, seed)
        init = min(len(images), 256)
        flow.initialize_actnorm(dequantize(jax.random.key(seed), images[:init]), context[:init])
        history = fit_image_flow(
            flow, images, context, key=jax.random.key(seed + 1), config=train_config,
            validation=(pixel_levels(data.validation.inputs), _conditions(data, "validation", kind)),
            checkpoint_dir=where,
        )
        return flow, history

    fingerprint = {"kind": kind, "architecture": _make_flow_config(config, context_shape),
                   "train": dataclasses.asdict(train_config), "seed": config.seed, "dataset": config.dataset,
                   "data": {s: len(getattr(data, s)) for s in stages.SPLITS}}
    return stages.cached_fit(folder, train, fingerprint=fingerprint, expect=ConditionalImageFlow)


def _make_flow_config(config: Config, context_shape: tuple[int, ...]) -> dict[str, Any]:
    return {"context_shape": list(context_shape), "hidden_channels": config.hidden_channels,
            "num_scales": config.num_scales, "steps_per_scale": config.steps_per_scale,
            "num_blocks": config.num_blocks}


def pixel_bits_per_dim(flow: ConditionalImageFlow, images: np.ndarray, context: np.ndarray, *, key: jax.Array,
                      batch_size: int) -> float:
    """Mean bits/dim of 8-bit ``images`` under ``flow`` (one dequantisation draw per image, bound)."""
    keys = iter(jax.random.split(key, -(-len(images) // batch_size)))
    return float(np.mean(_batched(lambda x, c: flow.bits_per_dim(next(keys), x, c), (images, context), batch_size)))


def bayes_accuracy_pixels(
    flow: ConditionalImageFlow, images: np.ndarray, labels: np.ndarray, num_classes: int, *, key: jax.Array,
    batch_size: int,
) -> dict[str, Any]:
    """Bayes' rule in pixel space: ``argmax_k log p(y | e_k)`` (uniform prior), one dequantisation per image.

    Every image is dequantised once and scored under all K one-hot classes (K rows per image).

    Returns:
      ``{"test_accuracy", "test_accuracy_per_class", "images"}``.
    """
    rows = max(1, batch_size // num_classes)
    eye = np.eye(num_classes, dtype=np.float32)
    keys = iter(jax.random.split(key, -(-len(images) // rows)))

    def scores(x: np.ndarray) -> np.ndarray:
        y = dequantize(next(keys), x)
        tiled = jnp.repeat(y, num_classes, axis=0)
        contexts = jnp.tile(eye, (x.shape[0], 1))
        return np.asarray(flow.log_prob(tiled, contexts)).reshape(x.shape[0], num_classes)

    ll = _batched(scores, (images,), rows)
    predicted = ll.argmax(1)
    per_class = metrics.per_class_accuracy(predicted, labels, num_classes)
    return {"test_accuracy": metrics.accuracy(predicted, labels),
            "test_accuracy_per_class": [None if np.isnan(a) else round(float(a), 4) for a in per_class],
            "images": len(labels)}


def _judged(images: np.ndarray, labels: np.ndarray, judge_: judge.DigitCNN, num_classes: int) -> dict[str, Any]:
    predicted = np.asarray(judge.predict(judge_, np.clip(images, 0.0, 1.0)))
    per_class = metrics.per_class_accuracy(predicted, labels, num_classes)
    return {"generation_accuracy": metrics.accuracy(predicted, labels),
            "generation_accuracy_per_class": [round(float(a), 4) for a in per_class]}


def evaluate_pixel_flow(
    flow: ConditionalImageFlow, data: Dataset, judge_: judge.DigitCNN, config: Config
) -> tuple[dict[str, Any], dict[float, np.ndarray]]:
    """The class-conditional pixel flow's test bits/dim, Bayes accuracy and judged samples per temperature.

    Returns:
      ``(result, grids)``: the metrics and, per temperature, a (K, columns, 28, 28, 1) sample grid.
    """
    k = data.num_classes
    levels = pixel_levels(data.test.inputs)
    result: dict[str, Any] = {"test_bits_per_dim": pixel_bits_per_dim(
        flow, levels, _conditions(data, "test", "class"), key=jax.random.key(config.seed + 20),
        batch_size=config.eval_batch_size)}
    n = len(levels) if config.bayes_test_size is None else min(config.bayes_test_size, len(levels))
    result["bayes"] = bayes_accuracy_pixels(flow, levels[:n], data.test.labels[:n], k,
                                            key=jax.random.key(config.seed + 21), batch_size=config.eval_batch_size)
    labels = np.repeat(np.arange(k), config.samples_per_class)
    contexts = one_hot(labels, k).astype(np.float32)
    grids, by_temperature = {}, {}
    for i, t in enumerate(config.temperatures):
        keys = iter(jax.random.split(jax.random.key(config.seed + 30 + i), -(-len(labels) // config.eval_batch_size)))
        images = np.clip(_batched(lambda c, t=t, keys=keys: flow.sample(next(keys), c, temperature=float(t)),
                                  (contexts,), config.eval_batch_size), 0.0, 1.0)
        by_temperature[str(t)] = _judged(images, labels, judge_, k)
        grids[t] = mnist.sample_grid(images, labels, k, columns=min(GRID_COLUMNS, config.samples_per_class))
    result["generation"] = by_temperature
    return result, grids


def sample_latents(flow: ConditionalMAF | ConditionalRealNVP, labels: np.ndarray, num_classes: int, *,
                   key: jax.Array, temperature: float) -> np.ndarray:
    """``z = T(u | e_y)`` with ``u ~ N(0, τ² I)`` (the latent flows' ``sample`` has no temperature).

    Overflowed rows are returned non-finite (``stages.generation_accuracy`` counts them wrong).
    """
    u = temperature * jax.random.normal(key, (len(labels), flow.features), jnp.float32)
    return np.asarray(flow.from_noise(u, one_hot(labels, num_classes).astype(np.float32), allow_overflow=True))


def evaluate_plugin(
    flow: ConditionalMAF | ConditionalRealNVP, z: dict[str, np.ndarray], data: Dataset, base: Any,
    judge_: judge.DigitCNN, config: Config,
) -> tuple[dict[str, Any], dict[float, np.ndarray]]:
    """A plugin's Bayes accuracy (all test latents and the pixel flow's subset) and judged samples per temperature."""
    k = data.num_classes
    classification = stages.evaluate_classification(flow, z, data)
    n = len(data.test) if config.bayes_test_size is None else min(config.bayes_test_size, len(data.test))
    predicted = np.asarray(classification_predictions(flow, z["test"][:n]))
    result: dict[str, Any] = {
        "bayes": {"test_accuracy": classification["test_accuracy"],
                  "test_accuracy_per_class": classification["test_accuracy_per_class"], "images": len(data.test),
                  "test_accuracy_same_subset": metrics.accuracy(predicted, data.test.labels[:n]),
                  "same_subset_images": n},
        "test_nll_per_dim": classification["test_nll_per_dim"],
    }
    labels = np.repeat(np.arange(k), config.samples_per_class)
    grids, by_temperature = {}, {}
    for i, t in enumerate(config.temperatures):
        samples = sample_latents(flow, labels, k, key=jax.random.key(config.seed + 40 + i), temperature=float(t))
        generation, images, finite = stages.generation_accuracy(samples, labels, base, judge_, k)
        by_temperature[str(t)] = generation
        grids[t] = mnist.sample_grid(images, labels[finite], k, columns=min(GRID_COLUMNS, config.samples_per_class))
    result["generation"] = by_temperature
    return result, grids


def classification_predictions(flow: ConditionalMAF | ConditionalRealNVP, z: np.ndarray) -> np.ndarray:
    """Bayes' rule with a uniform prior on latents: ``argmax_k log p(z | e_k)``."""
    return np.asarray(classify(flow, z)[0])


def fit_plugin(base: str, plugin: str, model: Any, z: dict[str, np.ndarray], data: Dataset, config: Config,
               out: Path, base_info: dict[str, Any]) -> tuple[Any, History, bool]:
    """A plugin as the MNIST experiment fits it (``mnist.fit_plugin``), trained here or taken from a MNIST run.

    Trained into ``out/models/<tag>``; with ``config.plugins_from``, loaded from that MNIST
    run's ``plugins/<tag>`` (read only: nothing there is trained or written).

    Raises:
      ValueError: ``plugins_from`` holds no finished training of this plugin, or one under other
        settings, data or base model (the message names what differs).
    """
    tag = f"{base}_{plugin}"
    cfg = mnist_config(config)
    if config.plugins_from is None:
        return mnist.fit_plugin(base, plugin, model, z, data, cfg, out / "models" / tag, base_info)
    folder = Path(config.plugins_from) / "plugins" / tag
    wanted = mnist.plugin_fingerprint(base, plugin, data, cfg, base_info)
    kept, saved = stages.fitted(folder, fingerprint=wanted, expect=ConditionalMAF if plugin == "maf"
                                else ConditionalRealNVP)
    if kept is None:
        if saved is None:
            why = "no finished training there (run experiments/mnist.py with this version first)"
        else:
            wanted = json.loads(json.dumps(wanted))
            differ = sorted(k for k in set(wanted) | set(saved) if wanted.get(k) != saved.get(k))
            why = "trained under other " + ", ".join(f"{k} ({saved.get(k)!r} there, {wanted.get(k)!r} here)"
                                                      for k in differ)
        raise ValueError(f"image_flow: `plugins_from` {config.plugins_from!r}: {folder}: {why}. Drop "
                         "--plugins-from to train the plugins in this run.")
    return *kept, True


# ----------------------------------------------------------------------------- the run
def train_and_evaluate(config: Config, workdir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Runs the comparison; writes (and returns) ``metrics.json``, ``report.md`` and the sample grids.

    Args:
      config: the settings (``Config()``, ``quick()``, or either with changes).
      workdir: the run folder (default ``config.out``; recorded as ``out``).

    Returns:
      What ``metrics.json`` holds: config, environment, data sizes, judge, and per approach
      (``pixel_flow``, ``<base>_<plugin>``, ``self_conditioned``) its metrics and compute.
    """
    config, out = stages.run_folder(config, workdir)
    timer = stages.Timer()
    record: dict[str, Any] = {"config": stages.config_record(config), "environment": stages.environment(),
                              "approaches": {}, "timings": timer.seconds}
    cfg = mnist_config(config)
    with timer("data"):
        data = mnist.load_data(cfg)
    record["data"] = {s: len(getattr(data, s)) for s in stages.SPLITS} | {"num_classes": data.num_classes}
    with timer("judge"):
        judge_, record["judge"] = mnist.judge_model(data, cfg)
    grids: dict[str, dict[float, np.ndarray]] = {}

    # The class-conditional flow on pixels.
    with timer(f"{PIXEL_FLOW}/fit"):
        flow, history, cached = fit_pixel_flow(data, config, out / "models" / PIXEL_FLOW)
    with timer(f"{PIXEL_FLOW}/evaluate"):
        result, grids[PIXEL_FLOW] = evaluate_pixel_flow(flow, data, judge_, config)
    params = trained_parameters(flow)
    record["approaches"][PIXEL_FLOW] = result | stages.history_record(history) | {
        "name": "Conditional image flow (pixels)", "parameters_trained": params, "parameters_total": params,
        "train_seconds": round(history.seconds, 1), "cached": cached, "compute_note": "the flow, trained on pixels",
        "val_bits_per_dim": _best(history.val_loss, history.best_epoch),
    }
    stages.write_metrics(out, record)

    # FPN: frozen base, plugin on its latents.
    for base in config.bases:
        with timer(f"{base}/base_model"):
            model, base_info = mnist.base_model(base, data, cfg)
        with timer(f"{base}/encode"):
            z = mnist.encode(model, data, cfg)
        base_params = trained_parameters(model)
        base_seconds = None if base_info.get("cached") else base_info.get("train_seconds")
        record.setdefault("base_models", {})[base] = base_info | {"parameters": base_params}
        for plugin in config.plugins:
            tag = f"{base}_{plugin}"
            with timer(f"{tag}/fit"):
                plugin_flow, plugin_history, plugin_cached = fit_plugin(base, plugin, model, z, data, config, out,
                                                                        base_info)
            with timer(f"{tag}/evaluate"):
                result, grids[tag] = evaluate_plugin(plugin_flow, z, data, model, judge_, config)
            plugin_params = trained_parameters(plugin_flow)
            plugin_seconds = round(plugin_history.seconds, 1)
            trained_here = base_seconds is not None
            # (the history's own train_seconds first: the approach's replaces it)
            record["approaches"][tag] = result | stages.history_record(plugin_history) | {
                "name": f"FPN: {BASE_NAMES[base]} + {PLUGIN_NAMES[plugin]}",
                "parameters_trained": plugin_params + (base_params if trained_here else 0),
                "parameters_plugin": plugin_params, "parameters_base": base_params,
                "train_seconds": round(plugin_seconds + (base_seconds or 0.0), 1),
                "plugin_train_seconds": plugin_seconds, "base_train_seconds": base_seconds,
                "cached": plugin_cached, "base_cached": bool(base_info.get("cached")),
                "plugins_from": config.plugins_from,
                "compute_note": ("plugin + base (the base was trained in this run)" if trained_here else
                                 "plugin only (the base came from the model cache; its training is not counted)")
                + (f"; the plugin was trained by the MNIST run in {config.plugins_from} (its time is that "
                   "run's)" if config.plugins_from else ""),
            }
            stages.write_metrics(out, record)

    # The tutorial's set-up: the condition is the image itself.
    with timer(f"{SELF_CONDITIONED}/fit"):
        self_flow, self_history, self_cached = fit_pixel_flow(
            data, config, out / "models" / SELF_CONDITIONED, kind="image", epochs=config.self_conditioned_epochs)
    with timer(f"{SELF_CONDITIONED}/evaluate"):
        result, self_grid = _evaluate_self_conditioned(self_flow, data, judge_, config)
    params = trained_parameters(self_flow)
    record["approaches"][SELF_CONDITIONED] = result | stages.history_record(self_history) | {
        "name": "Image flow conditioned on the image itself (tutorial)", "parameters_trained": params,
        "parameters_total": params, "train_seconds": round(self_history.seconds, 1), "cached": self_cached,
        "compute_note": "the flow, trained on pixels with the image as its own condition",
    }

    with timer("figures"):
        record["figures"] = _figures(grids, self_grid, data, config, out, record)
    record["timings"]["total"] = timer.total()
    stages.write_metrics(out, record)
    write_report(out, record)
    return record


def _best(values: list[float], index: int) -> float | None:
    return float(values[index]) if values and 0 <= index < len(values) else None


def _evaluate_self_conditioned(
    flow: ConditionalImageFlow, data: Dataset, judge_: judge.DigitCNN, config: Config
) -> tuple[dict[str, Any], np.ndarray]:
    """Test bits/dim of ``p(x | x)`` and samples given test images (one per class) as their conditions.

    Returns:
      ``(result, grid)``: the metrics (bits/dim; the judge's agreement of samples with the
      condition's class, per temperature) and a (K, 1 + T·S, 28, 28, 1) grid: the condition,
      then S samples per temperature.
    """
    k = data.num_classes
    levels = pixel_levels(data.test.inputs)
    result: dict[str, Any] = {"test_bits_per_dim": pixel_bits_per_dim(
        flow, levels, _conditions(data, "test", "image"), key=jax.random.key(config.seed + 50),
        batch_size=config.eval_batch_size)}
    firsts = [int(np.flatnonzero(data.test.labels == c)[0]) for c in range(k) if np.any(data.test.labels == c)]
    condition = np.asarray(data.test.inputs[firsts], np.float32)
    per_row = 5
    conditions = np.repeat(condition, per_row, axis=0)
    labels = np.repeat(data.test.labels[firsts], per_row)
    columns = [condition[:, None]]
    result["generation"] = {}
    for i, t in enumerate(config.temperatures):
        samples = np.clip(np.asarray(flow.sample(jax.random.key(config.seed + 60 + i), conditions,
                                                 temperature=float(t))), 0.0, 1.0)
        result["generation"][str(t)] = _judged(samples, labels, judge_, k)
        result["generation"][str(t)]["mean_abs_difference_to_condition"] = round(
            float(np.abs(samples - conditions).mean()), 4)
        columns.append(samples.reshape(len(firsts), per_row, *samples.shape[1:]))
    return result, np.concatenate(columns, axis=1)


def _figures(grids: dict[str, dict[float, np.ndarray]], self_grid: np.ndarray, data: Dataset, config: Config,
             out: Path, record: dict[str, Any]) -> dict[str, str]:
    """One PNG per approach (its temperatures side by side) and one combined PNG per temperature."""
    rows = [str(c) for c in range(data.num_classes)]
    figures = {}
    for tag, by_t in grids.items():
        name = record["approaches"][tag]["name"]
        grid = _side_by_side([by_t[t] for t in config.temperatures])
        path = out / f"samples_{tag}.png"
        temps = ", ".join(f"τ={t}" for t in config.temperatures)
        plots.image_grid(grid, path, row_labels=rows, title=f"{name}: samples per class ({temps}, left to right)")
        figures[tag] = path.name
    for t in config.temperatures:
        grid = _side_by_side([grids[tag][t] for tag in grids])
        path = out / f"samples_combined_t{t}.png"
        order = " | ".join(record["approaches"][tag]["name"] for tag in grids)
        plots.image_grid(grid, path, row_labels=rows, title=f"τ={t}, left to right: {order}")
        figures[f"combined_t{t}"] = path.name
    path = out / f"samples_{SELF_CONDITIONED}.png"
    temps = ", ".join(f"τ={t}" for t in config.temperatures)
    plots.image_grid(self_grid, path, title=f"p(x | x): condition (left), then 5 samples at {temps}")
    figures[SELF_CONDITIONED] = path.name
    return figures


def _side_by_side(grids: list[np.ndarray]) -> np.ndarray:
    """(K, C_i, H, W, 1) grids concatenated along the columns with one blank column between them."""
    blank = np.ones((grids[0].shape[0], 1, *grids[0].shape[2:]), np.float32)
    parts: list[np.ndarray] = []
    for i, grid in enumerate(grids):
        if i:
            parts.append(blank)
        parts.append(np.asarray(grid, np.float32))
    return np.concatenate(parts, axis=1)


# ----------------------------------------------------------------------------- the report
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_report(out: Path, record: dict[str, Any]) -> Path:
    """``out/report.md``: the comparison table, per-class generation accuracy, compute notes and figures."""
    config = record["config"]
    temps = [str(float(t)) for t in config["temperatures"]]
    dataset = "MNIST" if config["dataset"] == "mnist" else "Fashion-MNIST"
    quick_note = " (quick subset)" if config["quick_mode"] else ""
    lines = [f"# Conditional image flow on pixels vs. Flow Plugin Networks on {dataset}{quick_note}", ""]
    if config["quick_mode"]:
        lines += ["Quick mode: tiny subsets and one or two epochs; the numbers only show that the pipeline runs.", ""]
    lines += [f"Data: {record['data']['train']} train / {record['data']['validation']} validation / "
              f"{record['data']['test']} test images. Judge CNN test accuracy: "
              f"{_fmt(record['judge'].get('test_accuracy'))}.", ""]
    header = ["approach", "params trained", "train wall time (s)", "test bits/dim", "Bayes accuracy"]
    header += [f"generation acc. τ={t}" for t in temps]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for tag, a in record["approaches"].items():
        bayes = a.get("bayes", {}).get("test_accuracy") if tag != SELF_CONDITIONED else None
        row = [a["name"], f"{a['parameters_trained']:,}", _fmt(a.get("train_seconds"), 1),
               _fmt(a.get("test_bits_per_dim")), _fmt(bayes)]
        row += [_fmt(a["generation"][t]["generation_accuracy"]) for t in temps]
        lines.append("| " + " | ".join(row) + " |")
    pixel = record["approaches"][PIXEL_FLOW]
    lines += ["", "Notes:", "",
              f"* Bayes accuracy of the pixel flow is computed on {pixel['bayes']['images']} test images "
              "(each scored under every class); the plugins' on all test latents "
              "(on the same first images: " + ", ".join(
                  f"{a['name']} {_fmt(a['bayes']['test_accuracy_same_subset'])}"
                  for tag, a in record["approaches"].items() if tag not in (PIXEL_FLOW, SELF_CONDITIONED)) + ").",
              "* Generation accuracy: the judge CNN's agreement with the class a sample was drawn for; "
              "temperature τ scales the base noise, u ~ N(0, τ² I), for both kinds of flow.",
              "* Test bits/dim: the dequantisation bound (one uniform draw per image), pixel flows only.",
              "* Compute: " + "; ".join(f"{a['name']}: {a['compute_note']}" for a in record["approaches"].values())
              + ". Wall times are training only, on " + record["environment"]["backend"] + ".",
              "* The last row conditions p(x | x) on the image itself, as the tutorial did (trained "
              f"{record['approaches'][SELF_CONDITIONED]['epochs']} epoch(s) with the correct likelihood). "
              "Given the answer as its condition, its likelihood can be made as high as training allows: "
              f"its bits/dim ({_fmt(record['approaches'][SELF_CONDITIONED]['test_bits_per_dim'])}) is no "
              "measure of a generative model and not comparable with the class-conditional flow's. It is no "
              "generator either: its 'generation accuracy' is the judge reading samples drawn given a test "
              "image (they tend towards copies of it), and it has no Bayes accuracy.", ""]
    lines += ["## Generation accuracy per class", ""]
    k = record["data"]["num_classes"]
    head = ["approach", "τ", *[str(c) for c in range(k)]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for tag, a in record["approaches"].items():
        if tag == SELF_CONDITIONED:
            continue
        for t in temps:
            lines.append("| " + " | ".join([a["name"], t, *[_fmt(v, 2) for v in
                                                            a["generation"][t]["generation_accuracy_per_class"]]])
                         + " |")
    lines += ["", "## Samples", ""]
    for name in record["figures"].values():
        lines += [f"![{name}]({name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low

