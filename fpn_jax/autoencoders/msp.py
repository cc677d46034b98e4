"""MSP's VAE in Flax: the CelebA base model of Flow Plugin Networks (Matrix Subspace Projection).

Li, Lin, Li, Wang, Guerin, "Latent Space Factorisation and Manipulation via Matrix Subspace
Projection" (ICML 2020); code lissomx/MSP, ``M_ModelAE_Cnn.CnnVae``, which Flow Plugin
Networks copies as ``models/vae/msp.py`` and loads from ``MSP_CelebA.tch``
(``fpn_jax.convert.msp`` reads that file). Every layer copies the original: 4x4 convolutions
without bias, stride 2 and padding 1 unless marked, batch norm with eps 1e-5 and torch
momentum 0.1 (Flax 0.9). Layout NHWC; with S = ``image_size`` (a power of two ≥ 8),
K = log2(S) − 3 and w_k = nf·2^k, the latent width is L = w_K = nf·2^K (2048 for S = 256,
nf = 64)::

    encoder  x (N, S, S, nc) in [-1, 1]                              torch encoder.main.*
      Conv nc→w_0 → LeakyReLU(0.2)                        (N, S/2, S/2, w_0)        .0
      k = 1..K: Conv w_{k-1}→w_k → BN → LeakyReLU(0.2)    (N, S/2^(k+1), ., w_k)    .{3k-1, 3k}
      Conv w_K→L, k4 s1 p0 (VALID)                        (N, 1, 1, L) → (N, L)    .{3K+2}
    head     μ = fc1(h), log σ² = fc2(h): Linear L→L with bias
    decoder  z (N, L) → (N, 1, 1, L)                                 torch decoder.main.*
      ConvT L→w_K, k4 s1 p0 → BN → ReLU                   (N, 4, 4, w_K)            .{0, 1}
      j = 1..K: ConvT w_{K-j+1}→w_{K-j} → BN → ReLU       (N, 4·2^j, ., w_{K-j})    .{3j, 3j+1}
      ConvT w_0→nc → tanh                                 (N, S, S, nc) in [-1, 1]  .{3K+3, 3K+4}
    M        (A, L), A = ``num_attributes`` (40 CelebA attributes)

A torch ``ConvTranspose2d(k, s, p)`` is ``nnx.ConvTranspose`` with ``transpose_kernel=True``
(the gradient of a convolution, as torch's) and padding k − 1 − p per side: (2, 2) for s2p1,
(3, 3) for the first, s1p0, layer. Its torch weight (in, out, kh, kw) is the kernel
(kh, kw, out, in) after ``transpose(2, 3, 1, 0)``, the same axes move as a convolution's.

The MSP part. Labels are y ∈ {−1, +1}^A (CelebA's ``list_attr_celeba.txt``). The matrix M
maps the latent onto attribute scores ``z Mᵀ`` (``attribute_scores``) and is trained so that
the attribute subspace it spans carries the labels (``loss_with_labels``). ``edit_latents``
is MSP's linear edit (``CnnVae.predict``): for the requested attributes i with values v,
``d_i = weight·v − (z Mᵀ)_i`` (d = 0 elsewhere) and ``z' = z + d M``; with orthonormal rows of
M this sets (z' Mᵀ)_i = weight·v exactly and leaves the other scores unchanged. ``predict``
does it from images, starting at z = μ(x), and decodes.

Training objective per image (``loss_with_labels``; the original sums it over the batch,
``fit_msp`` averages), with z = μ + exp(½ log σ²) ⊙ ε, ε ~ N(0, I) drawn as
``jax.random.normal(key, (N, L))``::

    loss = ‖D(z) − x‖²                                  reconstruction (sum over pixels)
         + ½ Σ_j (σ_j² + μ_j² − 1 − log σ_j²)          KL(q(z | x) ‖ N(0, I))
         + w (‖z Mᵀ − y‖² + ‖y M − z‖²),   w = S²·nc / (A + L)

The original trained it with a PatchGAN discriminator's adversarial term added (lissomx
``train_CelebA.py``: Adam 1e-4, batch 70, 80 epochs, gradient norm clipped at 1); the
discriminator is not part of ``MSP_CelebA.tch`` and not ported, so ``fit_msp`` trains the
VAE + MSP objective alone. ``fpn_jax.autoencoders.fit`` cannot train MSP (its loss sees no
labels): use ``fit_msp``.

Deviations from the original, on purpose: ``nc`` is honoured (the original ``CnnVae`` does
not pass its ``nc`` on, so its layers always take 3 channels); image sizes are powers of two
(the original also builds for some other sizes, e.g. 3·2^m); Flax batch norm updates its
running variance with the biased batch variance (torch: unbiased).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fpn_jax import validation as checks
from fpn_jax.autoencoders.base import TrainableAutoencoder
from fpn_jax.train.config import History, TrainConfig, check_training_setup
from fpn_jax.train.loop import fit_model
from fpn_jax.typing import Array, ArrayLike, Images, Key, Latents, Scalar

BN_MOMENTUM = 0.9  # torch's momentum=0.1
BN_EPSILON = 1e-5
LEAKY_SLOPE = 0.2
KERNEL = 4
# torch's default initialisation of Conv2d / ConvTranspose2d / Linear weights (kaiming_uniform
# with a = √5): U(±1/√fan_in), fan_in = in·k² (ConvTranspose2d: out·k², also what Flax's
# fan_in of a transposed kernel (k, k, out, in) is).
_TORCH_KERNEL_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_XAVIER_NORMAL = nnx.initializers.variance_scaling(1.0, "fan_avg", "normal")  # torch's xavier_normal_ (not truncated)


def _batch_norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)


def _conv(in_features: int, out_features: int, *, last: bool, rngs: nnx.Rngs) -> nnx.Conv:
    """Torch ``Conv2d(in, out, 4, 2, 1, bias=False)``, or (``last``) ``Conv2d(in, out, 4, 1, 0)``."""
    strides, padding = ((1, 1), "VALID") if last else ((2, 2), ((1, 1), (1, 1)))
    return nnx.Conv(in_features, out_features, (KERNEL, KERNEL), strides=strides, padding=padding, use_bias=False,
                    kernel_init=_TORCH_KERNEL_INIT, rngs=rngs)


def _deconv(in_features: int, out_features: int, *, first: bool, rngs: nnx.Rngs) -> nnx.ConvTranspose:
    """Torch ``ConvTranspose2d(in, out, 4, 2, 1, bias=False)``, or (``first``) ``(in, out, 4, 1, 0)``.

    Padding k − 1 − p per side (torch's p is a crop of the full transposed convolution).
    """
    strides, pad = ((1, 1), KERNEL - 1) if first else ((2, 2), KERNEL - 2)
    return nnx.ConvTranspose(in_features, out_features, (KERNEL, KERNEL), strides=strides,
                             padding=((pad, pad), (pad, pad)), transpose_kernel=True, use_bias=False,
                             kernel_init=_TORCH_KERNEL_INIT, rngs=rngs)


def _torch_linear(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """``nnx.Linear`` initialised as torch's ``nn.Linear``: weights and bias U(±1/√in)."""
    bound = 1.0 / math.sqrt(in_features)

    def uniform(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nnx.Linear(in_features, out_features, kernel_init=uniform, bias_init=uniform, rngs=rngs)


def num_blocks(image_size: int, *, where: str = "MSP") -> int:
    """K = log2(image_size) − 3: the number of conv → BN → LeakyReLU blocks of the encoder.

    Raises:
      ValueError: ``image_size`` is not a power of two ≥ 8.
    """
    ok = isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool)
    if not ok or image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"{where}: `image_size` must be a power of two >= 8 (256 for CelebA); got {image_size!r}.")
    return int(image_size).bit_length() - 4


