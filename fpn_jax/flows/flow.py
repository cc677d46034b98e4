"""``ConditionalFlow``: a standard normal pushed through a conditional bijector.

The plugin of Flow Plugin Networks (Wielopolski, Koperski, Zięba, "Flow Plugin Network for
conditional generation"): a conditional density ``p(z | y)`` over a frozen autoencoder's latents.

``z = T(u | y)`` with ``u ~ N(0, I_D)``; by the change of variables::

    log p(z | y) = log N(T⁻¹(z | y); 0, I) + log|det ∂T⁻¹/∂z|

Here ``T`` is the ``transform`` bijector (its ``forward`` is noise → data) and ``y`` the
context, optionally embedded first by a linear map ``e(y) = y E + b`` (``embedding_features``)
that every layer then sees instead of ``y``.

Calling convention of the public methods: ``z``/``u`` are float (N, D) arrays, ``context``
float (N, C) one-hot or multi-hot rows, ``key`` a PRNG key; any float dtype is accepted and
computed in float32, N = 0 gives empty results. Shapes and dtypes are checked before
tracing; a wrong one raises ``ValueError`` naming the argument. With concrete arrays the
values are checked too: a NaN, an infinity or a value beyond float32's range in ``z``, ``u``
or ``context`` raises ``ValueError`` naming its first row, and a result that overflows
float32 although the inputs are finite (latents far outside the training data, e.g.
|z| ~ 1e4, or samples pushed through tiny learned scales) raises ``FloatingPointError``
naming the rows; the sampling methods take ``allow_overflow=True`` to return such rows
as they are instead. Precision: ``from_noise(to_noise(z))`` recovers ``z`` to float32
precision for latents of the training data's scale; far outside it (|z| ~ 1e4) the noise →
data direction subtracts large shifts and divides by scales down to 1e-3, and the round trip
can be off by tens of percent while staying finite (float64 parameters would fix it).
Called with concrete arrays, each method runs a cached, jit-compiled program (a ``jax.jit``
of the split model) with the rows split over all devices (``fpn_jax.runtime.mesh``,
``fpn_jax.parallel``). Called inside a JAX transformation (your own ``jax.jit``,
``jax.vmap``, ``jax.grad``...), it traces inline, so it composes with them; value checks
are then skipped (they need the values). For hot loops, split the model once and merge
inside your function::

    graphdef, state = nnx.split(flow)

    @jax.jit
    def log_prob(state, z, context):
        return nnx.merge(graphdef, state).log_prob(z, context)

In training mode batch norm updates its running statistics on the merged copy: merge with
``copy=True`` inside ``jax.grad``/``jax.vmap`` and read them back with
``nnx.state(model, nnx.BatchStat)`` (``fpn_jax.fit`` does exactly this).
"""

from __future__ import annotations

import functools

import distrax
import jax.numpy as jnp
from flax import nnx

from fpn_jax import validation as checks
from fpn_jax.flows.bijector import Bijector
from fpn_jax.nn import Linear
from fpn_jax.nn.mode import is_training
from fpn_jax.runtime import dispatch
from fpn_jax.typing import Array, Context, Key, Latents, LogProb, Noise


