"""Attribute manipulation on MNIST, measured: Morpho-MNIST attributes, FPN against MSP's linear edit.

The paper shows attribute manipulation only as CelebA pictures. Here the attributes are
measured on any image, so no learned judge stands between an edit and its score: every
MNIST image gets Morpho-MNIST's morphometrics (``fpn_jax.data.morpho``: stroke thickness,
slant, width of the de-slanted digit, ...), binarised at the training medians (thick / thin,
slanted right / left, wide / narrow by default), and the multi-hot context
``y = [one-hot digit (10), binary attributes (A)]``. For every base model::

    x ──E──▶ z ──fit──▶ p(z | y)                              C-MAF, C-RealNVP on the multi-hot y
    z, y ──▶ u = T⁻¹(z | y) ──▶ z' = T(u | y ⊕ e_a) ──D──▶ x'  FPN's edit of attribute a
    z ──▶ z' = z + d M, d_a = ±s − (z Mᵀ)_a ──D──▶ x'          MSP's linear edit (the MSP base only)
    x' ──measure──▶ did a move to the requested side of its median? did the rest stay?

Bases: MSP's VAE at 32x32 (``fpn_jax.autoencoders.MSP``, nc = 1, MNIST padded 28 → 32 and
scaled to [-1, 1]) trained here with MSP's objective on the labels 2y − 1 (all 10 + A
columns), so its own edit exists; and the paper's ConvVAE and ConvAE (cached in the shared
model cache as ``fpn_jax.experiments.mnist`` does), which have no edit of their own.

What is measured, on the first ``edit_images`` test images, for every attribute a and
direction (to side 1 for the images on side 0, and back): decoded edits re-measured,

* success: the share whose attribute now lies on the requested side of the training median
  (beside it ``before``: the share of the reconstructions D(z) already there), and the mean
  change of the measurement against the reconstruction (thickness in pixels, slant in
  radians; degrees in the report);
* preservation: the share whose other binary attributes equal the reconstruction's, and the
  share the judge CNN (``fpn_jax.evaluation.judge``) still reads as the true digit;
* identity: the RMS pixel distance between edit and reconstruction ([0, 1] scale, 28x28)
  and the Euclidean distance between their latents ‖z' − z‖.

A non-finite edit (the flow's noise → data direction overflowing) counts as failed in every
share and is left out of the distances. Beside the edits: conditional generation from every
multi-hot context (10 digits × 2^A attribute combinations; the samples' measured attributes
against the requested ones, and the digit the judge reads), and Bayes-rule prediction of
each attribute from the latent and the rest of the context (``inference.attribute_log_ratios``)
against a logistic regression on the latent alone (``evaluation.attributes.fit_linear_probe``).

``train_and_evaluate(config, workdir)`` writes ``metrics.json``, ``report.md`` (a table per
base: rows attribute × direction, columns FPN C-MAF, FPN C-RealNVP, MSP edit) and figures
(``edits_<base>.png``: rows test digits; columns original, reconstruction, each method's
flip of each attribute). Everything trained or measured is kept (base models and judge in
the model cache, MSP in ``model_cache``, measurements, latents, plugins and each method's
evaluation in the run folder), so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from fpn_jax import autoencoders, inference, latents
from fpn_jax.autoencoders.msp import MSP, default_msp_config, fit_msp
from fpn_jax.data import Dataset, Split
from fpn_jax.data.morpho import (
    ATTRIBUTE_SIDES,
    ATTRIBUTES,
    DEFAULT_ATTRIBUTES,
    binarize,
    measure,
    measure_dataset,
    medians,
    morpho_dataset,
)
from fpn_jax.evaluation import attributes as probes
from fpn_jax.evaluation import judge, plots
from fpn_jax.experiments import mnist, stages
from fpn_jax.flows import ConditionalMAF, ConditionalRealNVP
from fpn_jax.flows.flow import ConditionalFlow
from fpn_jax.runtime.chunks import map_in_chunks
from fpn_jax.train import TrainConfig

__all__ = [
    "BASES", "METHOD_NAMES", "PLUGINS", "Config", "edit_latents_fpn", "edit_latents_msp", "load_data", "make_plugin",
    "quick", "to_msp_images", "train_and_evaluate",
]

BASES = ("msp", "conv_vae", "conv_ae")
PLUGINS = ("maf", "rnvp")
BASE_NAMES = {"msp": "MSP (32 px)", "conv_vae": "ConvVAE", "conv_ae": "ConvAE"}
METHOD_NAMES = {"maf": "FPN C-MAF", "rnvp": "FPN C-RealNVP", "msp": "MSP edit"}
_PAD = 2  # MNIST 28 → 32 for MSP
_EVALUATION_VERSION = 2  # kept evaluations (out/evaluations) of an older version are recomputed


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on; the defaults are the full run.

    Attributes:
      data_dir: folder with the four MNIST IDX files; None: tensorflow-datasets.
      out: the run folder (``train_and_evaluate``'s default ``workdir``).
      bases, plugins: which base models and plugins to run.
      attributes: the binary attributes, in context order (``fpn_jax.data.morpho.ATTRIBUTES``).
      seed: one seed for the data split, training, sampling and measuring.
      subset: (train, validation, test) sizes of class-balanced subsets; None: all of MNIST.
      cache_dir, cache_in_out: where the ConvVAE / ConvAE, the judge and the MSP are kept
        (as ``fpn_jax.experiments.mnist.Config``: the shared model cache by default, so the
        two experiments share the ConvVAE, ConvAE and judge).
      base_epochs, base_batch_size, base_learning_rates: ConvVAE / ConvAE training (as mnist).
      msp_nf, msp_epochs, msp_batch_size, msp_learning_rate: the MSP (nf = 16: latent 64);
        Adam, gradient norm clipped as ``default_msp_config``; the best validation epoch kept.
      judge_epochs: training epochs of the judge CNN.
      plugin_epochs, plugin_patience, plugin_batch_size: flow training (Adam 1e-3).
      msp_plugin_hidden: the plugins' width on MSP's latents (5 layers x 2 blocks, no batch
        norm; the ConvVAE / ConvAE use the paper's settings, ``mnist.plugin_settings``).
      edit_images: test images edited (every attribute, each in its one direction); None: all.
      msp_edit_strength: MSP's edit sets the attribute's score to ±strength (labels are ±1).
      samples_per_context: conditional samples per multi-hot context (10 · 2^A contexts).
      bayes_rows: test latents scored by Bayes' rule; None: all.
      probe_epochs: most epochs of the logistic regression (early stopping on validation).
      figure_digits: test digits (rows) in the edit figures.
      measure_batch_size: images per ``medial_axis`` mosaic.
      eval_batch_size: latents per compiled call in the edits and sampling.
    """

    data_dir: str | None = None
    out: str = "runs/mnist_attributes"
    bases: tuple[str, ...] = BASES
    plugins: tuple[str, ...] = PLUGINS
    attributes: tuple[str, ...] = DEFAULT_ATTRIBUTES
    seed: int = 0
    subset: tuple[int, int, int] | None = None
    cache_dir: str | None = None
    cache_in_out: bool = False
    base_epochs: int = 10
    base_batch_size: int = 1024
    base_learning_rates: tuple[tuple[str, float], ...] = (("conv_vae", 1e-3), ("conv_ae", 5e-3))
    msp_nf: int = 16
    msp_epochs: int = 10
    msp_batch_size: int = 128
    msp_learning_rate: float = 1e-3
    judge_epochs: int = 3
    plugin_epochs: int = 100
    plugin_patience: int | None = 10
    plugin_batch_size: int = 1024
    msp_plugin_hidden: int = 64
    edit_images: int | None = 2000
    msp_edit_strength: float = 1.0
    samples_per_context: int = 50
    bayes_rows: int | None = None
    probe_epochs: int = 100
    figure_digits: int = 8
    measure_batch_size: int = 256
    eval_batch_size: int = 4096

    def __post_init__(self) -> None:
        for name, chosen, allowed in (("bases", self.bases, BASES), ("plugins", self.plugins, PLUGINS),
                                      ("attributes", self.attributes, tuple(ATTRIBUTES))):
            if not isinstance(chosen, tuple) or not chosen or set(chosen) - set(allowed) or len(set(chosen)) < len(
                    chosen):
                raise ValueError(f"Config: `{name}` must be a non-empty tuple of distinct names from {allowed}; "
                                 f"got {chosen!r}.")
        if self.subset is not None and (
            not isinstance(self.subset, tuple) or len(self.subset) != 3 or not all(_is_int(n, 1) for n in self.subset)
        ):
            raise ValueError(f"Config: `subset` must be None or (train, validation, test) sizes >= 1; "
                             f"got {self.subset!r}.")
        for name in ("base_epochs", "base_batch_size", "msp_nf", "msp_epochs", "msp_batch_size", "judge_epochs",
                     "plugin_epochs", "plugin_batch_size", "msp_plugin_hidden", "samples_per_context", "probe_epochs",
                     "figure_digits", "measure_batch_size", "eval_batch_size"):
            if not _is_int(getattr(self, name), 1):
                raise ValueError(f"Config: `{name}` must be an integer >= 1; got {getattr(self, name)!r}.")
        for name in ("plugin_patience", "edit_images", "bayes_rows"):
            value = getattr(self, name)
            if value is not None and not _is_int(value, 1):
                raise ValueError(f"Config: `{name}` must be None or an integer >= 1; got {value!r}.")
        for name in ("msp_learning_rate", "msp_edit_strength"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"Config: `{name}` must be a positive number; got {value!r}.")
        missing = sorted(set(self.bases) - {"msp"} - set(dict(self.base_learning_rates)))
        if missing:
            raise ValueError(f"Config: `base_learning_rates` has no step size for {missing}.")

    @property
    def model_cache(self) -> Path:
        """The folder of the trained base models, the MSP and the judge (see ``cache_dir``)."""
        return self.as_mnist().model_cache

    def as_mnist(self) -> mnist.Config:
        """The ``mnist.Config`` that loads the same data and caches the same ConvVAE, ConvAE and judge."""
        conv = tuple(b for b in self.bases if b != "msp") or ("conv_vae",)
        return mnist.Config(
            data_dir=self.data_dir, out=self.out, bases=conv, seed=self.seed, subset=self.subset,
            cache_dir=self.cache_dir, cache_in_out=self.cache_in_out, base_epochs=self.base_epochs,
            base_batch_size=self.base_batch_size, base_learning_rates=self.base_learning_rates,
            judge_epochs=self.judge_epochs,
        )