class MSPEncoder(nnx.Module):
    """x (N, S, S, nc) → h (N, L): MSP's convolutional encoder (torch ``Encoder``).

    Attributes:
      convs: the K + 2 convolutions (torch ``encoder.main.{0, 2, 5, ..., 3K-1, 3K+2}``).
      norms: the K batch norms (torch ``encoder.main.{3, 6, ..., 3K}``).
    """

    def __init__(self, image_size: int, nf: int, latent_features: int, nc: int, *, rngs: nnx.Rngs):
        blocks = num_blocks(image_size)
        widths = [nf * 2**k for k in range(blocks + 1)]
        self.convs = nnx.List(
            [_conv(nc, nf, last=False, rngs=rngs)]
            + [_conv(a, b, last=False, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)]
            + [_conv(widths[-1], latent_features, last=True, rngs=rngs)]
        )
        self.norms = nnx.List([_batch_norm(b, rngs) for b in widths[1:]])

    def activations(self, x: Array) -> list[Array]:
        """Every block's output: K + 1 LeakyReLU outputs (N, S/2^(k+1), ., w_k), then (N, 1, 1, L).

        These are torch's ``encoder.main`` outputs after modules 1, 4, ..., 3K+1 and 3K+2.
        """
        h = jax.nn.leaky_relu(self.convs[0](x), LEAKY_SLOPE)
        out = [h]
        for conv, norm in zip(self.convs[1:-1], self.norms, strict=True):
            h = jax.nn.leaky_relu(norm(conv(h)), LEAKY_SLOPE)
            out.append(h)
        out.append(self.convs[-1](h))
        return out

    def __call__(self, x: Array) -> Array:
        """Maps images x (N, S, S, nc) → features h (N, L)."""
        return self.activations(x)[-1].reshape(x.shape[0], -1)