class ConditionalFlow(nnx.Module):
    """Base class of the conditional flows: density, sampling and the two directions.

    Subclasses set ``self.transform`` (a ``Bijector``; its ``forward`` maps noise to data)
    after calling ``super().__init__``.

    Args:
      features: D, the latent width.
      context_features: C, the width of the context rows given to the methods.
      embedding_features: if set, the context goes through ``Linear(C, E)`` first and the
        layers see E features (the paper's CelebA plugin); otherwise they see the C raw ones.
      rngs: initialisation keys.
    """

    transform: Bijector

    def __init__(
        self,
        features: int,
        context_features: int,
        *,
        embedding_features: int | None = None,
        rngs: nnx.Rngs,
    ):
        name = type(self).__name__
        self.features = checks.positive_int(features, name="features", where=name)
        self.context_features = checks.positive_int(context_features, name="context_features", where=name)
        if embedding_features is None:
            self.embedding = None
        else:
            e = checks.positive_int(embedding_features, name="embedding_features", where=name)
            self.embedding = Linear(self.context_features, e, rngs=rngs)

    hyperparameters: tuple[tuple[str, object], ...] = ()
    # Core methods compiled without fpn_jax.runtime.compiler's options (faster without, measured).
    untuned_methods: frozenset[str] = frozenset()

    @property
    def config(self) -> dict[str, object]:
        """The constructor's keyword arguments (what a checkpoint stores to rebuild the flow)."""
        return dict(self.hyperparameters)

    @property
    def conditioner_features(self) -> int:
        """Width of the context that the layers see (after the optional embedding)."""
        return self.context_features if self.embedding is None else self.embedding.out_features

    # ----------------------------------------------------------------- core (traceable)
    def base_distribution(self) -> distrax.Distribution:
        """``N(0, I_D)``."""
        return distrax.MultivariateNormalDiag(jnp.zeros(self.features))

    def embed(self, context: Array) -> Array:
        """The context the layers see: ``y``, or ``y E + b`` with an embedding; (N, C) → (N, E)."""
        return context if self.embedding is None else self.embedding(context)

    def _log_prob(self, z: Array, context: Array, key: Array | None) -> Array:
        u, log_det = self.transform.inverse_and_log_det(z, self.embed(context), key=key)
        return self.base_distribution().log_prob(u) + log_det

    def _to_noise(self, z: Array, context: Array) -> Array:
        return self.transform.inverse_and_log_det(z, self.embed(context))[0]

    def _from_noise(self, u: Array, context: Array) -> Array:
        return self._from_noise_and_log_prob(u, context)[0]

    def _from_noise_and_log_prob(self, u: Array, context: Array) -> tuple[Array, Array]:
        z, log_det = self.transform.forward_and_log_det(u, self.embed(context))
        return z, self.base_distribution().log_prob(u) - log_det

    def _sample_and_log_prob(self, context: Array, key: Array) -> tuple[Array, Array]:
        u = self.base_distribution().sample(seed=key, sample_shape=(context.shape[0],))
        return self._from_noise_and_log_prob(u, context)

    # ----------------------------------------------------------------- public API
    def log_prob(self, z: Latents, context: Context, *, key: Key | None = None) -> LogProb:
        """``log p(z | context)``, shape (N,).

        Args:
          z: (N, D) latents.
          context: (N, C) float one-hot / multi-hot rows.
          key: only needed in training mode with dropout > 0.

        Raises:
          ValueError: bad shape, dtype or (concrete inputs) a non-finite value, naming the
            argument and its first bad row.
          FloatingPointError: ``log p`` overflowed float32 for finite inputs (latents far
            outside the data the flow was trained on); names the rows.
        """
        where = f"{type(self).__name__}.log_prob"
        z, context = self._check_pair("log_prob", "z", z, context)
        if z.shape[0] < 2 and is_training(self):
            raise ValueError(
                f"{where}: training mode normalises with batch statistics "
                f"and needs N >= 2 rows; got N = {z.shape[0]}. Call model.eval() to use running statistics."
            )
        if key is not None:
            key = checks.check_key(key, where=where)
        out = self._dispatch("_log_prob", z, context, key=key)
        checks.check_overflow(out, what="log_prob", where=where, hint=_FAR_OUT)
        return out

    def to_noise(self, z: Latents, context: Context) -> Noise:
        """``u = T⁻¹(z | context)``, (N, D): the noise that generates ``z`` under ``context``.

        Raises as ``log_prob``.
        """
        z, context = self._check_pair("to_noise", "z", z, context)
        out = self._dispatch("_to_noise", z, context)
        checks.check_overflow(out, what="the noise", where=f"{type(self).__name__}.to_noise", hint=_FAR_OUT)
        return out

    def from_noise(self, u: Noise, context: Context, *, allow_overflow: bool = False) -> Latents:
        """``z = T(u | context)``, (N, D).

        Raises:
          ValueError: bad shape, dtype or (concrete inputs) a non-finite value, naming the
            argument and its first bad row.
          RuntimeError: the flow is in training mode.
          FloatingPointError: ``z`` overflowed float32 (noise → data divides by the learned
            scales, down to 1e-3 per layer), naming the rows; with ``allow_overflow=True``
            such rows are returned as they are (find them with ``np.isfinite(z).all(1)``).
        """
        u, context = self._check_pair("from_noise", "u", u, context)
        out = self._dispatch("_from_noise", u, context, sampling="from_noise")
        if not allow_overflow:
            checks.check_overflow(out, what="z", where=f"{type(self).__name__}.from_noise", hint=_SAMPLING)
        return out

    def sample(self, key: Key, context: Context, *, allow_overflow: bool = False) -> Latents:
        """One sample ``z ~ p(z | context_n)`` per context row, (N, D).

        Raises as ``sample_and_log_prob``.
        """
        return self.sample_and_log_prob(key, context, allow_overflow=allow_overflow)[0]

    def sample_and_log_prob(
        self, key: Key, context: Context, *, allow_overflow: bool = False
    ) -> tuple[Latents, LogProb]:
        """Samples (N, D) and their ``log p(z | context)`` (N,), in one pass.

        Raises:
          ValueError: a bad ``key`` or ``context`` (shape, dtype, non-finite row).
          RuntimeError: the flow is in training mode.
          FloatingPointError: a sample (or its log-density) overflowed float32, naming the
            rows; with ``allow_overflow=True`` such rows are returned as they are (find
            them with ``np.isfinite(z).all(1)``).
        """
        where = f"{type(self).__name__}.sample"
        key = checks.check_key(key, where=where)
        context = self._check_context(where, context)
        out = self._dispatch("_sample_and_log_prob", context, key=key, sampling="sample")
        if not allow_overflow:
            checks.check_overflow(out, what="the sample", where=where, hint=_SAMPLING)
        return out

    # ----------------------------------------------------------------- helpers
    def _check_context(self, where: str, context: Array) -> Array:
        return checks.as_float_matrix(
            context, name="context", width=self.context_features, where=where, width_name="context_features"
        )

    def _check_pair(self, method: str, name: str, x: Array, context: Array) -> tuple[Array, Array]:
        where = f"{type(self).__name__}.{method}"
        x = checks.as_float_matrix(x, name=name, width=self.features, where=where, width_name="features")
        context = self._check_context(where, context)
        checks.same_rows(where, **{name: x, "context": context})
        return x, context

    def _check_can_sample(self, method: str, training: bool) -> None:
        if training:
            raise RuntimeError(
                f"{type(self).__name__}.{method}: the model is in training mode and uses batch "
                "norm, whose noise -> data direction needs running statistics; call model.eval() first."
            )

    def _dispatch(self, method: str, *rows: Array, sampling: str | None = None, **kwargs: Array | None):
        """Runs ``self.<method>(*rows, **kwargs)`` compiled, or inline under a transformation.

        The dispatch is ``fpn_jax.runtime.dispatch.call``; ``sampling`` names a public sampling
        method, which needs eval mode.
        """
        check_mode = None if sampling is None else functools.partial(self._check_can_sample, sampling)
        return dispatch.call(
            self, method, *rows, tuned=method not in self.untuned_methods, check_mode=check_mode, **kwargs
        )


_FAR_OUT = "The latents probably lie far outside the data the flow was trained on."
_SAMPLING = (
    "Sampling divides by the learned scales (down to 1e-3 per layer); pass allow_overflow=True "
    "to get such rows as they are and drop them with np.isfinite(z).all(axis=1)."
)
