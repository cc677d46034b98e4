"""Convolutions written as matrix products, for layers that XLA:CPU lowers slowly.

* ``ConvTranspose``: a transposed 2-D convolution with padding 0 (torch's semantics):
  ``y[s i + a, s j + b] += x[i, j] W[a, b]``, output size ``(i - 1) s + k``. One matmul
  (each input pixel times the kernel, (N, H, W, k, k, C_out)) and an overlap-add of the k²
  shifted planes; 5-15x faster on CPU than XLA's dilated-convolution lowering for the MNIST
  decoder's shapes (its FLOPs are the true ones: no multiplications by inserted zeros). A
  torch weight (in, out, kh, kw) is ours transposed to (kh, kw, in, out), no flip.
* ``Conv3x3``: a 3×3 'SAME' convolution as one matmul of the 9 shifted copies of the input.
* ``max_pool_2x2``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fpn_jax.typing import Array


class ConvTranspose(nnx.Module):
    """Transposed 2-D convolution, padding 0: (N, H, W, C_in) → (N, (H-1)s+k, (W-1)s+k, C_out).

    ``y[n, s i + a, s j + b, :] += x[n, i, j, :] @ kernel[a, b]`` plus ``bias``; kernel
    (k, k, C_in, C_out).
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int, stride: int, *, rngs: nnx.Rngs):
        self.kernel_size, self.stride = kernel_size, stride
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), shape))
        self.bias = nnx.Param(jnp.zeros((out_features,)))

    def __call__(self, x: Array) -> Array:
        """(N, H, W, C_in) → (N, (H-1)s+k, (W-1)s+k, C_out)."""
        n, h, w, c = x.shape
        k, s = self.kernel_size, self.stride
        kernel = self.kernel[...]
        out = kernel.shape[-1]
        planes = (x.reshape(-1, c) @ kernel.transpose(2, 0, 1, 3).reshape(c, k * k * out)).reshape(n, h, w, k, k, out)
        y = sum(
            jax.lax.pad(
                planes[:, :, :, a, b], 0.0, [(0, 0, 0), (a, k - 1 - a, s - 1), (b, k - 1 - b, s - 1), (0, 0, 0)]
            )
            for a in range(k)
            for b in range(k)
        )
        return y + self.bias[...]


class Conv3x3(nnx.Module):
    """A 3×3 'SAME' convolution, ``y[n,i,j] = Σ_{a,b,c} x[n,i+a-1,j+b-1,c] K[a,b,c] + bias``.

    Computed as one matmul of the 9 shifted copies of the zero-padded input with the kernel
    reshaped to (9·C_in, C_out): XLA:CPU runs ``lax.conv`` inside a ``lax.scan`` (as in
    the training loop) about ten times slower than outside it, while this form is equally fast
    in both places (and on accelerators).

    Args:
      in_features: C_in.
      out_features: C_out.
      rngs: initialisation randomness (LeCun-normal kernel, zero bias, as ``nnx.Conv``).
    """

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (3, 3, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))

    def __call__(self, x: Array) -> Array:
        """(N, H, W, C_in) → (N, H, W, C_out)."""
        h, w = x.shape[1:3]
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        patches = jnp.concatenate([padded[:, a : a + h, b : b + w] for a in range(3) for b in range(3)], axis=-1)
        kernel = self.kernel[...]
        return patches @ kernel.reshape(-1, kernel.shape[-1]) + self.bias[...]


def max_pool_2x2(x: Array) -> Array:
    """(N, H, W, C) → (N, ⌊H/2⌋, ⌊W/2⌋, C), the maximum of each 2×2 block."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