class MSPDecoder(nnx.Module):
    """z (N, L) → images (N, S, S, nc) in [-1, 1]: MSP's transposed-convolution decoder (torch ``Decoder``).

    Attributes:
      deconvs: the K + 2 transposed convolutions (torch ``decoder.main.{0, 3, ..., 3K+3}``).
      norms: the K + 1 batch norms (torch ``decoder.main.{1, 4, ..., 3K+1}``).
    """

    def __init__(self, image_size: int, nf: int, latent_features: int, nc: int, *, rngs: nnx.Rngs):
        blocks = num_blocks(image_size)
        widths = [nf * 2**k for k in range(blocks, -1, -1)]  # w_K, ..., w_0
        self.deconvs = nnx.List(
            [_deconv(latent_features, widths[0], first=True, rngs=rngs)]
            + [_deconv(a, b, first=False, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)]
            + [_deconv(widths[-1], nc, first=False, rngs=rngs)]
        )
        self.norms = nnx.List([_batch_norm(w, rngs) for w in widths])

    def activations(self, z: Array) -> list[Array]:
        """Every block's output: K + 1 ReLU outputs (N, 4·2^j, ., w_{K-j}), then the image (N, S, S, nc).

        These are torch's ``decoder.main`` outputs after modules 2, 5, ..., 3K+2 and 3K+4 (tanh).
        """
        h = z.reshape(z.shape[0], 1, 1, z.shape[1])
        out = []
        for deconv, norm in zip(self.deconvs[:-1], self.norms, strict=True):
            h = jax.nn.relu(norm(deconv(h)))
            out.append(h)
        out.append(jnp.tanh(self.deconvs[-1](h)))
        return out

    def __call__(self, z: Array) -> Array:
        """Maps latents z (N, L) → images (N, S, S, nc) in [-1, 1]."""
        return self.activations(z)[-1]