def quick(config: Config | None = None) -> Config:
    """The quick overlay: a balanced 3000 / 1000 / 1000 subset, short training, 300 edited images.

    3 base epochs (batch 128), MSP 3 epochs, 1 judge epoch, 15 plugin epochs in batches of
    256, 300 test images edited, 10 samples per context, the run folder
    ``runs/mnist_attributes-quick`` with the trained models kept in it (``out/cache``):
    numbers that only show the pipeline works. ``experiments/mnist_attributes.py --quick``: about 6 minutes
    from scratch on a shared 2-core CPU (the MSP's 3 epochs 80 s of it), 1.7 minutes again with the models kept.
    """
    return dataclasses.replace(
        Config() if config is None else config,
        out="runs/mnist_attributes-quick", subset=(3000, 1000, 1000), cache_in_out=True, base_epochs=3,
        base_batch_size=128, msp_epochs=3, judge_epochs=1, plugin_epochs=15, plugin_batch_size=256, edit_images=300,
        samples_per_context=10, probe_epochs=30,
    )


# -- data -------------------------------------------------------------------------------------
def load_data(config: Config, *, progress: bool = True) -> tuple[Dataset, dict[str, dict[str, np.ndarray]],
                                                                   dict[str, float]]:
    """MNIST (``mnist.load_data``) measured (kept in ``out/morphometrics``), with multi-hot contexts.

    Returns:
      ``(data, measurements, thresholds)``: the data set with contexts
      ``[one-hot digit, binary attributes]``; ``{split: {measurement: (N,)}}``; the
      training medians ``{attribute: t}``.
    """
    plain = mnist.load_data(config.as_mnist())
    measured = measure_dataset(plain, folder=Path(config.out) / "morphometrics", progress=progress,
                               batch_size=config.measure_batch_size, seed=config.seed)
    data, thresholds = morpho_dataset(plain, measured, attributes=config.attributes)
    return data, measured, thresholds


