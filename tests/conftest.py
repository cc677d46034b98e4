"""Shared fixtures: small flows and bijectors with non-trivial (perturbed) parameters.

Freshly initialised flows sit near the identity, where many bugs are invisible; every test
that checks maths perturbs all parameters and batch-norm statistics first.
"""

from __future__ import annotations

import os

# XLA's optimisation passes cost more compile time than they save on the suite's small
# programs (most of its time is compilation). Subprocesses (the experiments' quick runs)
# inherit the variable. Speed is measured by benchmarks/, never here.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fpn_jax import ConditionalMAF, ConditionalRealNVP

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] not in ("0", ""))

# For subprocesses whose time goes into running programs rather than compiling them (the
# base-model benchmark's timed loops of convolutions): XLA's optimisations back on.
OPTIMIZED_XLA = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "0"}

FLOWS = {"maf": ConditionalMAF, "rnvp": ConditionalRealNVP}


def perturb(module: nnx.Module, key: jax.Array, scale: float = 0.3) -> nnx.Module:
    """Adds N(0, scale²) noise to every parameter and batch statistic (variances stay > 0)."""
    state = nnx.state(module, (nnx.Param, nnx.BatchStat))
    leaves, treedef = jax.tree.flatten_with_path(state)
    keys = jax.random.split(key, len(leaves))
    new = []
    for (path, leaf), k in zip(leaves, keys, strict=True):
        noise = scale * jax.random.normal(k, leaf.shape, leaf.dtype)
        is_var = "var" in str(path[-1])
        new.append(leaf * jnp.exp(noise) if is_var else leaf + noise)
    nnx.update(module, jax.tree.unflatten(treedef, new))
    return module



def perturb_with_numpy(module: nnx.Module, seed: int, scale: float = 0.2) -> None:
    """Moves every ``nnx.Param`` and batch statistic away from its initial value (as
    ``perturb``, variances multiplied by exp(noise) so they stay > 0), with numpy noise: no
    compilation per parameter shape."""
    rng = np.random.default_rng(seed)
    state = nnx.state(module, (nnx.Param, nnx.BatchStat))
    leaves, treedef = jax.tree.flatten_with_path(state)
    new = []
    for path, leaf in leaves:
        value = np.asarray(leaf)
        noise = scale * rng.standard_normal(value.shape).astype(value.dtype)
        new.append(jnp.asarray(value * np.exp(noise) if "var" in str(path[-1]) else value + noise))
    nnx.update(module, jax.tree.unflatten(treedef, new))

def make_flow(kind: str, features: int, context_features: int = 3, *, batch_norm: bool = False, seed: int = 0, **kw):
    flow = FLOWS[kind](
        features,
        context_features,
        hidden_features=kw.pop("hidden_features", 16),
        num_layers=kw.pop("num_layers", 3),
        batch_norm_within=batch_norm,
        batch_norm_between=batch_norm,
        rngs=nnx.Rngs(seed),
        **kw,
    )
    return perturb(flow, jax.random.key(seed + 100), scale=0.15)


def data(features: int, context_features: int = 3, n: int = 8, seed: int = 1):
    kz, kc = jax.random.split(jax.random.key(seed))
    z = jax.random.normal(kz, (n, features))
    labels = jax.random.randint(kc, (n,), 0, context_features)
    return z, jax.nn.one_hot(labels, context_features)


@pytest.fixture(
    params=[(k, bn) for k in FLOWS for bn in (False, True)], ids=lambda p: f"{p[0]}-{'bn' if p[1] else 'nobn'}"
)
def flow_kind(request):
    return request.param


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch (skipping the module without it) with one intra-op thread for the module's tests.

    nflows' MAF inverse is hundreds of tiny ops: with several intra-op threads on a busy
    machine torch spends seconds spinning (measured: 14 s vs 0.06 s on 2 shared cores).
    """
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)