class MSP(TrainableAutoencoder):
    """MSP's VAE with its attribute matrix M (lissomx ``CnnVae``); see the module docstring.

    ``encode(x)`` is μ(x) (``encode(x, key=...)`` a sample of q(z | x)); ``decode(z)`` the
    tanh image in [-1, 1] (``data_range``); ``predict`` / ``edit_latents`` MSP's attribute
    edit; ``loss_with_labels`` / ``fit_msp`` its training objective. The defaults are
    ``MSP_CelebA.tch``: 256x256x3 images, nf = 64, 40 attributes, L = 2048 (232.1 M parameters).

    Args:
      image_size: S, the side of the square images (a power of two ≥ 8).
      nf: the first convolution's width; block k has nf·2^k channels.
      num_attributes: A, the rows of M (the number of binary labels).
      nc: image channels.
      latent_features: L (the original's ``hidden_size``); default nf·2^(log2 S − 3).
      rngs: parameter initialisation (torch's defaults: U(±1/√fan_in) weights, xavier-normal M).

    Attributes:
      encoder, decoder: ``MSPEncoder``, ``MSPDecoder``.
      fc1, fc2: μ and log σ² heads, Linear L → L.
      M: ``nnx.Param`` (A, L).
    """

    def __init__(
        self,
        image_size: int = 256,
        nf: int = 64,
        num_attributes: int = 40,
        nc: int = 3,
        latent_features: int | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        where = "MSP"
        blocks = num_blocks(image_size, where=where)
        nf = checks.positive_int(nf, name="nf", where=where)
        num_attributes = checks.positive_int(num_attributes, name="num_attributes", where=where)
        nc = checks.positive_int(nc, name="nc", where=where)
        if latent_features is None:
            latent_features = nf * 2**blocks
        super().__init__(latent_features, data_shape=(int(image_size),) * 2 + (nc,), data_range=(-1.0, 1.0))
        self.image_size, self.nf, self.num_attributes, self.nc = int(image_size), nf, num_attributes, nc
        self.hyperparameters = checks.frozen({
            "image_size": self.image_size, "nf": nf, "num_attributes": num_attributes, "nc": nc,
            "latent_features": self.latent_features,
        })
        width = self.latent_features
        self.encoder = MSPEncoder(self.image_size, nf, width, nc, rngs=rngs)
        self.decoder = MSPDecoder(self.image_size, nf, width, nc, rngs=rngs)
        self.fc1 = _torch_linear(width, width, rngs=rngs)
        self.fc2 = _torch_linear(width, width, rngs=rngs)
        self.M = nnx.Param(_XAVIER_NORMAL(rngs.params(), (num_attributes, width)))

    @property
    def msp_weight(self) -> float:
        """The weight w = S²·nc / (A + L) of the MSP term (the original's ``_msp_weight`` per image)."""
        return math.prod(self.data_shape) / (self.num_attributes + self.latent_features)

    # -- the maps --------------------------------------------------------------------------
    def posterior(self, x: Images) -> tuple[Latents, Latents]:
        """(μ, log σ²) of q(z | x), each (N, L), for images x (N, S, S, nc) (unchecked)."""
        h = self.encoder(x)
        return self.fc1(h), self.fc2(h)

    def _encode(self, x: Array, key: Key | None) -> Array:
        mu, logvar = self.posterior(x)
        if key is None:
            return mu
        return mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)

    def _decode(self, z: Array, key: Key | None, **options: Any) -> Array:
        if options:
            raise TypeError(f"MSP.decode takes no options; got {sorted(options)}.")
        return self.decoder(z)

    # -- attribute manipulation --------------------------------------------------------------
    def attribute_scores(self, z: Latents) -> Array:
        """``z Mᵀ`` (N, A): the latents projected on the attribute subspace (≈ the ±1 labels)."""
        z = checks.as_float_matrix(z, name="z", width=self.latent_features, where="MSP.attribute_scores",
                                   width_name="latent_features")
        return z @ self.M[...].T

    def edit_latents(
        self,
        z: Latents,
        attributes: Mapping[int, float | ArrayLike] | Sequence[tuple[int, float | ArrayLike]],
        *,
        weight: float = 1.0,
    ) -> Latents:
        """MSP's linear edit of latents: ``z' = z + d M``, ``d_i = weight·v_i − (z Mᵀ)_i`` on the requested i.

        All d_i are computed from the unedited z (as the original); d is 0 on the other
        attributes. With orthonormal rows of M, (z' Mᵀ)_i = weight·v_i exactly and the other
        scores are unchanged.

        Args:
          z: latents (N, L).
          attributes: ``{index: value}`` or the original's ``[(index, value), ...]``; an index
            in [0, A), a value a number or one per row, shape (N,). Labels are ±1, and the
            original's pictures push to ±2.
          weight: the factor on every value.

        Returns:
          The edited latents (N, L).

        Raises:
          ValueError: ``z`` not (N, L) finite floats, an index out of range or repeated, a
            value not finite or of the wrong shape, a non-finite ``weight``.
        """
        where = "MSP.edit_latents"
        z = checks.as_float_matrix(z, name="z", width=self.latent_features, where=where, width_name="latent_features")
        index, values = _attribute_changes(attributes, self.num_attributes, z.shape[0], where)
        weight = _finite_number(weight, "weight", where)
        return _edit(z, self.M[...], index, values, weight)

    def predict(
        self,
        x: Images,
        attributes: Mapping[int, float | ArrayLike] | Sequence[tuple[int, float | ArrayLike]] | None = None,
        *,
        weight: float = 1.0,
    ) -> Images:
        """MSP's ``predict``: z = μ(x), edited by ``edit_latents`` when ``attributes`` are given, decoded.

        Args:
          x: images (N, S, S, nc) in [-1, 1].
          attributes: see ``edit_latents``; None reconstructs D(μ(x)).
          weight: the factor on every value.

        Returns:
          Images (N, S, S, nc) in [-1, 1].
        """
        where = "MSP.predict"
        x = self.check_data(x, name="x", where=where)
        z = self._encode(x, None)
        if attributes is not None:
            index, values = _attribute_changes(attributes, self.num_attributes, x.shape[0], where)
            z = _edit(z, self.M[...], index, values, _finite_number(weight, "weight", where))
        return self.decoder(z)

    # -- training ----------------------------------------------------------------------------
    def check_labels(self, labels: ArrayLike, *, name: str, where: str) -> Array:
        """``labels`` checked to be (N, A) values in {−1, +1} (values on concrete arrays only), as float32.

        Raises:
          ValueError: the wrong shape, booleans, a non-numeric dtype, or a value other than ±1
            (naming the first bad row; {0, 1} labels convert with ``2 * y - 1``).
        """
        if not hasattr(labels, "shape") or not hasattr(labels, "dtype"):
            labels = np.asarray(labels)
        if labels.dtype == bool:
            raise ValueError(f"{where}: argument `{name}` must hold the labels as -1 / +1 numbers (MSP's "
                             f"convention); got booleans: pass 2 * {name}.astype(float) - 1.")
        if jnp.issubdtype(labels.dtype, jnp.integer):
            labels = labels.astype(np.float32) if isinstance(labels, np.ndarray) else labels.astype(jnp.float32)
        labels = checks.as_float_matrix(labels, name=name, width=self.num_attributes, where=where,
                                        width_name="num_attributes")
        if not checks.is_traced(labels) and labels.size:
            bad = ~np.asarray(jnp.all(jnp.abs(labels) == 1.0, axis=1))
            if bad.any():
                row = int(np.argmax(bad))
                found = sorted({float(v) for v in np.asarray(labels[row])} - {-1.0, 1.0})[:5]
                raise ValueError(
                    f"{where}: argument `{name}` must hold -1 / +1 labels (MSP's convention, as CelebA's "
                    f"list_attr_celeba.txt); row {row} of {labels.shape[0]} has {found} ({int(bad.sum())} bad rows "
                    f"in all). Convert {{0, 1}} labels with 2 * {name} - 1."
                )
        return labels

    def _loss(self, x: Array, key: Key) -> tuple[Array, dict[str, Array]]:
        raise TypeError(
            "MSP.loss: MSP's objective needs the attribute labels; use MSP.loss_with_labels(x, labels, key), and "
            "fpn_jax.autoencoders.msp.fit_msp(model, images, labels, key=...) instead of fpn_jax.autoencoders.fit."
        )

    def loss_with_labels(self, x: Images, labels: ArrayLike, key: Key) -> tuple[Array, dict[str, Array]]:
        """MSP's training objective per image (N,), with its parts (see the module docstring).

        ``loss = reconstruction + kl + msp_weight · msp``, all summed over the image's values:
        reconstruction ``‖D(z) − x‖²``, kl ``KL(q(z | x) ‖ N(0, I))``, msp
        ``‖z Mᵀ − y‖² + ‖y M − z‖²``, with z = μ + exp(½ log σ²) ⊙ ε, ε = ``normal(key, (N, L))``.
        The sum over a batch is the original's ``CnnVae.loss`` (without its PatchGAN term).

        Args:
          x: images (N, S, S, nc) in [-1, 1].
          labels: (N, A) attributes in {−1, +1}.
          key: PRNG key of ε.

        Returns:
          The per-image loss (N,) and ``{"reconstruction", "kl", "msp"}`` (N,) each (msp unweighted).
        """
        where = "MSP.loss_with_labels"
        x = self.check_data(x, name="x", where=where)
        labels = self.check_labels(labels, name="labels", where=where)
        checks.same_rows(where, x=x, labels=labels)
        key = checks.check_key(key, where=where)
        mu, logvar = self.posterior(x)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)
        reconstruction = jnp.sum((self.decoder(z) - x) ** 2, axis=(1, 2, 3))
        kl = 0.5 * jnp.sum(jnp.exp(logvar) + mu**2 - 1.0 - logvar, axis=1)
        m = self.M[...]
        msp = jnp.sum((z @ m.T - labels) ** 2, axis=1) + jnp.sum((labels @ m - z) ** 2, axis=1)
        total = reconstruction + kl + self.msp_weight * msp
        return total, {"reconstruction": reconstruction, "kl": kl, "msp": msp}