def to_msp_images(images: np.ndarray) -> np.ndarray:
    """MNIST (N, 28, 28, 1) in [0, 1] → MSP's (N, 32, 32, 1) in [-1, 1]: padded by 2 (black), 2x − 1."""
    images = np.asarray(images, np.float32)
    return 2.0 * np.pad(images, ((0, 0), (_PAD, _PAD), (_PAD, _PAD), (0, 0))) - 1.0


def _as_mnist_images(images: np.ndarray, base: str) -> np.ndarray:
    """Decoded images → (N, 28, 28, 1) in [0, 1] (MSP's: the padding cropped, (x + 1) / 2)."""
    images = np.asarray(images, np.float32)
    if base == "msp":
        images = (images[:, _PAD:-_PAD, _PAD:-_PAD] + 1.0) / 2.0
    return np.clip(images, 0.0, 1.0)


def _msp_dataset(data: Dataset) -> Dataset:
    def convert(split: Split) -> Split:
        return Split(inputs=to_msp_images(split.inputs), context=split.context, labels=split.labels)

    return dataclasses.replace(data, train=convert(data.train), validation=convert(data.validation),
                               test=convert(data.test), value_range=(-1.0, 1.0))


# -- models -----------------------------------------------------------------------------------
def _base_model(base: str, data: Dataset, config: Config) -> tuple[autoencoders.Autoencoder, dict[str, Any]]:
    """The frozen base: the ConvVAE / ConvAE of ``mnist.base_model``, or an MSP trained here (cached)."""
    if base != "msp":
        return mnist.base_model(base, data, config.as_mnist())
    settings = default_msp_config(learning_rate=config.msp_learning_rate, batch_size=config.msp_batch_size,
                                  max_epochs=config.msp_epochs)
    fingerprint = {"data": {"subset": config.subset, "seed": config.seed, "context_names": data.context_names,
                            "rows": [len(data.train), len(data.validation)]},
                   "nf": config.msp_nf, "train": dataclasses.asdict(settings)}
    folder = config.model_cache / f"msp_mnist_{len(data.context_names)}"

    def train(folder: Path) -> tuple[MSP, Any]:
        model = MSP(32, config.msp_nf, data.context_features, nc=1, rngs=nnx.Rngs(config.seed))
        history = fit_msp(model, to_msp_images(data.train.inputs), 2.0 * data.train.context - 1.0,
                          key=jax.random.key(config.seed), config=settings,
                          validation=(to_msp_images(data.validation.inputs), 2.0 * data.validation.context - 1.0),
                          checkpoint_dir=folder)
        return model, history

    model, history, cached = stages.cached_fit(folder, train, fingerprint=fingerprint, expect=MSP)
    return autoencoders.freeze(model), {
        "cached": cached, **stages.history_record(history), "val_loss": history.val_loss[history.best_epoch],
        "latent_features": model.latent_features, "learning_rate": config.msp_learning_rate,
    }


def make_plugin(base: str, plugin: str, latent_features: int, context_features: int, config: Config
                ) -> ConditionalMAF | ConditionalRealNVP:
    """A fresh C-MAF / C-RealNVP: the paper's settings on the ConvVAE / ConvAE, width ``msp_plugin_hidden`` on MSP."""
    settings = (dict(hidden_features=config.msp_plugin_hidden, num_layers=5, num_blocks=2) if base == "msp"
                else mnist.plugin_settings(base))
    cls = ConditionalMAF if plugin == "maf" else ConditionalRealNVP
    return cls(latent_features, context_features, **settings, rngs=nnx.Rngs(config.seed))


# -- edits ------------------------------------------------------------------------------------
def _flipped(y: np.ndarray, column: int) -> np.ndarray:
    out = y.copy()
    out[:, column] = 1.0 - out[:, column]
    return out


