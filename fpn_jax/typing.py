"""Shape-annotated array types of the public API (jaxtyping).

The dimension names are used the same way everywhere:

* ``N``: rows (examples, latents, samples); ``K``: candidate contexts (classes);
* ``D``: the latent (flow) width; ``C``: the context width;
* ``H W Ch``: image height, width and channels (NHWC); ``P``: points of a cloud.

The annotations document shapes; they are not checked at run time (the public functions
check their inputs themselves and name the argument in their errors, see
``fpn_jax.validation``).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import jax
from jaxtyping import Float, Int, PRNGKeyArray

Array: TypeAlias = jax.Array
"""Any JAX array (for internals whose shapes the docstring states)."""
ArrayLike: TypeAlias = Any
"""What the public functions accept: JAX or numpy arrays, or nested lists."""

Latents: TypeAlias = Float[Array, "N D"]
"""Latent codes ``z = E(x)`` or flow samples, one row each."""
Noise: TypeAlias = Float[Array, "N D"]
"""Base-distribution draws ``u ~ N(0, I)``."""
Context: TypeAlias = Float[Array, "N C"]
"""Conditioning rows ``y``: one-hot classes, multi-hot attributes or real features."""
Contexts: TypeAlias = Float[Array, "K C"]
"""Candidate contexts (one per class) for Bayes' rule."""
LogProb: TypeAlias = Float[Array, " N"]
"""``log p(z | y)`` per row."""
LogDet: TypeAlias = Float[Array, " N"]
"""``log|det J|`` of a bijector per row."""
ClassLogLikelihoods: TypeAlias = Float[Array, "N K"]
"""``log p(z_n | y_k)`` for every row and candidate context."""
Labels: TypeAlias = Int[Array, " N"]
"""Integer class indices."""
Images: TypeAlias = Float[Array, "N H W Ch"]
"""NHWC images."""
Batch: TypeAlias = Float[Array, "N ..."]
"""Examples of any shape, one per row (images, point clouds)."""
Key: TypeAlias = PRNGKeyArray
"""One JAX PRNG key (``jax.random.key(seed)``)."""
Scalar: TypeAlias = Float[Array, ""]
"""A 0-d array (a mean loss)."""