def _attribute_changes(
    attributes: Any, num_attributes: int, rows: int, where: str
) -> tuple[np.ndarray, Array]:
    """(indices (k,), values (N, k)) from ``{i: v}`` or ``[(i, v), ...]``; v a number or (N,)."""
    if isinstance(attributes, Mapping):
        pairs = list(attributes.items())
    elif isinstance(attributes, Sequence) and not isinstance(attributes, str):
        pairs = list(attributes)
        if not all(isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2 for p in pairs):
            raise ValueError(f"{where}: argument `attributes` must be {{index: value}} or [(index, value), ...]; "
                             f"got {attributes!r}.")
    else:
        raise ValueError(f"{where}: argument `attributes` must be {{index: value}} or [(index, value), ...]; "
                         f"got {type(attributes).__name__}.")
    if not pairs:
        raise ValueError(f"{where}: argument `attributes` is empty; name at least one (index, value).")
    index, columns = [], []
    for i, v in pairs:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < num_attributes:
            raise ValueError(f"{where}: attribute index must be an integer in [0, {num_attributes}); got {i!r}.")
        if int(i) in index:
            raise ValueError(f"{where}: attribute index {int(i)} is given twice in `attributes`.")
        value = v if hasattr(v, "shape") else np.asarray(v, np.float32)
        if value.shape not in ((), (rows,)):
            raise ValueError(f"{where}: the value of attribute {int(i)} must be a number or one per row, shape "
                             f"({rows},); got shape {tuple(value.shape)}.")
        if not jnp.issubdtype(value.dtype, jnp.number) or jnp.issubdtype(value.dtype, jnp.complexfloating):
            raise ValueError(f"{where}: the value of attribute {int(i)} must be real; got dtype {value.dtype}.")
        if not checks.is_traced(value) and not np.isfinite(np.asarray(value, np.float64)).all():
            raise ValueError(f"{where}: the value of attribute {int(i)} must be finite; got {np.asarray(value)}.")
        index.append(int(i))
        columns.append(jnp.broadcast_to(jnp.asarray(value, jnp.float32), (rows,)))
    return np.asarray(index), jnp.stack(columns, axis=1)