def edit_latents_fpn(flow: ConditionalFlow, z: np.ndarray, y: np.ndarray, columns: list[int], *,
                     batch_size: int = 4096) -> np.ndarray:
    """FPN's edits ``z'_a = T(T⁻¹(z | y) | y ⊕ e_a)`` for every context column a in ``columns``: (A, N, L).

    Rows that overflow float32 in the noise → data direction come back non-finite.
    """
    def edit(zc: np.ndarray, yc: np.ndarray, new: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(inference.manipulate(flow, zc, yc, new))
        except FloatingPointError:
            return np.asarray(flow.from_noise(flow.to_noise(zc, yc), new, allow_overflow=True))

    n = len(z)
    zs, ys = np.tile(z, (len(columns), 1)), np.tile(y, (len(columns), 1))
    new = np.concatenate([_flipped(y, c) for c in columns])
    return _chunked(edit, zs, ys, new, batch_size=batch_size).reshape(len(columns), n, -1)


def edit_latents_msp(model: MSP, z: np.ndarray, y: np.ndarray, columns: list[int], strength: float) -> np.ndarray:
    """MSP's edits: the score of column a set to ``strength · (1 − 2 y_a)`` (the other side), (A, N, L)."""
    return np.stack([np.asarray(model.edit_latents(z, {c: strength * (1.0 - 2.0 * y[:, c])})) for c in columns])


# -- evaluation -------------------------------------------------------------------------------
@dataclasses.dataclass
class _Reference:
    """The edited test images' latents, contexts and reconstructions, measured once per base."""

    z: np.ndarray  # (E, L)
    y: np.ndarray  # (E, K + A)
    labels: np.ndarray  # (E,)
    originals: np.ndarray  # (E, 28, 28, 1)
    images: np.ndarray  # D(z), (E, 28, 28, 1)
    measured: dict[str, np.ndarray]
    binary: np.ndarray  # (E, A)
    judged: np.ndarray  # (E,)
    decoder_thresholds: dict[str, float]  # the attributes' medians over the reconstructions
    decoder_binary: np.ndarray  # (E, A) the reconstructions binarised at those


class _Context:
    """What every evaluation of one base needs (model, judge, thresholds, config)."""

    def __init__(self, base: str, model: autoencoders.Autoencoder, judge_: judge.DigitCNN, data: Dataset,
                 thresholds: dict[str, float], config: Config):
        self.base, self.model, self.judge, self.config = base, model, judge_, config
        self.thresholds, self.attributes = thresholds, config.attributes
        self.classes = int(data.num_classes)
        self.columns = [self.classes + i for i in range(len(config.attributes))]

    def decode(self, z: np.ndarray) -> np.ndarray:
        """(N, L) finite latents → (N, 28, 28, 1) images in [0, 1]."""
        if len(z) == 0:
            return np.zeros((0, 28, 28, 1), np.float32)
        return _as_mnist_images(latents.decode(self.model, z, batch_size=1024), self.base)

    def measure(self, images: np.ndarray, what: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        measured = measure(images, batch_size=self.config.measure_batch_size, progress=what, seed=self.config.seed)
        return measured, binarize(measured, self.thresholds, self.attributes)

    def judge_digits(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(judge.predict(self.judge, images)) if len(images) else np.zeros(0, np.int64)


def _reference(ctx: _Context, z_test: np.ndarray, data: Dataset) -> _Reference:
    rows = len(z_test) if ctx.config.edit_images is None else min(ctx.config.edit_images, len(z_test))
    z = z_test[:rows]
    images = ctx.decode(z)
    measured, binary = ctx.measure(images, f"{ctx.base}: measuring reconstructions")
    decoder_thresholds = medians(measured, ctx.attributes)
    return _Reference(z=z, y=data.test.context[:rows], labels=data.test.labels[:rows],
                      originals=_as_mnist_images(data.test.inputs[:rows], "plain"), images=images, measured=measured,
                      binary=binary, judged=ctx.judge_digits(images), decoder_thresholds=decoder_thresholds,
                      decoder_binary=binarize(measured, decoder_thresholds, ctx.attributes))


def _edit_scores(ctx: _Context, ref: _Reference, edited_all: np.ndarray, name: str) -> dict[str, Any]:
    """Success, preservation and identity of edits (A, E, L), per attribute and direction (see the module doc)."""
    per: dict[str, Any] = {}
    non_finite = 0
    pairs = np.random.default_rng(0).permutation(len(ref.z))
    latent_scale = max(float(np.mean(np.linalg.norm(ref.z - ref.z[pairs], axis=1))), 1e-12)
    for i, attribute in enumerate(tqdm(ctx.attributes, desc=f"{name}: scoring edits", unit="attribute")):
        edited = edited_all[i]
        finite = np.isfinite(edited).all(axis=1)
        non_finite += int((~finite).sum())
        images = np.zeros_like(ref.images)
        images[finite] = ctx.decode(edited[finite])
        measured, binary = ctx.measure(images[finite], f"{name}: measuring {attribute} edits")
        full = {k: np.full(len(edited), np.nan) for k in measured}
        for k, v in measured.items():
            full[k][finite] = v
        b = np.zeros_like(ref.binary)
        b[finite] = binary
        b_decoder = binarize(full, ref.decoder_thresholds, ctx.attributes)
        judged = np.full(len(edited), -1)
        judged[finite] = ctx.judge_digits(images[finite])
        key = ATTRIBUTES[attribute]
        valid = finite & np.isfinite(full[key])
        others = [j for j in range(len(ctx.attributes)) if j != i]
        kept = finite & np.all(b[:, others] == ref.binary[:, others], axis=1) & np.all(
            np.isfinite(np.stack([full[ATTRIBUTES[ctx.attributes[j]]] for j in others] or [full[key]], 1)), axis=1)
        pixel = np.sqrt(np.mean((images - ref.images) ** 2, axis=(1, 2, 3)))
        distance = np.linalg.norm(np.where(finite[:, None], edited, 0.0) - ref.z, axis=1)
        for target in (1, 0):
            rows = ref.y[:, ctx.columns[i]] == 1 - target
            n = int(rows.sum())
            side = ATTRIBUTE_SIDES[attribute]
            entry: dict[str, Any] = {"attribute": attribute, "from": side[1 - target], "to": side[target], "rows": n}
            if n:
                moved = valid & rows & np.isfinite(ref.measured[key])
                entry |= {
                    "success": float(np.mean((b[rows, i] == target) & valid[rows])),
                    "before": float(np.mean(ref.binary[rows, i] == target)),
                    "success_decoder_median": float(np.mean((b_decoder[rows, i] == target) & valid[rows])),
                    "before_decoder_median": float(np.mean(ref.decoder_binary[rows, i] == target)),
                    "change": _mean(full[key][moved] - ref.measured[key][moved]),
                    "others_kept": float(np.mean(kept[rows])),
                    "class_kept": float(np.mean(judged[rows] == ref.labels[rows])),
                    "pixel_rmse": _mean(pixel[rows & finite]),
                    "latent_distance": _mean(distance[rows & finite]),
                    "latent_distance_relative": _mean(distance[rows & finite] / latent_scale),
                    "non_finite": int((rows & ~finite).sum()),
                }
            per[f"{attribute}:{side[target]}"] = entry
    scored = [e for e in per.values() if e["rows"]]
    keys = ("success", "before", "success_decoder_median", "before_decoder_median", "others_kept", "class_kept",
            "pixel_rmse", "latent_distance_relative")
    return {"rows": len(ref.z), "non_finite": non_finite, "latent_scale": latent_scale,
            "mean": {k: _mean([e[k] for e in scored if e[k] is not None]) for k in keys}, "per_direction": per}


def _all_contexts(classes: int, attributes: int) -> np.ndarray:
    """Every multi-hot context: (K · 2^A, K + A), digit-major, attribute bits in binary order."""
    bits = np.asarray(list(itertools.product((0.0, 1.0), repeat=attributes)), np.float32)
    return np.asarray([np.concatenate([np.eye(classes, dtype=np.float32)[k], b]) for k in range(classes) for b in bits])


def _generation(ctx: _Context, flow: ConditionalFlow, name: str) -> dict[str, Any]:
    """Samples from every multi-hot context: measured attributes against the requested ones, the judge's digit."""
    contexts = _all_contexts(ctx.classes, len(ctx.attributes))
    requested = np.repeat(contexts, ctx.config.samples_per_context, axis=0)
    noise = np.asarray(jax.random.normal(jax.random.key(ctx.config.seed + 3), (len(requested), flow.features)))
    samples = _chunked(lambda u, c: np.asarray(flow.from_noise(u, c, allow_overflow=True)), noise, requested,
                       batch_size=ctx.config.eval_batch_size)  # z = T(u | y), u ~ N(0, I): flow.sample's draw
    finite = np.isfinite(samples).all(axis=1)
    images = ctx.decode(samples[finite])
    measured, binary = ctx.measure(images, f"{name}: measuring samples")
    wanted = requested[finite][:, ctx.classes:]
    digits = requested[:, : ctx.classes].argmax(1)
    judged = np.full(len(requested), -1)
    judged[finite] = ctx.judge_digits(images)
    per_attribute = {}
    for i, attribute in enumerate(ctx.attributes):
        value = measured[ATTRIBUTES[attribute]]
        on, off = wanted[:, i] == 1, wanted[:, i] == 0
        per_attribute[attribute] = {
            "agreement": float(np.sum(binary[:, i] == wanted[:, i]) / len(requested)),
            "mean_when_1": _mean(value[on]), "mean_when_0": _mean(value[off]),
        }
    return {"samples": len(requested), "non_finite": int((~finite).sum()),
            "all_attributes_agree": float(np.sum(np.all(binary == wanted, axis=1)) / len(requested)),
            "digit_accuracy": float(np.mean(judged == digits)), "per_attribute": per_attribute,
            "agreement_mean": float(np.mean([p["agreement"] for p in per_attribute.values()]))}


def _bayes(ctx: _Context, flow: ConditionalFlow, z: np.ndarray, y: np.ndarray, y_train: np.ndarray) -> dict[str, Any]:
    """Per attribute: does ``log p(z | y) − log p(z | y ⊕ e_a) > 0`` pick its true value (uniform prior; prior)?"""
    rows = len(z) if ctx.config.bayes_rows is None else min(ctx.config.bayes_rows, len(z))
    ratios = inference.attribute_log_ratios(flow, z[:rows], y[:rows], batch_size=512)[:, ctx.columns]
    truth = y[:rows, ctx.columns]
    rate = np.clip(y_train[:, ctx.columns].mean(0), 1e-6, 1 - 1e-6)
    prior = np.where(truth > 0.5, 1.0, -1.0) * np.log(rate / (1 - rate))
    finite = np.isfinite(ratios)
    uniform = np.mean(np.where(finite, ratios, -1.0) > 0, axis=0)
    with_prior = np.mean(np.where(finite, ratios + prior, -1.0) > 0, axis=0)
    return {"rows": rows, "non_finite": int((~finite).sum()),
            "accuracy": dict(zip(ctx.attributes, map(float, uniform), strict=True)),
            "accuracy_prior": dict(zip(ctx.attributes, map(float, with_prior), strict=True)),
            "accuracy_mean": float(np.mean(uniform))}


def _probe(ctx: _Context, z: dict[str, np.ndarray], data: Dataset, folder: Path) -> dict[str, Any]:
    """Logistic regression on the latents alone, one output per binary attribute (cached in ``folder``)."""
    settings = probes.default_probe_config(max_epochs=ctx.config.probe_epochs)
    y = {s: getattr(data, s).context[:, ctx.columns] for s in stages.SPLITS}
    fingerprint = {"train": dataclasses.asdict(settings), "rows": {s: len(z[s]) for s in stages.SPLITS},
                   "z": float(np.sum(z["train"][:100], dtype=np.float64)), "attributes": ctx.attributes}

    def train(folder: Path) -> tuple[probes.LinearProbe, Any]:
        return probes.fit_linear_probe(z["train"], y["train"], key=jax.random.key(ctx.config.seed + 6),
                                       config=settings, validation=(z["validation"], y["validation"]),
                                       checkpoint_dir=folder)

    probe, history, cached = stages.cached_fit(folder, train, fingerprint=fingerprint, expect=probes.LinearProbe)
    accuracy = probes.attribute_accuracy(probes.probe_probabilities(probe, z["test"]), y["test"])
    return {"cached": cached, **stages.history_record(history),
            "accuracy": dict(zip(ctx.attributes, map(float, accuracy), strict=True)),
            "accuracy_mean": float(np.mean(accuracy))}


# -- the run ----------------------------------------------------------------------------------
def train_and_evaluate(config: Config, workdir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Runs the whole experiment; writes (and returns) the metrics, the report and the figures.

    Args:
      config: the settings (``Config(data_dir=...)``, ``quick(...)``, or either with changes).
      workdir: the run folder (default ``config.out``; it becomes the recorded ``out``).

    Returns:
      What ``workdir/metrics.json`` holds: config, environment, data (sizes, medians, rates),
      judge, and per base: the base model, the reconstructions' scores, the probe, and per
      method (``maf``, ``rnvp``, ``msp``) the edit scores, plus per plugin the test NLL,
      Bayes-rule accuracies and generation scores; timings.
    """
    config, out = stages.run_folder(config, workdir)
    timer = stages.Timer()
    record: dict[str, Any] = {"config": stages.config_record(config), "environment": stages.environment(),
                              "results": {}, "timings": timer.seconds}
    with timer("data"):
        data, measured, thresholds = load_data(config)
    record["data"] = {split: len(getattr(data, split)) for split in stages.SPLITS} | {
        "attributes": list(config.attributes), "medians": thresholds,
        "train_rates": dict(zip(config.attributes, map(float, data.train.context[:, data.num_classes:].mean(0)),
                                strict=True)),
        "test_medians_of_measurements": {k: float(np.nanmedian(v)) for k, v in measured["test"].items()},
    }
    with timer("judge"):
        judge_, record["judge"] = mnist.judge_model(data, config.as_mnist())
    stages.write_metrics(out, record)
    for base in config.bases:
        _run_base(base, data, thresholds, judge_, config, out, timer, record)
    record["timings"]["total"] = timer.total()
    stages.write_metrics(out, record)
    write_report(out, record)
    return record


def _run_base(base: str, data: Dataset, thresholds: dict[str, float], judge_: judge.DigitCNN, config: Config,
              out: Path, timer: stages.Timer, record: dict[str, Any]) -> None:
    """One base model: train or load, encode, reference, probe, every plugin, MSP's edit; fills ``record``."""
    result: dict[str, Any] = {"methods": {}, "plugins": {}}
    record["results"][base] = result
    with timer(f"{base}/base_model"):
        model, result["base_model"] = _base_model(base, data, config)
    inputs = _msp_dataset(data) if base == "msp" else data
    with timer(f"{base}/encode"):
        fingerprint = {"base": base, "best_epoch": result["base_model"]["best_epoch"],
                       "val_loss": result["base_model"]["val_loss"], "subset": config.subset, "seed": config.seed,
                       "data_dir": None if config.data_dir is None else os.path.abspath(config.data_dir)}
        z = stages.cached_latents(out / "latents" / base, model, inputs, fingerprint=fingerprint)
    ctx = _Context(base, model, judge_, data, thresholds, config)
    with timer(f"{base}/reference"):
        ref = _reference(ctx, z["test"], data)
        truth = ref.y[:, ctx.columns]
        result["reconstruction"] = {
            "rows": len(ref.z), "pixel_rmse": float(np.mean(np.sqrt(np.mean((ref.images - ref.originals) ** 2,
                                                                               axis=(1, 2, 3))))),
            "attribute_agreement": dict(zip(config.attributes, map(float, np.mean(ref.binary == truth, 0)),
                                            strict=True)),
            "digit_accuracy": float(np.mean(ref.judged == ref.labels)),
            "medians": ref.decoder_thresholds,
        }
    with timer(f"{base}/probe"):
        result["probe"] = _probe(ctx, z, data, out / "probes" / base)
    stages.write_metrics(out, record)
    edits: dict[str, np.ndarray] = {}
    figure_rows = min(config.figure_digits, len(ref.z))
    for plugin in config.plugins:
        tag = f"{base}_{plugin}"
        fresh = make_plugin(base, plugin, model.latent_features, data.context_features, config)
        settings = TrainConfig(max_epochs=config.plugin_epochs, patience=config.plugin_patience,
                               batch_size=config.plugin_batch_size)
        plugin_fingerprint = {"flow": fresh.config, "train": dataclasses.asdict(settings), "latents": fingerprint,
                              "context": list(data.context_names), "thresholds": thresholds}

        def train(folder: Path, flow: ConditionalFlow = fresh, settings: TrainConfig = settings) -> tuple[Any, Any]:
            history = stages.fit_plugin(flow, z, data, key=jax.random.key(config.seed + 4), config=settings,
                                        checkpoint_dir=folder)
            return flow, history

        with timer(f"{tag}/fit"):
            flow, history, cached = stages.cached_fit(out / "plugins" / tag, train, fingerprint=plugin_fingerprint,
                                                      expect=ConditionalFlow)
        evaluation_fingerprint = plugin_fingerprint | {"evaluation": _evaluation_settings(config)}

        def evaluate(flow: ConditionalFlow = flow, name: str = METHOD_NAMES[plugin]) -> dict[str, Any]:
            log_p = _chunked(flow.log_prob, z["test"], data.test.context, batch_size=config.eval_batch_size)
            nll = float(-np.mean(log_p))
            return {"test_nll": nll, "test_nll_per_dim": nll / model.latent_features,
                    "bayes": _bayes(ctx, flow, z["test"], data.test.context, data.train.context),
                    "generation": _generation(ctx, flow, name)}

        with timer(f"{tag}/evaluate"):
            result["plugins"][plugin] = {"cached": cached, **stages.history_record(history)} | stages.cached_result(
                out / "evaluations" / f"{tag}.json", evaluate, fingerprint=evaluation_fingerprint)
        with timer(f"{tag}/edits"):
            edited = edit_latents_fpn(flow, ref.z, ref.y, ctx.columns, batch_size=config.eval_batch_size)
            edits[plugin] = edited[:, :figure_rows]
            result["methods"][plugin] = stages.cached_result(
                out / "evaluations" / f"{tag}_edits.json",
                lambda edited=edited, name=METHOD_NAMES[plugin]: _edit_scores(ctx, ref, edited, name),
                fingerprint=evaluation_fingerprint)
        stages.write_metrics(out, record)
    if base == "msp":
        with timer("msp/msp_edits"):
            edited = edit_latents_msp(model, ref.z, ref.y, ctx.columns, config.msp_edit_strength)
            edits["msp"] = edited[:, :figure_rows]
            result["methods"]["msp"] = stages.cached_result(
                out / "evaluations" / "msp_msp_edits.json", lambda: _edit_scores(ctx, ref, edited, "MSP edit"),
                fingerprint={"latents": fingerprint, "evaluation": _evaluation_settings(config),
                             "strength": config.msp_edit_strength})
        stages.write_metrics(out, record)
    with timer(f"{base}/figure"):
        _edit_figure(ctx, ref, edits, figure_rows, out / f"edits_{base}.png")
        result["figure"] = f"edits_{base}.png"


def _evaluation_settings(config: Config) -> dict[str, Any]:
    """What the kept evaluations depend on besides the model: the settings, and the version of the scores."""
    names = ("edit_images", "samples_per_context", "bayes_rows", "attributes", "subset", "seed", "judge_epochs")
    return {"version": _EVALUATION_VERSION} | {k: getattr(config, k) for k in names}


# -- figure and report ------------------------------------------------------------------------
def _edit_figure(ctx: _Context, ref: _Reference, edits: dict[str, np.ndarray], rows: int, path: Path) -> None:
    """Rows: test digits; columns: original, reconstruction, then each method's flip of each attribute."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns, labels = [ref.originals[:rows], ref.images[:rows]], ["original", "reconstruction"]
    for method, edited in edits.items():
        for i, attribute in enumerate(ctx.attributes):
            images = np.ones((rows, 28, 28, 1), np.float32) * 0.5
            finite = np.isfinite(edited[i]).all(axis=1)
            images[finite] = ctx.decode(edited[i][finite])
            columns.append(images)
            labels.append(f"{METHOD_NAMES[method].replace('FPN ', '')}\nflip {attribute}")
    grid = np.stack(columns, axis=1)[..., 0]  # (rows, columns, 28, 28)
    gap = 2
    r, c = grid.shape[:2]
    canvas = np.ones((r * (28 + gap) - gap, c * (28 + gap) - gap), np.float32)
    for i in range(r):
        for j in range(c):
            canvas[i * (28 + gap): i * (28 + gap) + 28, j * (28 + gap): j * (28 + gap) + 28] = grid[i, j]
    fig = Figure(figsize=(0.62 * c + 0.6, 0.62 * r + 1.3), dpi=plots.DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([j * (28 + gap) + 13.5 for j in range(c)], labels=labels, fontsize=6)
    ax.xaxis.tick_top()
    ax.set_yticks([i * (28 + gap) + 13.5 for i in range(r)],
                  labels=[f"{ref.labels[i]}: " + "".join("+" if v else "-" for v in ref.y[i, ctx.columns])
                          for i in range(r)], fontsize=7)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.suptitle(f"{BASE_NAMES[ctx.base]}: each edit flips one attribute ({', '.join(ctx.attributes)}; row label: "
                 "digit and its +/- attributes)", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=plots.DPI, format="png")


def _format_change(value: float | None, attribute: str) -> str:
    if value is None:
        return "–"
    if ATTRIBUTES[attribute] == "slant":
        return f"{np.degrees(value):+.1f}°"
    unit = " px²" if ATTRIBUTES[attribute] == "area" else " px"
    return f"{value:+.2f}{unit}"


def write_report(out: str | os.PathLike, record: dict[str, Any]) -> Path:
    """``out/report.md``: per base the edit tables (success, preservation, identity), generation, prediction."""
    lines = ["# Attribute manipulation on MNIST, measured (Morpho-MNIST attributes)", ""]
    data = record["data"]
    medians = ", ".join(f"{a} = {_format_change(v, a).lstrip('+')}" for a, v in data["medians"].items())
    lines += [f"Data: {data['train']} / {data['validation']} / {data['test']} images; attributes "
              f"{', '.join(data['attributes'])} binarised at the training medians ({medians}). Judge CNN test "
              f"accuracy {record['judge'].get('test_accuracy', float('nan')):.4f}.", ""]
    for base, result in record["results"].items():
        if "methods" not in result or "reconstruction" not in result:
            continue
        methods = [m for m in ("maf", "rnvp", "msp") if m in result["methods"]]
        head = "| attribute: from → to | rows | before | " + " | ".join(METHOD_NAMES[m] for m in methods) + " |"
        rule = "|---|---|---|" + "---|" * len(methods)
        rec = result["reconstruction"]
        lines += [f"## {BASE_NAMES[base]}", "",
                  f"{rec['rows']} test images edited. Reconstructions: RMS pixel error {rec['pixel_rmse']:.3f}, "
                  f"judge accuracy {rec['digit_accuracy']:.3f}, attributes measured as labelled: "
                  + ", ".join(f"{a} {v:.3f}" for a, v in rec["attribute_agreement"].items()) + ".", "",
                  "**Success** (share of edits measured on the requested side of the median; mean change of the "
                  "measurement against the reconstruction). *before*: share of reconstructions already there.", "",
                  head, rule]
        first = result["methods"][methods[0]]["per_direction"] if methods else {}
        for key, entry in first.items():
            if not entry["rows"]:
                continue
            cells = []
            for m in methods:
                e = result["methods"][m]["per_direction"][key]
                cells.append(f"{e['success']:.3f} ({_format_change(e['change'], e['attribute'])})")
            lines.append(f"| {entry['attribute']}: {entry['from']} → {entry['to']} | {entry['rows']} | "
                         f"{entry['before']:.3f} | " + " | ".join(cells) + " |")
        lines += ["", "**Success against the reconstructions' medians** (the same edits, each attribute thresholded "
                  "at the median of this base's reconstructions of the edited images, "
                  + ", ".join(f"{a} {_format_change(v, a).lstrip('+')}" for a, v in rec["medians"].items())
                  + ": what an edit achieves measured in the decoder's own range).", "", head, rule]
        for key, entry in first.items():
            if entry["rows"]:
                cells = [f"{result['methods'][m]['per_direction'][key]['success_decoder_median']:.3f}"
                         for m in methods]
                lines.append(f"| {entry['attribute']}: {entry['from']} → {entry['to']} | {entry['rows']} | "
                             f"{entry['before_decoder_median']:.3f} | " + " | ".join(cells) + " |")
        lines += ["", "**Preservation** (share whose other binary attributes are unchanged / share still read as "
                  "the same digit by the judge CNN).", "", head.replace("| before ", ""), rule[:-4]]
        for key, entry in first.items():
            if entry["rows"]:
                cells = [f"{result['methods'][m]['per_direction'][key]['others_kept']:.3f} / "
                         f"{result['methods'][m]['per_direction'][key]['class_kept']:.3f}" for m in methods]
                lines.append(f"| {entry['attribute']}: {entry['from']} → {entry['to']} | {entry['rows']} | "
                             + " | ".join(cells) + " |")
        lines += ["", "**Identity** (RMS pixel distance edit − reconstruction, [0, 1] scale / latent distance "
                  "‖z' − z‖ over the mean distance between two test latents).", "", head.replace("| before ", ""),
                  rule[:-4]]
        for key, entry in first.items():
            if entry["rows"]:
                cells = [f"{result['methods'][m]['per_direction'][key]['pixel_rmse']:.3f} / "
                         f"{result['methods'][m]['per_direction'][key]['latent_distance_relative']:.3f}"
                         for m in methods]
                lines.append(f"| {entry['attribute']}: {entry['from']} → {entry['to']} | {entry['rows']} | "
                             + " | ".join(cells) + " |")
        lines += ["", "| mean over rows | success | success (decoder medians) | others kept | digit kept | pixel RMSE "
                  "| latent dist. (rel.) | non-finite |", "|---|---|---|---|---|---|---|---|"]
        for m in methods:
            mean = result["methods"][m]["mean"]
            lines.append(f"| {METHOD_NAMES[m]} | {mean['success']:.3f} | {mean['success_decoder_median']:.3f} | "
                         f"{mean['others_kept']:.3f} | "
                         f"{mean['class_kept']:.3f} | {mean['pixel_rmse']:.3f} | "
                         f"{mean['latent_distance_relative']:.3f} | {result['methods'][m]['non_finite']} |")
        if result["plugins"]:
            attributes = data["attributes"]
            lines += ["", "**Conditional generation** from all multi-hot contexts (share of samples whose measured "
                      "attribute matches the request; all attributes; digit read by the judge) and **attribute "
                      "prediction** (test accuracy: Bayes' rule given the latent and the rest of the context, and a "
                      "logistic regression on the latent alone).", "",
                      "| | " + " | ".join(f"gen. {a}" for a in attributes) + " | gen. all | gen. digit | test NLL | "
                      + " | ".join(f"pred. {a}" for a in attributes) + " |",
                      "|---|" + "---|" * (2 * len(attributes) + 3)]
            for plugin, p in result["plugins"].items():
                if "generation" not in p:
                    continue
                g, bayes = p["generation"], p["bayes"]["accuracy"]
                lines.append(f"| {METHOD_NAMES[plugin]} | "
                             + " | ".join(f"{g['per_attribute'][a]['agreement']:.3f}" for a in attributes)
                             + f" | {g['all_attributes_agree']:.3f} | {g['digit_accuracy']:.3f} | "
                             f"{p['test_nll']:.2f} | " + " | ".join(f"{bayes[a]:.3f}" for a in attributes) + " |")
            probe = result["probe"]["accuracy"]
            cells = ["logistic regression"] + [""] * (len(attributes) + 3) + [f"{probe[a]:.3f}" for a in attributes]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"![edits]({result.get('figure', f'edits_{base}.png')})", ""]
    timings = record.get("timings", {})
    if "total" in timings:
        lines += [f"Wall time summed over the stages: {timings['total']:.0f} s.", ""]
    path = Path(out) / "report.md"
    path.write_text("\n".join(lines))
    return path


# -- helpers ----------------------------------------------------------------------------------
def _chunked(fn: Any, *arrays: np.ndarray, batch_size: int) -> np.ndarray:
    """``fpn_jax.runtime.chunks.map_in_chunks`` as a host array: equal-sized (padded) chunks, one compiled shape."""
    return np.asarray(map_in_chunks(fn, *arrays, batch_size=batch_size))


def _mean(values: Any) -> float | None:
    """The mean as a float, None for no values."""
    values = np.asarray(values, np.float64)
    return float(np.mean(values)) if values.size else None


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low
