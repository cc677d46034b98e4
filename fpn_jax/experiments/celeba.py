"""The paper's CelebA experiment (section 5.1.3): one ``Config``, one ``train_and_evaluate``.

MSP's VAE (``fpn_jax.autoencoders.MSP``, 2048-d latent at 256 px) is the frozen base; C-MAF
and C-RealNVP plugins model p(z | y) over its latents, y ∈ {0, 1}^40 the multi-hot
attributes::

    faces (N, 256, 256, 3) ──E──▶ z (N, 2048) ──fit──▶ p(z | y)
        ├─▶ u ~ T·N(0, I), z = T(u | y), x = D(z)                  sample grids at temperatures T
        ├─▶ u = T⁻¹(E(x) | y), x' = D(T(u | y ⊕ e_a))              FPN's edit, beside MSP's z + d M
        ├─▶ log p(z | y) − log p(z | y ⊕ e_a)                      Bayes-rule attribute prediction
        └─▶ −log p(z | y) on the test split                        NLL

The paper shows CelebA results only as pictures; this run also measures them, with judges
that never see the plugin (``fpn_jax.evaluation.attributes``): an attribute CNN trained here
on the training images says, for every edit, whether the flipped attribute moved to the
intended value and whether the other 39 stayed as they were (for FPN's edit and for MSP's
own linear edit of the same latent), and which attributes conditional samples show; a
logistic regression on the same latents is the baseline of the plugin's Bayes-rule
attribute prediction.

``train_and_evaluate(config, workdir)`` runs it: the data (CelebA in torchvision's layout or
tfds' ``celeb_a``, streamed), the base model (a converted ``MSP_CelebA.tch``, or an MSP
trained here), every split encoded once to latent shards (``fpn_jax.latents.encode_to_shards``,
z ~ q(z | x) as the original, or the mean), the classifier and the probe, both plugins, then
figures, ``metrics.json`` and ``report.md``. Every trained piece and the latents are kept in
the run folder (the base model and the classifier in ``model_cache``), so a second run, or
one resumed after a crash, trains and encodes only what is missing.

``Config()`` holds the paper's settings for the real data; ``synthetic(config)`` runs
everything offline on the generated stand-in (``fpn_jax.data.write_synthetic_celeba``) with
a small MSP trained here, and ``tiny(config)`` is the seconds-long version the tests run.
The validation split drives every early stopping; the test split is evaluated once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from fpn_jax import autoencoders, inference, latents
from fpn_jax.autoencoders.msp import MSP, default_msp_config, fit_msp
from fpn_jax.data import CELEBA_ATTRIBUTES, CelebA, DatasetUnavailableError, load_celeba_arrays, write_synthetic_celeba
from fpn_jax.errors import CheckpointError, UsageError
from fpn_jax.evaluation import attributes as judge
from fpn_jax.evaluation import plots
from fpn_jax.evaluation.report_celeba import write_celeba_report
from fpn_jax.experiments import stages
from fpn_jax.flows import ConditionalMAF, ConditionalRealNVP
from fpn_jax.flows.flow import ConditionalFlow
from fpn_jax.runtime.chunks import map_in_chunks
from fpn_jax.train import TrainConfig, fit

__all__ = [
    "ATTRIBUTES", "COMBINATIONS", "LATENTS", "PLUGINS", "TEMPERATURES", "Config", "base_model", "contexts",
    "data_root", "encode", "make_plugin", "open_celeba", "plugin_train_config", "synthetic", "tiny",
    "train_and_evaluate",
]

PLUGINS = ("maf", "rnvp")
LATENTS = ("sample", "mean")
ATTRIBUTES = CELEBA_ATTRIBUTES
COMBINATIONS: tuple[tuple[str, ...], ...] = (
    ("Male", "No_Beard", "Young"),
    ("Male", "No_Beard", "Wearing_Hat", "Young"),
    ("Male", "Mouth_Slightly_Open", "No_Beard", "Young"),
)
"""The paper's attribute combinations (FPN's ``run_flow_visualization_celeba.py``: 20, 24, 39; + 35; + 21)."""
TEMPERATURES: tuple[float, ...] = tuple(round(float(t), 2) for t in np.linspace(0.7, 0.8, 11))
"""The sampling temperatures of the original script, ``np.linspace(0.7, 0.8, 11)``."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on; the defaults are the paper's settings on the real data.

    Attributes:
      data_dir: CelebA in torchvision's layout (``<data_dir>/celeba/img_align_celeba`` ...) or,
        with ``data_source="tfds"``, tensorflow-datasets' data folder; with ``synthetic``:
        where the stand-in is written (default ``out/synthetic_celeba``).
      data_source: ``"auto"`` (the folder if it holds CelebA files, tfds otherwise),
        ``"folder"`` or ``"tfds"`` (``fpn_jax.data.CelebA``).
      checkpoint: a converted MSP checkpoint folder (``python -m fpn_jax.convert msp
        MSP_CelebA.tch DIR``); its image size is used for the data.
      train_base: train an MSP here (kept in ``model_cache / "msp"``); it is trained on
        images held in memory, so keep ``image_size`` small or limit ``base_train_images``.
      synthetic: run on the generated stand-in (``write_synthetic_celeba``).
      synthetic_images: images in the stand-in (80 / 10 / 10 % train / validation / test).
      out: the run folder (``train_and_evaluate``'s default ``workdir``).
      cache_dir: where the MSP and the classifier trained here are kept (None: ``out/cache``).
      seed: one seed for training, encoding and sampling.
      plugins: which plugins to fit.
      latents: ``"sample"``: z ~ q(z | x) as FPN's ``run_latent_space_celeba.py``; ``"mean"``: μ(x).
      workers: image-decoding threads (None: ``CelebA``'s default).
      image_size, base_nf: the MSP trained with ``train_base`` (MSP_CelebA.tch: 256, 64).
      base_epochs, base_batch_size, base_learning_rate: its training (the original: 80, 70,
        Adam 1e-4, gradient norm clipped as ``default_msp_config``); no early stopping.
      base_train_images, base_validation_images: images it trains / validates on (None: all).
      encode_batch_size, shard_size: images per encoder call; rows per latent shard.
      maf_hidden, maf_layers, maf_blocks, maf_embedding, maf_batch_norm, maf_batch_size,
        maf_epochs, maf_patience: C-MAF (the paper: 1024, 10, 10, 512, batch norm within and
        between the layers, batch 512, 5000 epochs, patience 25).
      rnvp_hidden, rnvp_layers, rnvp_blocks, rnvp_batch_size, rnvp_epochs, rnvp_patience:
        C-RealNVP (1000, 5, 2, 1024, 2000, 50).
      plugin_learning_rate: Adam's step size for both (1e-3).
      temperatures: the sampling temperatures T: u = T ε, ε ~ N(0, I).
      samples_per_temperature: samples per context and temperature (the original: 4).
      combinations: attribute combinations sampled besides the 40 single attributes.
      context_figures: per-context sample figures written (the combinations first; None: all).
      figure_split, figure_rows: the faces edited in the figures (the original: validation
        images 3..9).
      figure_image_size: side of the faces in the figures (larger images are shrunk).
      edit_images: test faces whose 40 edits each are scored by the classifier.
      msp_edit_strength: MSP's edit sets the attribute score to ±strength (its pictures: 2).
      classifier_image_size, classifier_channels, classifier_hidden, classifier_epochs,
        classifier_batch_size: the attribute CNN (``fpn_jax.evaluation.attributes``).
      classifier_train_images, classifier_validation_images, classifier_test_images: the
        images it is trained, validated and tested on (None: all).
      probe_epochs, probe_patience, probe_batch_size, probe_l2: the logistic regression on latents.
      bayes_rows: test latents scored by Bayes' rule (None: all).
      eval_batch_size: latents per compiled call in evaluation.
    """

    data_dir: str | None = None
    data_source: str = "auto"
    checkpoint: str | None = None
    train_base: bool = False
    synthetic: bool = False
    synthetic_images: int = 3000
    out: str = "runs/celeba"
    cache_dir: str | None = None
    seed: int = 0
    plugins: tuple[str, ...] = PLUGINS
    latents: str = "sample"
    workers: int | None = None
    image_size: int = 256
    base_nf: int = 64
    base_epochs: int = 80
    base_batch_size: int = 70
    base_learning_rate: float = 1e-4
    base_train_images: int | None = None
    base_validation_images: int | None = 2000
    encode_batch_size: int = 256
    shard_size: int = 1024
    maf_hidden: int = 1024
    maf_layers: int = 10
    maf_blocks: int = 10
    maf_embedding: int | None = 512
    maf_batch_norm: bool = True
    maf_batch_size: int = 512
    maf_epochs: int = 5000
    maf_patience: int | None = 25
    rnvp_hidden: int = 1000
    rnvp_layers: int = 5
    rnvp_blocks: int = 2
    rnvp_batch_size: int = 1024
    rnvp_epochs: int = 2000
    rnvp_patience: int | None = 50
    plugin_learning_rate: float = 1e-3
    temperatures: tuple[float, ...] = TEMPERATURES
    samples_per_temperature: int = 4
    combinations: tuple[tuple[str, ...], ...] = COMBINATIONS
    context_figures: int | None = None
    figure_split: str = "validation"
    figure_rows: tuple[int, ...] = (3, 4, 5, 6, 7, 8, 9)
    figure_image_size: int = 128
    edit_images: int = 128
    msp_edit_strength: float = 2.0
    classifier_image_size: int = 64
    classifier_channels: tuple[int, ...] = (32, 64, 128, 256)
    classifier_hidden: int = 256
    classifier_epochs: int = 10
    classifier_batch_size: int = 128
    classifier_train_images: int | None = None
    classifier_validation_images: int | None = 5000
    classifier_test_images: int | None = 5000
    probe_epochs: int = 200
    probe_patience: int | None = 10
    probe_batch_size: int = 1024
    probe_l2: float = 1e-4
    bayes_rows: int | None = None
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.plugins, tuple) or not self.plugins or set(self.plugins) - set(PLUGINS):
            raise ValueError(f"Config: `plugins` must be a non-empty tuple of names from {PLUGINS}; "
                             f"got {self.plugins!r}.")
        if self.latents not in LATENTS:
            raise ValueError(f"Config: `latents` must be one of {LATENTS}; got {self.latents!r}.")
        if self.data_source not in ("auto", "folder", "tfds"):
            raise ValueError(f"Config: `data_source` must be 'auto', 'folder' or 'tfds'; got {self.data_source!r}.")
        if self.figure_split not in stages.SPLITS:
            raise ValueError(f"Config: `figure_split` must be one of {stages.SPLITS}; got {self.figure_split!r}.")
        for name in ("synthetic_images", "image_size", "base_nf", "base_epochs", "base_batch_size",
                     "encode_batch_size", "shard_size", "maf_hidden", "maf_layers", "maf_blocks", "maf_batch_size",
                     "maf_epochs", "rnvp_hidden", "rnvp_layers", "rnvp_blocks", "rnvp_batch_size", "rnvp_epochs",
                     "samples_per_temperature", "figure_image_size", "edit_images", "classifier_image_size",
                     "classifier_hidden", "classifier_epochs", "classifier_batch_size", "probe_epochs",
                     "probe_batch_size", "eval_batch_size"):
            if not _is_int(getattr(self, name), 1):
                raise ValueError(f"Config: `{name}` must be an integer >= 1; got {getattr(self, name)!r}.")
        for name in ("workers", "base_train_images", "base_validation_images", "maf_embedding", "maf_patience",
                     "rnvp_patience", "context_figures", "classifier_train_images", "classifier_validation_images",
                     "classifier_test_images", "probe_patience", "bayes_rows"):
            value = getattr(self, name)
            if value is not None and not _is_int(value, 1):
                raise ValueError(f"Config: `{name}` must be None or an integer >= 1; got {value!r}.")
        for name in ("base_learning_rate", "plugin_learning_rate", "msp_edit_strength"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"Config: `{name}` must be a positive number; got {value!r}.")
        if isinstance(self.probe_l2, bool) or not isinstance(self.probe_l2, (int, float)) or not 0 <= self.probe_l2:
            raise ValueError(f"Config: `probe_l2` must be a number >= 0; got {self.probe_l2!r}.")
        temperatures = self.temperatures
        if not isinstance(temperatures, tuple) or not temperatures or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < float("inf") for t in temperatures
        ):
            raise ValueError(f"Config: `temperatures` must be a non-empty tuple of positive numbers; "
                             f"got {temperatures!r}.")
        if not isinstance(self.combinations, tuple) or not all(
            isinstance(c, tuple) and c and set(c) <= set(ATTRIBUTES) and len(set(c)) == len(c)
            for c in self.combinations
        ):
            raise ValueError(f"Config: `combinations` must be a tuple of tuples of distinct CelebA attribute names "
                             f"(e.g. {COMBINATIONS[0]}); got {self.combinations!r}.")
        if not isinstance(self.figure_rows, tuple) or not self.figure_rows or not all(
            _is_int(r, 0) for r in self.figure_rows
        ):
            raise ValueError(f"Config: `figure_rows` must be a non-empty tuple of row indices >= 0; "
                             f"got {self.figure_rows!r}.")
        if not isinstance(self.classifier_channels, tuple) or not self.classifier_channels or not all(
            _is_int(c, 1) for c in self.classifier_channels
        ):
            raise ValueError(f"Config: `classifier_channels` must be a non-empty tuple of integers >= 1; "
                             f"got {self.classifier_channels!r}.")
        if self.checkpoint is not None and (self.train_base or self.synthetic):
            raise ValueError("Config: give either `checkpoint` (a converted MSP) or `train_base` / `synthetic` (an MSP "
                             "trained here), not both.")

    @property
    def model_cache(self) -> Path:
        """The folder of the MSP and the classifier trained here (``cache_dir`` or ``out/cache``)."""
        return Path(self.cache_dir) if self.cache_dir is not None else Path(self.out) / "cache"


def synthetic(config: Config | None = None) -> Config:
    """The offline overlay: the generated stand-in, a small MSP trained here, small plugins.

    3,000 drawn faces (2,400 / 300 / 300) at 32x32, an MSP of width nf = 16 (latent 64)
    trained for 20 epochs with Adam 1e-3; C-MAF 4 x 2 blocks of width 256 (embedding 64,
    batch norm) and C-RealNVP 4 x 2 of width 256, batch 128, patience 10, at most 300
    epochs; a 32-px attribute CNN (3 blocks) for 15 epochs. All 43 contexts and 11
    temperatures; 64 faces edited 40 times each. The run folder is ``runs/celeba-synthetic``.
    Estimated 15-20 minutes on a 2-core CPU from stage timings (the MSP about 12 s per
    epoch, the classifier about 5 s per epoch); not timed end to end.
    """
    return dataclasses.replace(
        Config() if config is None else config,
        synthetic=True, train_base=True, out="runs/celeba-synthetic", synthetic_images=3000, image_size=32,
        base_nf=16, base_epochs=20, base_batch_size=64, base_learning_rate=1e-3, base_validation_images=None,
        maf_hidden=256, maf_layers=4, maf_blocks=2, maf_embedding=64, maf_batch_size=128, maf_epochs=300,
        maf_patience=10, rnvp_hidden=256, rnvp_layers=4, rnvp_blocks=2, rnvp_batch_size=128, rnvp_epochs=300,
        rnvp_patience=10, figure_image_size=32, edit_images=64, classifier_image_size=32,
        classifier_channels=(32, 64, 128), classifier_hidden=128, classifier_epochs=15, classifier_batch_size=64,
        classifier_validation_images=None, classifier_test_images=None, probe_batch_size=256,
    )


def tiny(config: Config | None = None) -> Config:
    """The seconds-long check of the whole pipeline the tests run (``synthetic`` made tiny).

    160 faces at 16x16, an MSP of width 8 (latent 16) for 1 epoch, plugins of width 16
    (2 layers x 1 block; the C-MAF with its embedding and batch norm) for 2 epochs, a
    2-block classifier for 1 epoch, 2 temperatures x 2 samples, 3 context figures, 3
    faces in the figures and 6 scored edits per attribute.
    """
    return dataclasses.replace(
        synthetic(config), out="runs/celeba-tiny", synthetic_images=160, image_size=16, base_nf=8, base_epochs=1,
        base_batch_size=32, encode_batch_size=64, shard_size=48, maf_hidden=16, maf_layers=2, maf_blocks=1,
        maf_embedding=8, maf_batch_size=32, maf_epochs=2, rnvp_hidden=16, rnvp_layers=2, rnvp_blocks=1,
        rnvp_batch_size=32, rnvp_epochs=2, temperatures=(0.7, 0.8), samples_per_temperature=2, context_figures=3,
        figure_rows=(3, 4, 5), figure_image_size=16, edit_images=6, classifier_image_size=16,
        classifier_channels=(4, 8), classifier_hidden=16, classifier_epochs=1, classifier_batch_size=32,
        probe_epochs=2, probe_batch_size=64,
    )


# -- stages ---------------------------------------------------------------------------------
def data_root(config: Config) -> Path | None:
    """Where the data are: ``data_dir``, or the stand-in (written once, always from seed 0) with ``synthetic``.

    Raises:
      UsageError: no ``data_dir`` without ``synthetic`` or tfds.
    """
    if config.synthetic:
        root = Path(config.data_dir) if config.data_dir is not None else Path(config.out) / "synthetic_celeba"
        try:
            write_synthetic_celeba(root, num_images=config.synthetic_images, seed=0)  # the data, whatever `seed`
        except FileExistsError as error:
            raise UsageError(str(error)) from error
        return root
    if config.data_dir is None and config.data_source != "tfds":
        raise UsageError(
            "celeba: no data. Pass --data-dir with the folder holding celeba/ (img_align_celeba/, "
            "list_attr_celeba.txt, list_eval_partition.txt; see the README's CelebA section), or --synthetic to run "
            "on the generated stand-in."
        )
    return None if config.data_dir is None else Path(config.data_dir)


def open_celeba(config: Config, root: Path | None, image_size: int) -> CelebA:
    """The streamed data set at the base model's ``image_size`` (named errors become ``UsageError``)."""
    source = "folder" if config.synthetic else config.data_source
    try:
        if source == "tfds":
            return CelebA(None, image_size=image_size, source="tfds", data_dir=root, workers=config.workers)
        return CelebA(root, image_size=image_size, source=source, workers=config.workers)
    except (ValueError, FileNotFoundError, DatasetUnavailableError) as error:  # the user's data, not a bug
        raise UsageError(str(error)) from error


def base_model(config: Config, root: Path | None) -> tuple[MSP, dict[str, Any]]:
    """The frozen MSP: the converted ``checkpoint``, or one trained here (resumably) with ``train_base``.

    Training reads the first ``base_train_images`` / ``base_validation_images`` images into
    memory (``load_celeba_arrays``) and fits MSP's objective (``fit_msp``) with labels 2y − 1.

    Raises:
      UsageError: neither a checkpoint nor ``train_base``; a checkpoint that is not an MSP
        for 40 attributes; a training set too large for memory.
    """
    if config.checkpoint is not None:
        try:
            model = autoencoders.load(config.checkpoint)
        except (CheckpointError, FileNotFoundError) as error:
            raise UsageError(f"celeba: --checkpoint {config.checkpoint}: {error}") from error
        if not isinstance(model, MSP) or model.num_attributes != len(ATTRIBUTES):
            raise UsageError(f"celeba: `checkpoint` {config.checkpoint} holds a {type(model).__name__}"
                             f"{'' if not isinstance(model, MSP) else f' for {model.num_attributes} attributes'}; "
                             "expected MSP for CelebA's 40 (python -m fpn_jax.convert msp MSP_CelebA.tch DIR).")
        return model, {"cached": True, "source": str(config.checkpoint), "parameters": _parameters(model),
                       "image_size": model.image_size, "latent_features": model.latent_features}
    if not config.train_base:
        raise UsageError("celeba: no base model. Pass --checkpoint with a converted MSP (python -m fpn_jax.convert "
                         "msp MSP_CelebA.tch DIR), or --train-base to train one here.")
    limits = {"train": config.base_train_images, "validation": config.base_validation_images, "test": 0}
    settings = default_msp_config(learning_rate=config.base_learning_rate, batch_size=config.base_batch_size,
                                  max_epochs=config.base_epochs)
    fingerprint = {"data": _data_record(config, root), "image_size": config.image_size, "nf": config.base_nf,
                   "limits": limits, "train": dataclasses.asdict(settings), "seed": config.seed}

    def train(folder: Path) -> tuple[MSP, Any]:
        celeba = open_celeba(config, root, config.image_size)
        rows = {s: len(celeba.split(s)) if limits[s] is None else min(limits[s], len(celeba.split(s)))
                for s in ("train", "validation")}
        gigabytes = sum(rows.values()) * config.image_size**2 * 3 * 4 / 1e9
        if gigabytes > 32:
            raise UsageError(f"celeba: training MSP here holds its images in memory: {rows['train']} + "
                             f"{rows['validation']} images at {config.image_size} px are {gigabytes:.0f} GB. Pass a "
                             "smaller --image-size or --base-train-images, or a converted checkpoint.")
        try:
            data = load_celeba_arrays(root, image_size=config.image_size, limits=limits,
                                      source="folder" if config.synthetic else config.data_source,
                                      data_dir=root if config.data_source == "tfds" else None, workers=config.workers)
        except (ValueError, FileNotFoundError, DatasetUnavailableError) as error:
            raise UsageError(str(error)) from error
        model = MSP(config.image_size, config.base_nf, len(ATTRIBUTES), rngs=nnx.Rngs(config.seed))
        history = fit_msp(model, data.train.inputs, 2 * data.train.context - 1, key=jax.random.key(config.seed),
                          config=settings, validation=(data.validation.inputs, 2 * data.validation.context - 1),
                          checkpoint_dir=folder)
        return model, history

    model, history, cached = stages.cached_fit(config.model_cache / "msp", train, fingerprint=fingerprint, expect=MSP)
    return autoencoders.freeze(model), {
        "cached": cached, **stages.history_record(history), "val_loss": history.val_loss[history.best_epoch],
        "parameters": _parameters(model), "image_size": model.image_size, "latent_features": model.latent_features,
        "learning_rate": config.base_learning_rate,
    }


def encode(model: MSP, celeba: CelebA, config: Config) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                                                                    dict[str, Any]]:
    """Every split encoded once to latent shards in ``out/latents/<latents>/<split>``, then read back.

    z ~ q(z | x) with the key ``fold_in(key(seed + 2), split index)`` (``latents="sample"``),
    or μ(x) (``"mean"``). A finished split is only read; an interrupted one is continued.

    Returns:
      ``(z, attributes, manifests)`` by split: (N, L) float32 latents, (N, 40) float32 {0, 1}
      rows, and each folder's manifest (what the latents were made from).

    Raises:
      UsageError: a shard folder written by another model, key or data (delete it to re-encode).
    """
    z, attributes, manifests = {}, {}, {}
    for index, split in enumerate(stages.SPLITS):
        folder = Path(config.out) / "latents" / config.latents / split
        key = jax.random.fold_in(jax.random.key(config.seed + 2), index) if config.latents == "sample" else None
        try:
            latents.encode_to_shards(model, celeba.split(split), folder, key=key, shard_size=config.shard_size,
                                     batch_size=config.encode_batch_size, progress=f"encoding {split}")
        except ValueError as error:
            raise UsageError(str(error)) from error
        z[split], attributes[split] = latents.read_shards(folder)
        manifests[split] = {k: v for k, v in json.loads((folder / latents.SHARDS_MANIFEST).read_text()).items()
                            if k in ("model_fingerprint", "key", "num_rows", "shard_size")}
    return z, attributes, manifests


def contexts(config: Config) -> tuple[list[str], np.ndarray]:
    """The sampled contexts: the combinations, then the 40 one-hot attributes, with their names.

    Returns:
      ``(names, rows)``: names such as ``"Male+No_Beard+Young"`` and ``"Smiling"``, and the
      (K, 40) float32 multi-hot rows.
    """
    names, rows = [], []
    for combination in config.combinations:
        names.append("+".join(combination))
        rows.append(np.isin(ATTRIBUTES, combination).astype(np.float32))
    for k, name in enumerate(ATTRIBUTES):
        names.append(name)
        rows.append(np.eye(len(ATTRIBUTES), dtype=np.float32)[k])
    return names, np.stack(rows)


def make_plugin(plugin: str, config: Config, features: int) -> ConditionalMAF | ConditionalRealNVP:
    """A fresh C-MAF (``"maf"``) or C-RealNVP (``"rnvp"``) over ``features``-d latents, 40 attributes."""
    if plugin == "maf":
        return ConditionalMAF(features, len(ATTRIBUTES), hidden_features=config.maf_hidden,
                              num_layers=config.maf_layers, num_blocks=config.maf_blocks,
                              batch_norm_within=config.maf_batch_norm, batch_norm_between=config.maf_batch_norm,
                              embedding_features=config.maf_embedding, rngs=nnx.Rngs(config.seed))
    return ConditionalRealNVP(features, len(ATTRIBUTES), hidden_features=config.rnvp_hidden,
                              num_layers=config.rnvp_layers, num_blocks=config.rnvp_blocks,
                              rngs=nnx.Rngs(config.seed))


def plugin_train_config(plugin: str, config: Config) -> TrainConfig:
    """Adam ``plugin_learning_rate``, the plugin's epochs, patience and batch size."""
    if plugin == "maf":
        return TrainConfig(learning_rate=config.plugin_learning_rate, max_epochs=config.maf_epochs,
                           patience=config.maf_patience, batch_size=config.maf_batch_size,
                           eval_batch_size=config.eval_batch_size * 8)
    return TrainConfig(learning_rate=config.plugin_learning_rate, max_epochs=config.rnvp_epochs,
                       patience=config.rnvp_patience, batch_size=config.rnvp_batch_size,
                       eval_batch_size=config.eval_batch_size * 8)


def attribute_classifier(config: Config, celeba: CelebA, root: Path | None) -> tuple[judge.AttributeCNN, dict]:
    """The attribute CNN, trained once (cached in ``model_cache``) on the training images.

    Images are streamed at the base model's size, shrunk to ``classifier_image_size`` with
    ``resize_images`` (as decoded images are later) and kept as uint8.
    """
    size = config.classifier_image_size
    limits = {"train": config.classifier_train_images, "validation": config.classifier_validation_images}
    settings = judge.default_classifier_config(max_epochs=config.classifier_epochs,
                                               batch_size=config.classifier_batch_size)
    fingerprint = {"data": _data_record(config, root), "read_size": celeba.image_size, "size": size,
                   "limits": limits, "channels": config.classifier_channels, "hidden": config.classifier_hidden,
                   "train": dataclasses.asdict(settings), "seed": config.seed}

    def train(folder: Path) -> tuple[judge.AttributeCNN, Any]:
        splits = {s: _resized_split(celeba, s, limits[s], size, config) for s in ("train", "validation")}
        return judge.fit_attribute_classifier(
            splits["train"][0], splits["train"][1], key=jax.random.key(config.seed + 1), config=settings,
            validation=splits["validation"], channels=config.classifier_channels,
            hidden_features=config.classifier_hidden, checkpoint_dir=folder,
        )

    model, history, cached = stages.cached_fit(config.model_cache / "attribute_cnn", train, fingerprint=fingerprint,
                                               expect=judge.AttributeCNN)
    return model, {"cached": cached, **stages.history_record(history),
                   "val_error": history.val_loss[history.best_epoch], "image_size": size}


def _resized_split(celeba: CelebA, split: str, limit: int | None, size: int, config: Config) -> tuple[np.ndarray,
                                                                                                       np.ndarray]:
    """The first ``limit`` images of a split at ``size`` px as uint8, and their attribute rows."""
    data = celeba.split(split)
    n = len(data) if limit is None else min(limit, len(data))
    images = np.empty((n, size, size, 3), np.uint8)
    for x, _, rows in tqdm(data.batches(config.encode_batch_size, stop=n), desc=f"reading {split} for the "
                           "classifier", total=-(-n // config.encode_batch_size), unit="batch"):
        images[rows] = judge.to_uint8(judge.resize_images(x, size))
    return images, data.attributes[:n].copy()


def linear_probe(config: Config, z: dict[str, np.ndarray], y: dict[str, np.ndarray],
                 manifests: dict[str, Any]) -> tuple[judge.LinearProbe, dict[str, Any]]:
    """Logistic regression on the latents (cached in ``out/probe/<latents>``)."""
    settings = judge.default_probe_config(max_epochs=config.probe_epochs, patience=config.probe_patience,
                                          batch_size=config.probe_batch_size)
    fingerprint = {"latents": manifests, "train": dataclasses.asdict(settings), "l2": config.probe_l2}

    def train(folder: Path) -> tuple[judge.LinearProbe, Any]:
        return judge.fit_linear_probe(z["train"], y["train"], key=jax.random.key(config.seed + 3), config=settings,
                                      validation=(z["validation"], y["validation"]), l2=config.probe_l2,
                                      checkpoint_dir=folder)

    probe, history, cached = stages.cached_fit(Path(config.out) / "probe" / config.latents, train,
                                               fingerprint=fingerprint, expect=judge.LinearProbe)
    return probe, {"cached": cached, **stages.history_record(history)}


# -- the run --------------------------------------------------------------------------------
def train_and_evaluate(config: Config, workdir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Runs the whole experiment; writes (and returns) the metrics, the report and the figures.

    Args:
      config: the settings (``Config(data_dir=..., checkpoint=...)``, ``synthetic()``, ``tiny()``).
      workdir: the run folder (default ``config.out``; it becomes the recorded ``out``).

    Returns:
      What ``workdir/metrics.json`` holds: config, environment, data sizes, base model,
      classifier, probe, MSP's edits, per plugin the NLL, Bayes-rule attribute accuracies,
      generation and edit scores, and timings.

    Raises:
      UsageError: missing or malformed data, no or a wrong base model, shard folders of another run.
    """
    config, out = stages.run_folder(config, workdir)
    timer = stages.Timer()
    record: dict[str, Any] = {
        "config": stages.config_record(config), "environment": stages.environment(),
        "attributes": list(ATTRIBUTES), "results": {}, "timings": timer.seconds,
    }
    with timer("data"):
        root = data_root(config)
    with timer("base_model"):
        model, record["base_model"] = base_model(config, root)
    with timer("data"):
        celeba = open_celeba(config, root, model.image_size)
    stages.write_metrics(out, record)
    with timer("encode"):
        z, y, manifests = encode(model, celeba, config)
    record["data"] = {split: len(z[split]) for split in stages.SPLITS} | {
        "image_size": model.image_size, "synthetic": config.synthetic, "source": celeba.source,
        "root": None if root is None else str(root), "latents": config.latents,
        "train_rates": [round(float(r), 4) for r in y["train"].mean(0)],
    }
    majority = np.where(y["train"].mean(0) >= 0.5, 1.0, 0.0)
    record["majority"] = _summary(np.mean(y["test"] == majority, axis=0))
    with timer("classifier"):
        classifier, record["classifier"] = attribute_classifier(config, celeba, root)
        record["classifier"] |= _classifier_scores(classifier, model, celeba, z["test"], config)
    with timer("probe"):
        probe, record["probe"] = linear_probe(config, z, y, manifests)
        record["probe"] |= _summary(judge.attribute_accuracy(judge.probe_probabilities(probe, z["test"]), y["test"]))
    stages.write_metrics(out, record)

    edit_z, edit_y = z["test"][: config.edit_images], y["test"][: config.edit_images]
    before = _judge(classifier, model, edit_z, config)
    figure_z, figure_y, figure_x = _figure_faces(celeba, z, y, config)
    with timer("msp/edits"):
        record["msp_edits"] = _edit_scores(_msp_edits(model, edit_z, edit_y, config), classifier, model, before,
                                           edit_y, config, "scoring MSP's edits")
        _manipulation_figure(model, figure_x, figure_z, _msp_edits(model, figure_z, figure_y, config), config,
                             out / "manipulation_msp.png", "MSP edits")
    stages.write_metrics(out, record)

    curves: dict[str, Any] = {}
    for plugin in config.plugins:
        name = {"maf": "C-MAF", "rnvp": "C-RealNVP"}[plugin]
        settings = plugin_train_config(plugin, config)
        fresh = make_plugin(plugin, config, model.latent_features)
        fingerprint = {"flow": fresh.config, "train": dataclasses.asdict(settings), "latents": manifests}

        def train(folder: Path, flow: ConditionalFlow = fresh, settings: TrainConfig = settings) -> tuple[Any, Any]:
            history = fit(flow, z["train"], y["train"], key=jax.random.key(config.seed + 4), config=settings,
                          validation=(z["validation"], y["validation"]), checkpoint_dir=folder)
            return flow, history

        with timer(f"{plugin}/fit"):
            flow, history, cached = stages.cached_fit(out / "plugins" / config.latents / plugin, train,
                                                      fingerprint=fingerprint, expect=ConditionalFlow)
        curves[name] = {"train_nll": history.train_loss, "val_nll": history.val_loss}
        result: dict[str, Any] = {"cached": cached, **stages.history_record(history),
                                  "parameters": _parameters(flow)}
        with timer(f"{plugin}/nll"):
            log_p = _chunked(flow.log_prob, z["test"], y["test"], batch_size=config.eval_batch_size * 8)
            result["test_nll"] = float(-np.mean(log_p))
            result["test_nll_per_dim"] = result["test_nll"] / model.latent_features
        with timer(f"{plugin}/bayes"):
            result["bayes"] = _bayes(flow, z["test"], y["test"], y["train"], config)
        record["results"][plugin] = result
        stages.write_metrics(out, record)
        with timer(f"{plugin}/samples"):
            result["generation"] = _sample_grids(flow, model, classifier, config, out, plugin, name)
        with timer(f"{plugin}/edits"):
            result["edits"] = _edit_scores(_fpn_edits(flow, edit_z, edit_y, config), classifier, model, before,
                                           edit_y, config, f"scoring {name}'s edits")
            _manipulation_figure(model, figure_x, figure_z, _fpn_edits(flow, figure_z, figure_y, config), config,
                                 out / f"manipulation_{plugin}.png", f"FPN {name} edits")
        stages.write_metrics(out, record)  # nothing lost if a later stage fails
    with timer("figures"):
        plots.training_curves(curves, out / "training_curves.png", title="Plugin training (NLL per latent)")
        _figures(record, out)
    record["timings"]["total"] = timer.total()
    stages.write_metrics(out, record)
    write_celeba_report(out, record)
    return record


# -- evaluation pieces ----------------------------------------------------------------------
def _judge(classifier: judge.AttributeCNN, model: MSP, z: np.ndarray, config: Config) -> np.ndarray:
    """The classifier's probabilities (N, 40) on the decoded latents D(z), shrunk to its size."""
    if len(z) == 0:
        return np.zeros((0, len(ATTRIBUTES)), np.float32)
    images = latents.decode(model, z, batch_size=config.encode_batch_size)
    return judge.predict_probabilities(classifier, judge.resize_images(images, config.classifier_image_size))


def _classifier_scores(classifier: judge.AttributeCNN, model: MSP, celeba: CelebA, z_test: np.ndarray,
                       config: Config) -> dict[str, Any]:
    """The classifier on test images and on their reconstructions D(z); the reconstructions' MSE."""
    split = celeba.split("test")
    n = len(split) if config.classifier_test_images is None else min(config.classifier_test_images, len(split))
    real, rebuilt, squared = [], [], 0.0
    for x, _, rows in tqdm(split.batches(config.encode_batch_size, stop=n), desc="classifier on test images",
                           total=-(-n // config.encode_batch_size), unit="batch"):
        decoded = latents.decode(model, z_test[rows], batch_size=config.encode_batch_size)
        squared += float(np.sum((decoded - x) ** 2))
        size = config.classifier_image_size
        real.append(judge.predict_probabilities(classifier, judge.resize_images(x, size)))
        rebuilt.append(judge.predict_probabilities(classifier, judge.resize_images(decoded, size)))
    target = split.attributes[:n]
    return {
        "test_images": int(n),
        "test": _summary(judge.attribute_accuracy(np.concatenate(real), target)),
        "reconstructions": _summary(judge.attribute_accuracy(np.concatenate(rebuilt), target)),
        "reconstruction_mse": squared / max(1, n * model.image_size**2 * 3),
    }


def _summary(per_attribute: np.ndarray) -> dict[str, Any]:
    return {"accuracy_mean": float(np.mean(per_attribute)),
            "accuracy": [round(float(a), 4) for a in per_attribute]}


def _bayes(flow: ConditionalFlow, z: np.ndarray, y: np.ndarray, y_train: np.ndarray, config: Config) -> dict:
    """Per attribute, how often Bayes' rule given the other 39 picks the true value (``attribute_log_ratios``)."""
    rows = len(z) if config.bayes_rows is None else min(config.bayes_rows, len(z))
    ratios = inference.attribute_log_ratios(flow, z[:rows], y[:rows], batch_size=config.eval_batch_size)
    rate = np.clip(y_train.mean(0), 1e-6, 1 - 1e-6)
    prior = np.where(y[:rows] > 0.5, 1.0, -1.0) * np.log(rate / (1 - rate))  # log p(y_a) − log p(1 − y_a)
    finite = np.isfinite(ratios)
    return {"rows": rows, "non_finite": int((~finite).sum()),
            "uniform": _summary(np.mean(np.where(finite, ratios, -1.0) > 0, axis=0)),
            "prior": _summary(np.mean(np.where(finite, ratios + prior, -1.0) > 0, axis=0))}


def _fpn_edits(flow: ConditionalFlow, z: np.ndarray, y: np.ndarray, config: Config) -> np.ndarray:
    """FPN's edits, ``z'_an = T(T⁻¹(z_n | y_n) | y_n ⊕ e_a)`` for every attribute a: (A, N, L).

    All A·N edits go through ``inference.manipulate`` in chunks of ``8 · eval_batch_size``
    rows (C-MAF's noise → data direction is D sequential passes per layer, so few large
    calls beat many small ones). A chunk that overflows float32 is redone with
    ``allow_overflow``: its non-finite rows count as failed edits.
    """
    a, n = len(ATTRIBUTES), len(z)
    zs = np.tile(z, (a, 1))
    ys = np.tile(y, (a, 1))
    flipped = np.abs(ys - np.repeat(np.eye(a, dtype=np.float32), n, axis=0))  # row a·N + n: y_n ⊕ e_a

    def edit(zc: np.ndarray, yc: np.ndarray, new: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(inference.manipulate(flow, zc, yc, new))
        except FloatingPointError:
            return np.asarray(flow.from_noise(flow.to_noise(zc, yc), new, allow_overflow=True))

    return _chunked(edit, zs, ys, flipped, batch_size=config.eval_batch_size * 8).reshape(a, n, -1)


def _msp_edits(model: MSP, z: np.ndarray, y: np.ndarray, config: Config) -> np.ndarray:
    """MSP's edits of the same latents: score a set to ±``msp_edit_strength`` (the flipped value), (A, N, L)."""
    return np.stack([np.asarray(model.edit_latents(z, {a: config.msp_edit_strength * (1.0 - 2.0 * y[:, a])}))
                     for a in range(len(ATTRIBUTES))])


def _edit_scores(edited_all: np.ndarray, classifier: judge.AttributeCNN, model: MSP, before: np.ndarray,
                 y: np.ndarray, config: Config, description: str) -> dict[str, Any]:
    """``judge.edit_effects`` of the edits (A, N, L): row n of block a flips attribute a of face n."""
    per_attribute, non_finite = [], 0
    for a in tqdm(range(len(ATTRIBUTES)), desc=description, unit="attribute"):
        target = 1.0 - y[:, a]
        edited = edited_all[a]
        finite = np.isfinite(edited).all(axis=1)
        non_finite += int((~finite).sum())
        effect = judge.edit_effects(before, before, a, target)  # "before" over all rows
        if finite.any():
            after = _judge(classifier, model, edited[finite], config)
            scored = judge.edit_effects(before[finite], after, a, target[finite])
            share = finite.mean()  # a non-finite edit counts as failed: neither success, moved nor kept
            effect |= {k: scored[k] * share for k in ("success", "moved", "kept")}
        else:
            effect |= {"success": 0.0, "moved": 0.0, "kept": 0.0}
        per_attribute.append(effect)
    keys = ("success", "before", "moved", "kept")
    return {"rows": int(len(y)), "non_finite": non_finite,
            "mean": {k: float(np.mean([p[k] for p in per_attribute])) for k in keys},
            **{k: [round(p[k], 4) for p in per_attribute] for k in keys}}


def _sample_grids(flow: ConditionalFlow, model: MSP, classifier: judge.AttributeCNN, config: Config, out: Path,
                  plugin: str, name: str) -> dict[str, Any]:
    """Samples ``z = T(T_k ε | c)`` for every context c and temperature T_k; figures and the classifier's view.

    The same ε (S per temperature, S = ``samples_per_temperature``) is used for every context,
    so the rows of the overview differ only by their context. For each context the
    classifier scores its decoded samples: ``on`` is the share of (sample, attribute set in
    c) pairs it sees present, ``agreement`` the share of all 40 attributes where it agrees
    with c.
    """
    names, rows = contexts(config)
    temperatures, s = np.asarray(config.temperatures, np.float32), config.samples_per_temperature
    eps = np.asarray(jax.random.normal(jax.random.key(config.seed + 5), (len(temperatures), s,
                                                                       model.latent_features)))
    noise = (temperatures[:, None, None] * eps).reshape(-1, model.latent_features)  # (T S, L), temperature-major
    folder = out / f"samples_{plugin}"
    limit = len(names) if config.context_figures is None else min(config.context_figures, len(names))
    # every context's samples at once, row k·T·S + j: context k, noise j (few large calls: see _fpn_edits)
    every = _chunked(lambda u, c: np.asarray(flow.from_noise(u, c, allow_overflow=True)),
                     np.tile(noise, (len(names), 1)), np.repeat(rows, len(noise), axis=0),
                     batch_size=config.eval_batch_size * 8).reshape(len(names), len(noise), -1)
    overview, per_context, non_finite = [], {}, 0
    for k, (context_name, row) in enumerate(tqdm(list(zip(names, rows, strict=True)), desc=f"{name} samples",
                                                 unit="context")):
        sampled = every[k]
        finite = np.isfinite(sampled).all(axis=1)
        non_finite += int((~finite).sum())
        images = np.full((len(noise), model.image_size, model.image_size, 3), -1.0, np.float32)
        if finite.any():
            images[finite] = latents.decode(model, sampled[finite], batch_size=config.encode_batch_size)
            probabilities = judge.predict_probabilities(
                classifier, judge.resize_images(images[finite], config.classifier_image_size))
            seen = probabilities > 0.5
            on = row > 0.5
            per_context[context_name] = {"on": float(seen[:, on].mean()), "agreement": float((seen == on).mean()),
                                         "samples": int(finite.sum())}
        shown = _display(images, config).reshape(len(temperatures), s, *_display_shape(model, config))
        overview.append(shown[:, 0])
        if k < limit:
            _image_grid(shown, folder / f"{context_name}.png", row_labels=[f"T = {t:.2f}" for t in temperatures],
                             title=f"{name}: {context_name}")
    _image_grid(np.stack(overview), out / f"samples_{plugin}.png", row_labels=names,
                     title=f"{name}: one sample per temperature {temperatures[0]:.2f}..{temperatures[-1]:.2f} "
                           "(columns), same noise in every row")
    single = [per_context[n] for n in ATTRIBUTES if n in per_context]
    return {
        "contexts": len(names), "temperatures": [float(t) for t in config.temperatures], "samples_per_temperature": s,
        "non_finite": non_finite, "per_context": per_context,
        "single_on_mean": float(np.mean([c["on"] for c in single])) if single else None,
        "single_agreement_mean": float(np.mean([c["agreement"] for c in single])) if single else None,
        "figure": f"samples_{plugin}.png", "context_figures": [f"samples_{plugin}/{n}.png" for n in names[:limit]],
    }


def _display_shape(model: MSP, config: Config) -> tuple[int, int, int]:
    size = min(model.image_size, config.figure_image_size)
    return size, size, 3


def _display(images: np.ndarray, config: Config) -> np.ndarray:
    """Images in [-1, 1] → [0, 1] for figures, shrunk to ``figure_image_size`` when larger: (x + 1) / 2."""
    if images.shape[1] > config.figure_image_size:
        images = judge.resize_images(images, config.figure_image_size)
    return (np.clip(images, -1.0, 1.0) + 1.0) / 2.0


def _figure_faces(celeba: CelebA, z: dict[str, np.ndarray], y: dict[str, np.ndarray],
                  config: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The latents, attributes and images of ``figure_rows`` of ``figure_split`` (rows past its end dropped)."""
    split = celeba.split(config.figure_split)
    rows = np.asarray([r for r in config.figure_rows if r < len(split)], np.int64)
    if rows.size == 0:
        raise UsageError(f"celeba: `figure_rows` {config.figure_rows} lie beyond the {len(split)} rows of the "
                         f"{config.figure_split} split.")
    images = np.empty((rows.size, celeba.image_size, celeba.image_size, 3), np.float32)
    for x, _, got in split.batches(max(1, int(rows.max() - rows.min() + 1)), start=int(rows.min()),
                                   stop=int(rows.max()) + 1):
        for slot, r in enumerate(rows):
            hit = np.flatnonzero(got == r)
            if hit.size:
                images[slot] = x[hit[0]]
    return z[config.figure_split][rows], y[config.figure_split][rows], images


def _manipulation_figure(model: MSP, x: np.ndarray, z: np.ndarray, edited_all: np.ndarray, config: Config,
                         path: Path, title: str) -> None:
    """Rows: original, reconstruction D(z), one per flipped attribute (``edited_all``, (A, N, L)); columns: faces."""
    grid = [_display(x, config), _display(latents.decode(model, z), config)]
    for edited in edited_all:
        images = np.full_like(x, -1.0)
        finite = np.isfinite(edited).all(axis=1)
        if finite.any():
            images[finite] = latents.decode(model, edited[finite])
        grid.append(_display(images, config))
    labels = ["original", "reconstruction"] + [f"flip {name}" for name in ATTRIBUTES]
    _image_grid(np.stack(grid), path, row_labels=labels, title=title)


def _figures(record: dict[str, Any], out: Path) -> None:
    """Per-attribute bars: Bayes-rule accuracy against the probe and the majority; edit success and kept."""
    names = {"maf": "C-MAF", "rnvp": "C-RealNVP"}
    accuracy = {f"FPN {names[p]} (Bayes)": r["bayes"]["uniform"]["accuracy"] for p, r in record["results"].items()}
    accuracy |= {"logistic regression": record["probe"]["accuracy"], "majority": record["majority"]["accuracy"]}
    _attribute_bars(accuracy, out / "attribute_prediction.png", xlabel="test accuracy",
                    title="Attribute prediction from the latents")
    success = {f"FPN {names[p]}": r["edits"]["success"] for p, r in record["results"].items() if "edits" in r}
    success["MSP"] = record["msp_edits"]["success"]
    _attribute_bars(success, out / "edit_success.png", xlabel="share of edits the classifier sees succeed",
                    title="Flipping one attribute: does it change? (attribute CNN)")
    kept = {f"FPN {names[p]}": r["edits"]["kept"] for p, r in record["results"].items() if "edits" in r}
    kept["MSP"] = record["msp_edits"]["kept"]
    _attribute_bars(kept, out / "edit_kept.png", xlabel="share of the other 39 attributes unchanged",
                    title="Flipping one attribute: do the others stay? (attribute CNN)")


def _attribute_bars(values: dict[str, Sequence[float]], path: Path, *, xlabel: str, title: str) -> None:
    """Horizontal grouped bars, one group per attribute (named on the y axis), one bar per entry."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k, m = len(ATTRIBUTES), len(values)
    fig = Figure(figsize=(7.5, 0.09 * k * m + 1.6), dpi=plots.DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    height = 0.8 / m
    colours = colormaps["tab10"]
    for i, (name, v) in enumerate(values.items()):
        v = np.asarray(v, np.float64)
        ax.barh(np.arange(k) - 0.4 + height * (i + 0.5), v, height, color=colours(i % 10),
                label=f"{name} (mean {np.nanmean(v):.3f})")
    ax.set_yticks(np.arange(k), labels=list(ATTRIBUTES), fontsize="small")
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=min(m, 2), fontsize="small", frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=plots.DPI, format="png")


# -- helpers --------------------------------------------------------------------------------
def _image_grid(images: np.ndarray, path: Path, **kwargs: Any) -> None:
    """``plots.image_grid``, quiet about matplotlib's layout warning for tiny images under long row labels."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="constrained_layout not applied", category=UserWarning)
        plots.image_grid(images, path, **kwargs)


def _chunked(fn: Any, *arrays: np.ndarray, batch_size: int) -> np.ndarray:
    """``fpn_jax.runtime.chunks.map_in_chunks`` as a host array: equal-sized (padded) chunks, one compiled shape."""
    return np.asarray(map_in_chunks(fn, *arrays, batch_size=batch_size))


def _parameters(model: nnx.Module) -> int:
    return int(sum(np.size(p) for p in jax.tree.leaves(nnx.state(model, nnx.Param))))


def _data_record(config: Config, root: Path | None) -> dict[str, Any]:
    return {"root": None if root is None else os.path.abspath(root), "source": config.data_source,
            "synthetic": config.synthetic, "synthetic_images": config.synthetic_images if config.synthetic else None}


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low