def _finite_number(value: Any, name: str, where: str) -> float:
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not number or not np.isfinite(value):
        raise ValueError(f"{where}: `{name}` must be a finite number; got {value!r}.")
    return float(value)


def _edit(z: Array, m: Array, index: np.ndarray, values: Array, weight: float) -> Array:
    """``z + d M`` with ``d[:, index] = weight·values − (z Mᵀ)[:, index]``, 0 elsewhere."""
    scores = z @ m.T
    d = jnp.zeros_like(scores).at[:, index].set(weight * values - scores[:, index])
    return z + d @ m


# -- training -----------------------------------------------------------------------------------
def default_msp_config(**overrides: object) -> TrainConfig:
    """The original's settings: Adam 1e-4, batch 70, 80 epochs, gradient norm clipped at 1.

    The original clips the gradient of the batch's *summed* loss at norm 1; ``fit_msp``
    averages the loss over the batch, so the same clipping is ``max_grad_norm = 1 / batch_size``
    (Adam's update does not depend on the gradient's scale, up to its ε). It is derived from
    ``batch_size`` unless given. No early stopping (the original trains all 80 epochs).
    """
    batch_size = overrides.get("batch_size", 70)
    settings = dict(learning_rate=1e-4, batch_size=batch_size, max_epochs=80, patience=None, eval_batch_size=128)
    if isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool) and batch_size > 0:
        settings["max_grad_norm"] = 1.0 / float(batch_size)
    return TrainConfig(**(settings | overrides))


