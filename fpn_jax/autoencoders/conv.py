"""The paper's MNIST base models: ``ConvVAE`` and ``ConvAE`` (28x28x1 images, 40-d latents).

The base models of Flow Plugin Networks' MNIST experiments (Wielopolski, Koperski, Zięba,
section 5), ported from the original PyTorch code; the VAE is Kingma and Welling,
"Auto-Encoding Variational Bayes" (ICLR 2014).

Layout is NHWC. Every layer copies the original PyTorch code (Conv2d/ConvTranspose2d with
padding 0, BatchNorm with momentum 0.1 in torch = 0.9 here, eps 1e-5)::

    encoder  x (N, 28, 28, 1)
      Conv 1→16, k4 s2 → BN → LeakyReLU(0.2)      (N, 13, 13, 16)
      Conv 16→32, k4 s2 → BN → LeakyReLU(0.2)     (N, 5, 5, 32)
      Conv 32→64, k4 s2                           (N, 1, 1, 64) → flatten (N, 64)
    head     ConvVAE: fc_mu, fc_logvar: Linear 64→40;  ConvAE: bottleneck: Linear 64→40
    decoder  z (N, 40) → (N, 1, 1, 40)
      ConvT 40→256, k3 s2 → BN → ReLU             (N, 3, 3, 256)
      ConvT 256→128, k4 s1 → BN → ReLU            (N, 6, 6, 128)
      ConvT 128→64, k3 s2 → BN → ReLU             (N, 13, 13, 64)
      ConvT 64→1, k4 s2 → sigmoid                 (N, 28, 28, 1)

A transposed convolution with padding 0 scatters every input pixel through the kernel:
``y[s i + a, s j + b] += x[i, j] W[a, b]``, output size ``(i - 1) s + k`` as in torch.
``fpn_jax.nn.ConvTranspose`` computes exactly that as one matmul (each input pixel times the
kernel, (N, H, W, k, k, C_out)) and an overlap-add of the k² shifted planes. On CPU this is
5-15x faster than XLA's dilated-convolution lowering for these shapes (its FLOPs are the true
ones: no multiplications by inserted zeros), and the kernel keeps torch's meaning: a torch
weight (in, out, kh, kw) is ours transposed to (kh, kw, in, out), no flip.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from fpn_jax import validation as checks
from fpn_jax.autoencoders.base import TrainableAutoencoder
from fpn_jax.nn.conv import ConvTranspose
from fpn_jax.typing import Array

BN_MOMENTUM = 0.9  # torch's momentum=0.1
BN_EPSILON = 1e-5


def _batch_norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)


class ConvEncoder(nnx.Module):
    """x (N, 28, 28, 1) in [0, 1] → features (N, 64)."""

    def __init__(self, *, rngs: nnx.Rngs):
        conv = dict(kernel_size=(4, 4), strides=(2, 2), padding="VALID", rngs=rngs)
        self.conv_1 = nnx.Conv(1, 16, **conv)
        self.norm_1 = _batch_norm(16, rngs)
        self.conv_2 = nnx.Conv(16, 32, **conv)
        self.norm_2 = _batch_norm(32, rngs)
        self.conv_3 = nnx.Conv(32, 64, **conv)

    def __call__(self, x: Array) -> Array:
        """Maps images x (N, 28, 28, 1) → features (N, 64)."""
        h = jax.nn.leaky_relu(self.norm_1(self.conv_1(x)), 0.2)
        h = jax.nn.leaky_relu(self.norm_2(self.conv_2(h)), 0.2)
        return self.conv_3(h).reshape(x.shape[0], -1)


class ConvDecoder(nnx.Module):
    """z (N, latent) → logits (N, 28, 28, 1); ``sigmoid`` of them is the image."""

    def __init__(self, latent_features: int, *, rngs: nnx.Rngs):
        self.deconv_1 = ConvTranspose(latent_features, 256, 3, 2, rngs=rngs)
        self.norm_1 = _batch_norm(256, rngs)
        self.deconv_2 = ConvTranspose(256, 128, 4, 1, rngs=rngs)
        self.norm_2 = _batch_norm(128, rngs)
        self.deconv_3 = ConvTranspose(128, 64, 3, 2, rngs=rngs)
        self.norm_3 = _batch_norm(64, rngs)
        self.deconv_4 = ConvTranspose(64, 1, 4, 2, rngs=rngs)

    def __call__(self, z: Array) -> Array:
        """Maps latents z (N, latent) → logits (N, 28, 28, 1)."""
        h = z.reshape(z.shape[0], 1, 1, z.shape[1])
        h = jax.nn.relu(self.norm_1(self.deconv_1(h)))
        h = jax.nn.relu(self.norm_2(self.deconv_2(h)))
        h = jax.nn.relu(self.norm_3(self.deconv_3(h)))
        return self.deconv_4(h)


class ConvVAE(TrainableAutoencoder):
    """Convolutional VAE: q(z | x) = N(μ(x), diag exp(logvar(x))), p(x | z) Bernoulli.

    Loss per image (summed over pixels; training averages it over the batch), KL weight 1:
    ``BCE(x, D(z)) + KL(q(z | x) || N(0, I))``, ``z = μ + exp(logvar / 2) ε``.
    ``encode`` returns μ by default; ``encode(x, key=...)`` samples from q(z | x).
    """

    def __init__(self, latent_features: int = 40, *, rngs: nnx.Rngs):
        super().__init__(latent_features, data_shape=(28, 28, 1), data_range=(0.0, 1.0))
        self.hyperparameters = checks.frozen({"latent_features": latent_features})
        self.enc = ConvEncoder(rngs=rngs)
        self.fc_mu = nnx.Linear(64, latent_features, rngs=rngs)
        self.fc_logvar = nnx.Linear(64, latent_features, rngs=rngs)
        self.dec = ConvDecoder(latent_features, rngs=rngs)

    def posterior(self, x: Array) -> tuple[Array, Array]:
        """(μ, log σ²) of q(z | x), each (N, latent)."""
        h = self.enc(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def _encode(self, x: Array, key: Array | None) -> Array:
        mu, logvar = self.posterior(x)
        if key is None:
            return mu
        return mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)

    def decode_logits(self, z: Array) -> Array:
        """Pre-sigmoid decoder output, (N, 28, 28, 1)."""
        return self.dec(z)

    def _decode(self, z: Array, key: Array | None, **options: Any) -> Array:
        _no_options(self, options)
        return jax.nn.sigmoid(self.dec(z))

    def _loss(self, x: Array, key: Array) -> tuple[Array, dict[str, Array]]:
        mu, logvar = self.posterior(x)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)
        logits = self.decode_logits(z)
        bce = jnp.sum(_bce_with_logits(logits, x), axis=(1, 2, 3))
        kl = 0.5 * jnp.sum(jnp.exp(logvar) + mu**2 - 1.0 - logvar, axis=1)
        return bce + kl, {"bce": bce, "kl": kl}


class ConvAE(TrainableAutoencoder):
    """Deterministic convolutional autoencoder; loss per image: mean squared error of D(E(x))."""

    def __init__(self, latent_features: int = 40, *, rngs: nnx.Rngs):
        super().__init__(latent_features, data_shape=(28, 28, 1), data_range=(0.0, 1.0))
        self.hyperparameters = checks.frozen({"latent_features": latent_features})
        self.enc = ConvEncoder(rngs=rngs)
        self.bottleneck = nnx.Linear(64, latent_features, rngs=rngs)
        self.dec = ConvDecoder(latent_features, rngs=rngs)

    def _encode(self, x: Array, key: Array | None) -> Array:
        return self.bottleneck(self.enc(x))

    def decode_logits(self, z: Array) -> Array:
        """Pre-sigmoid decoder output, (N, 28, 28, 1)."""
        return self.dec(z)

    def _decode(self, z: Array, key: Array | None, **options: Any) -> Array:
        _no_options(self, options)
        return jax.nn.sigmoid(self.dec(z))

    def _loss(self, x: Array, key: Array) -> tuple[Array, dict[str, Array]]:
        mse = jnp.mean((jax.nn.sigmoid(self.decode_logits(self._encode(x, None))) - x) ** 2, axis=(1, 2, 3))
        return mse, {"mse": mse}


def _no_options(model: TrainableAutoencoder, options: dict[str, Any]) -> None:
    if options:
        raise TypeError(f"{type(model).__name__}.decode takes no options; got {sorted(options)}.")


def _bce_with_logits(logits: Array, x: Array) -> Array:
    """−[x log σ(l) + (1 − x) log(1 − σ(l))], computed stably from the logits l."""
    return jnp.maximum(logits, 0.0) - logits * x + jnp.log1p(jnp.exp(-jnp.abs(logits)))
