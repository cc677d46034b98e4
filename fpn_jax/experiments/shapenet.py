"""The paper's ShapeNet experiment (section 5.1.2, Table 2): one ``Config``, one ``train_and_evaluate``.

PointFlow's all-category auto-encoder (``fpn_jax.autoencoders.PointFlow``, 128-d latent)
is the frozen base; C-MAF and C-RealNVP plugins model p(z | class) over its codes::

    clouds (N, P, 3) ──E (PointNet)──▶ z (N, 128) ──fit──▶ p(z | y) ──▶ Bayes-rule accuracy (Table 2)
                                                                  └──▶ z ~ p(z | y) ──D (point CNF)──▶ clouds
                                                                       ──▶ MMD / COV / 1-NNA vs the class's test clouds

``train_and_evaluate(config, workdir)`` runs it with the shared stages
(``fpn_jax.experiments.stages``): load the clouds (``fpn_jax.data.load_shapenet``), load the
converted PointFlow checkpoint or train one (resumably), encode every split once (kept in
``workdir/latents``), the paper's baselines on the same latents, fit both plugins
(resumable), classify with a uniform and with the class prior, generate clouds per class
and score them against the class's test clouds (``fpn_jax.evaluation.point_clouds``), and
write ``metrics.json``, ``report.md`` and figures.

``Config()`` holds the paper's settings for real data (``--data-dir`` and ``--checkpoint``);
``synthetic(config)`` is the overlay that runs everything offline on the generated stand-in
(``fpn_jax.data.write_synthetic_shapenet``) with a small PointFlow trained here, and
``tiny(config)`` the seconds-long version the tests run. The validation split (PointFlow's
``val`` folders) drives every early stopping; the test split is evaluated once.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from fpn_jax import autoencoders, checkpoint, latents
from fpn_jax.autoencoders import PointFlow
from fpn_jax.autoencoders.pointflow import read_normalization
from fpn_jax.data import one_hot
from fpn_jax.data.shapenet import ShapeNetDataset, load_shapenet
from fpn_jax.data.synthetic_shapes import SYNTHETIC_CATEGORIES, write_synthetic_shapenet
from fpn_jax.errors import UsageError
from fpn_jax.evaluation import plots, point_clouds, report
from fpn_jax.experiments import stages
from fpn_jax.flows import ConditionalMAF, ConditionalRealNVP
from fpn_jax.train import TrainConfig

__all__ = [
    "PAPER", "PLUGINS", "Config", "base_model", "evaluate_generation", "load_data", "make_plugin",
    "plugin_train_config", "synthetic", "tiny", "train_and_evaluate",
]

PLUGINS = ("maf", "rnvp")
PAPER = {"logistic_regression": 0.8443, "rbf_svm": 0.8643, "automl": 0.8435, "maf": 0.8404}
"""The paper's Table 2 (ShapeNet, 55 classes, test accuracy on PointFlow's latents)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on; the defaults are the paper's settings on the real data.

    Attributes:
      data_dir: the ShapeNetCore.v2.PC15k root (``<synset>/{train,val,test}/<id>.npy``);
        with ``synthetic``: where the stand-in is written (default ``out/synthetic_shapenet``).
      checkpoint: a converted PointFlow checkpoint folder (``python -m fpn_jax.convert
        pointflow``); its stored normalisation (``--mean``/``--std``) is used for the data.
      train_base: train the base model here (kept in ``model_cache / "pointflow"``).
      synthetic: run on the generated stand-in (``write_synthetic_shapenet``), 8 classes.
      synthetic_counts: shapes per stand-in class (None: the imbalanced default, 1,874 shapes).
      synthetic_points_per_cloud: points per stand-in file.
      out: the run folder (``train_and_evaluate``'s default ``workdir``).
      cache_dir: where a base model trained here is kept (None: ``out/cache``).
      categories: classes to load (synset ids or names; None: every synset folder present).
      points: points per cloud of the inputs (PointFlow: 2048).
      plugins: which plugins to fit.
      seed: one seed for point subsets, training and sampling.
      base_*: the PointFlow trained with ``train_base`` (widths, solver, training); the
        defaults are the released model's architecture. ``base_points``: points per cloud in
        base training (None: ``points``).
      encode_batch_size: clouds per encoder call.
      maf_hidden, maf_layers, maf_blocks, maf_dropout, maf_noise, maf_batch_size: C-MAF
        (the original: 1024, 5, 2, 0.2, U[0, 0.01) latent noise, batch 4096).
      rnvp_hidden, rnvp_layers, rnvp_blocks, rnvp_batch_size: C-RealNVP (1024, 5, 4, 256).
      plugin_epochs, plugin_patience: flow training length and early-stopping patience (50).
      grid_search: the paper's 5-fold grid search for the baselines (slow).
      generation_samples: clouds generated per class and scored against its test clouds.
      generation_references: at most this many test clouds per class as references.
      generation_classes: score at most this many classes (the ones with most test
        clouds; None: all).
      generation_metrics: distances for MMD / COV / 1-NNA (``"cd"``, ``"emd"``).
      generation_ceiling: also score reconstructions of training clouds of each class (what
        the decoder makes of real codes, the level the plugin's samples can hope to reach).
      decode_solver, decode_rk4_steps: the point CNF's solver when decoding (None: the
        model's own, Dopri5 1e-5 for the released model).
      figure_classes, figure_columns: rows and columns of the sample grids.
      embedding_max_points: points per panel of the t-SNE figure.
    """

    data_dir: str | None = None
    checkpoint: str | None = None
    train_base: bool = False
    synthetic: bool = False
    synthetic_counts: int | None = None
    synthetic_points_per_cloud: int = 15_000
    out: str = "runs/shapenet"
    cache_dir: str | None = None
    categories: tuple[str, ...] | None = None
    points: int = 2048
    plugins: tuple[str, ...] = PLUGINS
    seed: int = 0
    base_encoder_conv_dims: tuple[int, ...] = (128, 128, 256, 512)
    base_encoder_fc_dims: tuple[int, ...] = (256, 128)
    base_hidden_dims: tuple[int, ...] = (512, 512, 512)
    base_solver: str = "dopri5"
    base_rk4_steps: int = 10
    base_points: int | None = None
    base_epochs: int = 100
    base_patience: int | None = 10
    base_batch_size: int = 64
    base_learning_rate: float = 1e-3
    encode_batch_size: int = 64
    maf_hidden: int = 1024
    maf_layers: int = 5
    maf_blocks: int = 2
    maf_dropout: float = 0.2
    maf_noise: float = 0.01
    maf_batch_size: int = 4096
    rnvp_hidden: int = 1024
    rnvp_layers: int = 5
    rnvp_blocks: int = 4
    rnvp_batch_size: int = 256
    plugin_epochs: int = 1000
    plugin_patience: int | None = 50
    grid_search: bool = False
    generation_samples: int = 32
    generation_references: int = 64
    generation_classes: int | None = None
    generation_metrics: tuple[str, ...] = ("cd", "emd")
    generation_ceiling: bool = True
    decode_solver: str | None = None
    decode_rk4_steps: int = 10
    figure_classes: int = 10
    figure_columns: int = 6
    embedding_max_points: int = 2000

    def __post_init__(self) -> None:
        if not isinstance(self.plugins, tuple) or not self.plugins or set(self.plugins) - set(PLUGINS):
            raise ValueError(f"Config: `plugins` must be a non-empty tuple of names from {PLUGINS}; "
                             f"got {self.plugins!r}.")
        for name in ("points", "base_rk4_steps", "base_epochs", "base_batch_size", "encode_batch_size",
                     "maf_hidden", "maf_layers", "maf_blocks", "maf_batch_size", "rnvp_hidden", "rnvp_layers",
                     "rnvp_blocks", "rnvp_batch_size", "plugin_epochs", "generation_samples",
                     "generation_references", "decode_rk4_steps", "figure_classes", "figure_columns",
                     "embedding_max_points", "synthetic_points_per_cloud"):
            if not _is_int(getattr(self, name), 1):
                raise ValueError(f"Config: `{name}` must be an integer >= 1; got {getattr(self, name)!r}.")
        for name in ("base_points", "base_patience", "plugin_patience", "generation_classes", "synthetic_counts"):
            value = getattr(self, name)
            if value is not None and not _is_int(value, 1):
                raise ValueError(f"Config: `{name}` must be None or an integer >= 1; got {value!r}.")
        for name in ("maf_dropout", "maf_noise"):
            if not isinstance(getattr(self, name), (int, float)) or not 0 <= getattr(self, name) < 1:
                raise ValueError(f"Config: `{name}` must be a number in [0, 1); got {getattr(self, name)!r}.")
        if self.decode_solver not in (None, "dopri5", "rk4") or self.base_solver not in ("dopri5", "rk4"):
            raise ValueError("Config: `base_solver` must be 'dopri5' or 'rk4' and `decode_solver` None, 'dopri5' "
                             f"or 'rk4'; got {self.base_solver!r} and {self.decode_solver!r}.")
        if not set(self.generation_metrics) <= {"cd", "emd", "emd_exact"} or not self.generation_metrics:
            raise ValueError("Config: `generation_metrics` must be a non-empty tuple from ('cd', 'emd', "
                             f"'emd_exact'); got {self.generation_metrics!r}.")
        if self.checkpoint is not None and (self.train_base or self.synthetic):
            raise ValueError("Config: give either `checkpoint` (a converted PointFlow) or `train_base` / `synthetic` "
                             "(a PointFlow trained here), not both.")

    @property
    def model_cache(self) -> Path:
        """The folder of a base model trained here (``cache_dir`` or ``out/cache``)."""
        return Path(self.cache_dir) if self.cache_dir is not None else Path(self.out) / "cache"


def synthetic(config: Config | None = None) -> Config:
    """The offline overlay: the generated stand-in and a small PointFlow trained here.

    8 classes of parametric shapes (1,874 clouds, imbalanced), 256 points per cloud, a
    PointFlow with encoder widths (64, 128, 128, 256), an ODE net 3 → 64 → 64 → 3 solved
    with 4 RK4 steps, trained for 6 epochs; both plugins with the paper's layers and blocks
    (5 x 2 and 5 x 4, C-MAF's dropout and latent noise) at width 256 instead of 1024, and
    C-MAF's batch 4096 scaled to 256 (the stand-in has 1/27 of ShapeNet's training clouds:
    4096 would be one step per epoch), at most 300 epochs with patience 30; 16 generated
    clouds per class against 32 test clouds, Chamfer and exact EMD (faster than the Sinkhorn
    approximation on a CPU at 256 points). About 20 minutes on a 2-core CPU; the run
    folder is ``runs/shapenet-synthetic``.
    """
    return dataclasses.replace(
        Config() if config is None else config,
        synthetic=True, train_base=True, out="runs/shapenet-synthetic", synthetic_points_per_cloud=1000,
        points=256, base_encoder_conv_dims=(64, 128, 128, 256), base_hidden_dims=(64, 64), base_solver="rk4",
        base_rk4_steps=4, base_epochs=6, base_patience=None, base_batch_size=64, encode_batch_size=256,
        maf_hidden=256, rnvp_hidden=256, maf_batch_size=256, plugin_epochs=300, plugin_patience=30,
        generation_samples=16, generation_references=32,
        generation_metrics=("cd", "emd_exact"), decode_rk4_steps=4, embedding_max_points=1000,
    )


def tiny(config: Config | None = None) -> Config:
    """The seconds-long check of the whole pipeline the tests run (``synthetic`` made tiny).

    12 shapes per class, 64 points, a PointFlow of widths 16 trained for 1 epoch with 2 RK4
    steps, plugins of width 32 for 3 epochs, 4 clouds per class with Chamfer only.
    """
    return dataclasses.replace(
        synthetic(config), out="runs/shapenet-tiny", synthetic_counts=12, synthetic_points_per_cloud=120,
        points=64, base_encoder_conv_dims=(16, 16), base_encoder_fc_dims=(16,), base_hidden_dims=(16,),
        base_rk4_steps=2, base_epochs=1, base_batch_size=16, maf_hidden=32, maf_layers=2, maf_blocks=1,
        maf_batch_size=64, rnvp_hidden=32, rnvp_layers=2, rnvp_blocks=1, rnvp_batch_size=32, plugin_epochs=3,
        generation_samples=4, generation_references=4, generation_metrics=("cd",), decode_rk4_steps=2,
        figure_columns=3, embedding_max_points=100,
    )


# -- stages ---------------------------------------------------------------------------------
def load_data(config: Config) -> ShapeNetDataset:
    """The clouds: ShapeNet from ``data_dir``, or the generated stand-in (written once) with ``synthetic``.

    With a ``checkpoint`` that stores PointFlow's training-set normalisation, the data are
    normalised with it (the codes then mean what the released encoder learned); otherwise
    with the training split's own statistics.
    """
    normalization = read_normalization(config.checkpoint) if config.checkpoint is not None else None
    if config.synthetic:
        root = Path(config.data_dir) if config.data_dir is not None else Path(config.out) / "synthetic_shapenet"
        write_synthetic_shapenet(root, counts=config.synthetic_counts,
                                 points_per_cloud=config.synthetic_points_per_cloud, seed=config.seed)
        categories: Any = SYNTHETIC_CATEGORIES
    else:
        if config.data_dir is None:
            raise UsageError(
                "shapenet: no data. Pass --data-dir with the ShapeNetCore.v2.PC15k folder (see the README's ShapeNet "
                "section for where to get it), or --synthetic to run on the generated stand-in."
            )
        root = Path(config.data_dir)
        categories = config.categories
    try:
        return load_shapenet(root, categories=categories, points=config.points, seed=config.seed,
                             normalization=normalization)
    except ValueError as error:  # a malformed tree or file: the user's data, not a bug
        raise UsageError(str(error)) from error


def base_model(config: Config, data: ShapeNetDataset) -> tuple[PointFlow, dict[str, Any]]:
    """The frozen PointFlow: the converted ``checkpoint``, or one trained here (resumably) with ``train_base``."""
    if config.checkpoint is not None:
        model = autoencoders.load(config.checkpoint)
        if not isinstance(model, PointFlow):
            raise UsageError(f"shapenet: `checkpoint` {config.checkpoint} holds a {type(model).__name__}, not a "
                             "PointFlow (convert one with `python -m fpn_jax.convert pointflow`).")
        info = {"cached": True, "source": str(config.checkpoint)}
    elif config.train_base:
        points = config.points if config.base_points is None else min(config.base_points, config.points)
        train_data = dataclasses.replace(data, **{
            split: dataclasses.replace(getattr(data, split), inputs=getattr(data, split).inputs[:, :points])
            for split in ("train", "validation")
        })

        def create() -> PointFlow:
            return PointFlow(
                128, num_points=points, encoder_conv_dims=config.base_encoder_conv_dims,
                encoder_fc_dims=config.base_encoder_fc_dims, hidden_dims=config.base_hidden_dims,
                solver=config.base_solver, rk4_steps=config.base_rk4_steps, rngs=nnx.Rngs(config.seed),
            )

        settings = dict(learning_rate=config.base_learning_rate, max_epochs=config.base_epochs,
                        patience=config.base_patience, batch_size=config.base_batch_size,
                        eval_batch_size=config.base_batch_size)
        model, info = stages.cached_base_model(config.model_cache / "pointflow", create, train_data,
                                               key=jax.random.key(config.seed), train_settings=settings)
        info["val_nats_per_coordinate"] = info["val_loss"] / (points * 3)
    else:
        raise UsageError("shapenet: no base model. Pass --checkpoint with a converted PointFlow (python -m "
                         "fpn_jax.convert pointflow ...), or --train-base to train one here.")
    if model.latent_features != 128 and config.checkpoint is not None:
        raise UsageError(f"shapenet: the checkpoint's latent width is {model.latent_features}; PointFlow's "
                         "all-category auto-encoder has 128.")
    if config.decode_solver is not None:
        model.configure_solver(solver=config.decode_solver, rk4_steps=config.decode_rk4_steps)
    info["solver"] = dict(model.solver_options.__dict__)
    return model, info


def make_plugin(plugin: str, config: Config, context_features: int) -> ConditionalMAF | ConditionalRealNVP:
    """A fresh C-MAF (``"maf"``) or C-RealNVP (``"rnvp"``) over the 128-d codes with the config's sizes."""
    if plugin == "maf":
        return ConditionalMAF(128, context_features, hidden_features=config.maf_hidden, num_layers=config.maf_layers,
                              num_blocks=config.maf_blocks, dropout=config.maf_dropout, rngs=nnx.Rngs(config.seed))
    return ConditionalRealNVP(128, context_features, hidden_features=config.rnvp_hidden,
                              num_layers=config.rnvp_layers, num_blocks=config.rnvp_blocks,
                              rngs=nnx.Rngs(config.seed))


def plugin_train_config(plugin: str, config: Config) -> TrainConfig:
    """Adam 1e-3, ``plugin_epochs`` with ``plugin_patience``, the plugin's batch size."""
    batch = config.maf_batch_size if plugin == "maf" else config.rnvp_batch_size
    return TrainConfig(max_epochs=config.plugin_epochs, patience=config.plugin_patience, batch_size=batch)


def evaluate_generation(
    flow: ConditionalMAF | ConditionalRealNVP | None,
    model: PointFlow,
    z: dict[str, np.ndarray],
    data: ShapeNetDataset,
    config: Config,
    *,
    key: jax.Array,
) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """Clouds generated per class, scored against the class's test clouds (PointFlow's metrics).

    For each scored class k: S = ``generation_samples`` codes z ~ p(z | y_k) decoded to
    ``points`` points each, against R ≤ ``generation_references`` test clouds of class k
    (normalised coordinates): MMD, COV and 1-NNA per distance, and the JSD. With
    ``flow=None`` the codes are instead the first S training clouds of class k (the ceiling:
    the decoder from real codes). Overall values average the classes weighted by R, as
    PointFlow's all-category tables do.

    Returns:
      ``(result, clouds)``: ``{"per_class": {name: metrics}, "mean": metrics, "classes",
      "samples_per_class", "non_finite_samples"}`` and the decoded clouds by class index.
    """
    test_labels = data.test.labels
    counts = np.bincount(test_labels, minlength=data.num_classes)
    order = [int(k) for k in np.argsort(-counts, kind="stable") if counts[k] > 0]
    classes = sorted(order[: config.generation_classes] if config.generation_classes else order)
    per_class: dict[str, dict[str, float]] = {}
    clouds: dict[int, np.ndarray] = {}
    weights, non_finite = [], 0
    for k in classes:
        key, sample_key, decode_key = jax.random.split(key, 3)
        if flow is None:
            codes = z["train"][data.train.labels == k][: config.generation_samples]
        else:
            context = one_hot(np.full(config.generation_samples, k), data.num_classes)
            codes = np.asarray(flow.sample(sample_key, context, allow_overflow=True))
            finite = np.isfinite(codes).all(1)
            non_finite += int((~finite).sum())
            codes = codes[finite]
        references = data.test.inputs[test_labels == k][: config.generation_references]
        if len(codes) == 0:
            continue
        generated = np.asarray(latents.decode(model, codes, key=decode_key, num_points=config.points))
        clouds[k] = generated
        name = data.context_names[k] if data.context_names else str(k)
        per_class[name] = point_clouds.generation_metrics(
            generated, references, metrics=config.generation_metrics, batch_size=64,
            progress=False,
        ) | {"samples": len(generated), "references": len(references)}
        weights.append(len(references))
    keys = [m for m in next(iter(per_class.values()), {}) if m not in ("samples", "references")]
    mean = {m: float(np.average([r[m] for r in per_class.values()], weights=weights)) for m in keys}
    return {"per_class": per_class, "mean": mean, "classes": len(per_class),
            "samples_per_class": config.generation_samples, "non_finite_samples": non_finite}, clouds


# -- the run --------------------------------------------------------------------------------
def train_and_evaluate(config: Config, workdir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Runs the whole experiment; writes (and returns) the metrics, the report and the figures.

    Args:
      config: the settings (``Config(data_dir=..., checkpoint=...)``, ``synthetic()``, ``tiny()``).
      workdir: the run folder (default ``config.out``; it becomes the recorded ``out``).

    Returns:
      What ``workdir/metrics.json`` holds: config, environment, data sizes, base model,
      baselines, per-plugin classification and generation results, the ceiling, timings.
    """
    config, out = stages.run_folder(config, workdir)
    timer = stages.Timer()
    record: dict[str, Any] = {
        "config": stages.config_record(config), "environment": stages.environment(), "paper": PAPER,
        "results": {}, "timings": timer.seconds,
    }
    with timer("data"):
        data = load_data(config)
    record["data"] = {split: len(getattr(data, split)) for split in stages.SPLITS} | {
        "num_classes": data.num_classes, "classes": list(data.context_names or ()),
        "test_per_class": np.bincount(data.test.labels, minlength=data.num_classes).tolist(),
        "points": config.points, "synthetic": config.synthetic,
    }
    with timer("base_model"):
        model, record["base_model"] = base_model(config, data)
    stages.write_metrics(out, record)
    with timer("encode"):
        z = stages.cached_latents(out / "latents", model, data, fingerprint=_fingerprint(config, model, data),
                                  batch_size=config.encode_batch_size)
    with timer("baselines"):
        record["baselines"] = stages.baselines(z, data, grid_search=config.grid_search, seed=config.seed)
    with timer("reconstruction"):
        record["reconstruction"] = _reconstruction(model, z, data, config, out)
    stages.write_metrics(out, record)
    if config.generation_ceiling:
        with timer("generation/ceiling"):
            record["ceiling"], _ = evaluate_generation(None, model, z, data, config,
                                                       key=jax.random.key(config.seed + 6))
    curves: dict[str, Any] = {}
    per_class: dict[str, np.ndarray] = {}
    embedded = {"test latents": (z["test"], data.test.labels)}
    for plugin in config.plugins:
        name = report.PLUGIN_NAMES[plugin]
        flow = make_plugin(plugin, config, data.context_features)
        with timer(f"{plugin}/fit"):
            history = stages.fit_plugin(flow, z, data, key=jax.random.key(config.seed + 4),
                                        config=plugin_train_config(plugin, config),
                                        checkpoint_dir=out / "plugins" / plugin,
                                        noise=config.maf_noise if plugin == "maf" else 0.0)
        curves[name] = {"train_nll": history.train_loss, "val_nll": history.val_loss}
        with timer(f"{plugin}/classify"):
            result = stages.evaluate_classification(flow, z, data)
        per_class[name] = np.asarray([np.nan if a is None else a for a in result["test_accuracy_per_class"]])
        record["results"][plugin] = result | stages.history_record(history)
        stages.write_metrics(out, record)
        with timer(f"{plugin}/generate"):
            generation, clouds = evaluate_generation(flow, model, z, data, config,
                                                     key=jax.random.key(config.seed + 3))
        record["results"][plugin]["generation"] = generation
        _sample_figure(clouds, data, config, out / f"samples_{plugin}.png", f"{name}: generated clouds (row = class)")
        samples, labels = stages.sample_per_class(flow, data, max(1, config.embedding_max_points // data.num_classes),
                                                  key=jax.random.key(config.seed + 5))
        finite = np.isfinite(samples).all(1)
        embedded[f"{name} samples"] = (samples[finite], labels[finite])
        stages.write_metrics(out, record)  # nothing lost if a later stage fails
    with timer("figures"):
        plots.training_curves(curves, out / "training_curves.png", title="Plugin training (NLL per latent)")
        plots.per_class_bars(per_class, out / "classification_per_class.png", ylabel="test accuracy",
                             class_names=list(data.context_names or ()) or None,
                             title="Bayes-rule test accuracy per class (uniform prior)")
        plots.embedding_2d({k: v[0] for k, v in embedded.items()}, {k: v[1] for k, v in embedded.items()},
                           out / "embedding.png", seed=config.seed, max_points=config.embedding_max_points,
                           title="PointFlow latents and plugin samples (t-SNE)")
    record["timings"]["total"] = timer.total()
    stages.write_metrics(out, record)
    report.write_shapenet_report(out, record)
    return record


def _reconstruction(
    model: PointFlow, z: dict[str, np.ndarray], data: ShapeNetDataset, config: Config, out: Path
) -> dict[str, Any]:
    """Chamfer distance of test clouds to their reconstructions ``D(E(x))`` (first ones of each class) and a figure."""
    labels = data.test.labels
    rows = np.concatenate([np.flatnonzero(labels == k)[:2] for k in range(data.num_classes)])
    originals = data.test.inputs[rows]
    decoded = np.asarray(latents.decode(model, z["test"][rows], key=jax.random.key(config.seed + 7),
                                        num_points=config.points))
    distance = np.asarray(point_clouds.chamfer(originals, decoded))
    shown = rows[: config.figure_classes * 2][::2][: config.figure_columns]
    pick = [int(np.flatnonzero(rows == r)[0]) for r in shown]
    names = [_class_name(data, int(labels[r])) for r in shown]
    plots.point_cloud_grid(np.stack([originals[pick], decoded[pick]]), out / "reconstructions.png",
                           row_labels=["test cloud", "D(E(x))"], column_labels=names,
                           title="PointFlow reconstructions of test clouds")
    return {"chamfer_mean": float(distance.mean()), "clouds": len(rows)}


def _sample_figure(clouds: dict[int, np.ndarray], data: ShapeNetDataset, config: Config, path: Path,
                   title: str) -> None:
    classes = sorted(clouds)[: config.figure_classes]
    if not classes:
        return
    grid = np.full((len(classes), config.figure_columns, config.points, 3), np.nan, np.float32)
    for i, k in enumerate(classes):
        shown = clouds[k][: config.figure_columns]
        grid[i, : len(shown)] = shown
    plots.point_cloud_grid(grid, path, row_labels=[_class_name(data, k) for k in classes], title=title)


def _class_name(data: ShapeNetDataset, k: int) -> str:
    return data.context_names[k] if data.context_names else str(k)


def _fingerprint(config: Config, model: PointFlow, data: ShapeNetDataset) -> dict[str, Any]:
    """What the latents depend on: the base model, the data and how they were read."""
    if config.checkpoint is not None:
        source = {"checkpoint": os.path.abspath(config.checkpoint),
                  "meta": checkpoint.read_meta(_meta_folder(Path(config.checkpoint)))}
    else:
        source = {"trained": os.path.abspath(config.model_cache / "pointflow"),
                  "meta": checkpoint.read_meta(config.model_cache / "pointflow" / "best")}
    return {"model": source, "data_dir": config.data_dir, "synthetic": config.synthetic, "points": config.points,
            "seed": config.seed, "rows": {s: len(getattr(data, s)) for s in stages.SPLITS},
            "first_ids": {s: list(data.model_ids.get(s, ())[:3]) for s in stages.SPLITS}}


def _meta_folder(path: Path) -> Path:
    return path / "best" if not (path / "meta").exists() and (path / "best" / "meta").exists() else path


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low