def fit_msp(
    model: MSP,
    images: Images,
    labels: ArrayLike,
    *,
    key: Key,
    config: TrainConfig | None = None,
    validation: tuple[Images, ArrayLike] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
) -> History:
    """Trains ``model`` in place on labelled images with MSP's objective; leaves it frozen at its best epoch.

    The loop is ``fpn_jax.train.fit_model`` (as ``fpn_jax.autoencoders.fit``), minimising the
    batch mean of ``MSP.loss_with_labels``. The whole data set is put on the device: this is
    for small sets; CelebA at 256x256 (~140 GB as float32) needs a streaming input pipeline.

    Args:
      model: an ``MSP``.
      images: (N, S, S, nc) floats in [-1, 1].
      labels: (N, A) attributes in {−1, +1}.
      key: PRNG key (shuffling and the reparameterisation noise).
      config: optimisation settings (default ``default_msp_config()``).
      validation: held-out ``(images, labels)`` for early stopping, scored with a fixed key.
      checkpoint_dir: folder for resumable state (``resume/``) and the best model (``best/``).
      resume: continue an interrupted run found in ``checkpoint_dir``.
      progress: show a progress bar.

    Returns:
      The history of mean per-batch losses.

    Raises:
      TypeError: ``model`` is not an ``MSP`` or ``config`` not a ``TrainConfig``.
      ValueError: bad images, labels (see ``MSP.check_labels``), row counts, key or validation.
    """
    where = "fit_msp"
    if not isinstance(model, MSP):
        raise TypeError(f"{where}: argument `model` must be an MSP; got {type(model).__name__}.")
    images = model.check_data(images, name="images", where=where)
    labels = model.check_labels(labels, name="labels", where=where)
    checks.same_rows(where, images=images, labels=labels)
    key = checks.check_key(key, where=where)
    config = config or default_msp_config()
    check_training_setup(model, config, images.shape[0], where=where, name="images")
    held_out = None
    if validation is not None:
        if not isinstance(validation, (tuple, list)) or len(validation) != 2:
            raise ValueError(f"{where}: argument `validation` must be a pair (images, labels); "
                             f"got {type(validation).__name__}.")
        val_images = model.check_data(validation[0], name="validation[0]", where=where)
        val_labels = model.check_labels(validation[1], name="validation[1]", where=where)
        if checks.same_rows(where, **{"validation[0]": val_images, "validation[1]": val_labels}) == 0:
            raise ValueError(f"{where}: argument `validation` has no rows; pass None to train without validation.")
        key, validation_key = jax.random.split(key)

        def row_loss(model: MSP, batch: tuple[Array, Array]) -> Array:
            return model.loss_with_labels(batch[0], batch[1], validation_key)[0]

        held_out = ((val_images, val_labels), row_loss)
    return fit_model(
        model, _batch_loss, (images, labels), key=key, config=config, validation=held_out, name="fit MSP",
        progress=progress, checkpoint_dir=checkpoint_dir, resume=resume,
    )


def _batch_loss(model: MSP, batch: tuple[Array, Array], key: Key) -> Scalar:
    return jnp.mean(model.loss_with_labels(batch[0], batch[1], key)[0])

