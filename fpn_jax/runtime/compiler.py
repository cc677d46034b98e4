"""XLA compiler options for fpn-jax's jitted flow programs.

On CPU, XLA (jaxlib 0.10) hands matrix products and elementwise work to YNNPACK fusions by
default. For the plugin flows' narrow dense layers they were slower than XLA's own kernels,
measured on the 2-core benchmark machine (``benchmarks/README.md``): a (10,000 × 10) @ (10 × 40)
context product took 363 µs with them and 124 µs without, and switching them off sped up
MNIST-sized log-probs by 8-21 % and training steps by 19-27 %, while ShapeNet's 1024-wide
layers and the ConvVAE's training step were unchanged. So the jitted flow programs (public
flow methods, classification, training epochs) compile with
``xla_cpu_experimental_ynn_fusion_type=""`` (no YNNPACK fusions); C-MAF sampling's small
degree-by-degree steps were faster with YNNPACK and keep the default
(``ConditionalFlow.untuned_methods``). The option only concerns the CPU backend; other
backends ignore it.

``compiler_options()`` checks once that this XLA knows the option (by compiling a trivial
program) and returns ``{}`` otherwise, so a jaxlib that renamed it still works, only without
the tuning.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from fpn_jax import validation as checks

CPU_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def compiler_options() -> dict[str, str]:
    """The options to pass as ``jax.jit(..., compiler_options=...)``; ``{}`` where unsupported."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(jnp.zeros(())).compile()
    except Exception:  # an XLA without this (experimental) option
        return {}
    return dict(CPU_OPTIONS)


def jit(fn: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
    """``jax.jit(fn, **kwargs)`` with ``compiler_options()``.

    Compiler options only apply to a top-level program, so a call made while tracing (inside
    the caller's ``jax.jit``, ``jax.eval_shape``...) goes to a plain ``jax.jit(fn, **kwargs)``
    and becomes part of the caller's program. Create the function when it is needed (at
    first use), not at import: the check in ``compiler_options`` starts JAX's backend.
    """
    tuned = jax.jit(fn, compiler_options=compiler_options() or None, **kwargs)
    plain = jax.jit(fn, **kwargs)

    @functools.wraps(fn)
    def call(*args: Any, **kw: Any) -> Any:
        return (plain if checks.is_traced(args, kw) else tuned)(*args, **kw)

    call._cache_size = tuned._cache_size  # type: ignore[attr-defined]  # (compilations, for tests)
    return call


# XLA convolution modules. Inside a loop (``lax.scan``, ``lax.while_loop``) XLA:CPU (jaxlib
# 0.10) runs them about 10x slower than in a straight-line program: one training step of MSP's
# 32-pixel encoder took 15 ms jitted alone and 175 ms as the body of a ``lax.scan`` of any
# length (its decoder 45 ms and 195 ms). ``fpn_jax.nn``'s matmul convolutions do not suffer.
_LOOP_SLOW_MODULES: tuple[type, ...] = (nnx.Conv, nnx.ConvTranspose)


def prefers_stepping(model: nnx.Module) -> bool:
    """Whether ``model`` trains faster with one jitted call per step than with a scanned epoch.

    True on the CPU backend for a model with an XLA convolution (``nnx.Conv``,
    ``nnx.ConvTranspose``), which XLA:CPU runs about 10x slower inside a loop; False otherwise
    (a scanned epoch saves the per-step dispatch, which dominates small flow steps).
    """
    if jax.default_backend() != "cpu":
        return False
    return any(isinstance(m, _LOOP_SLOW_MODULES) for _, m in nnx.iter_modules(model))
